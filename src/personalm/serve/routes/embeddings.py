"""POST /v1/embeddings: sentence embeddings (MiniLM by default), for keys that may use the models."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Depends

from personalm.serve.auth import Principal
from personalm.serve.http import ApiError, Served
from personalm.serve.schemas import EmbeddingRequest


def router(served: Served) -> APIRouter:
    routes = APIRouter()
    loaded: dict[str, Any] = {}

    @routes.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, who: Principal = Depends(served.principal)) -> dict[str, Any]:
        if not who.may_use_model():
            raise ApiError(403, "this key may use its avatar only, not the embedding model", "permission_denied")
        if "embedder" not in loaded:
            from personalm.models.embedder import Embedder

            loaded["embedder"] = await asyncio.to_thread(served.embedder_factory or Embedder)
        embedder = loaded["embedder"]
        if body.model not in (embedder.name, "default"):
            raise ApiError(
                404, f"embedding model '{body.model}' does not exist; use '{embedder.name}'", "model_not_found"
            )
        vectors = await asyncio.to_thread(embedder.embed, body.input)
        encode = _base64_floats if body.encoding_format == "base64" else (lambda v: v.tolist())
        tokens = sum(len(t.split()) for t in body.input)
        return {
            "object": "list",
            "model": embedder.name,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return routes


def _base64_floats(vector) -> str:
    """OpenAI's base64 encoding: little-endian float32 bytes."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()
