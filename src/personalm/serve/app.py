"""`personalm serve`: an OpenAI-compatible API and the web chat page, in one FastAPI app.

Errors come back in OpenAI's shape (`{"error": {"message", "type", "code"}}`) with a 4xx status
for anything the client got wrong; the only 5xx is a failure of the engine itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from personalm.models.base import SamplingParams, prompt_key
from personalm.models.sampling import row_generator
from personalm.serve.auth import KeyStore, Principal
from personalm.serve.catalog import Catalog, UnknownModel
from personalm.serve.engine_thread import EngineError
from personalm.serve.limits import BodySizeLimit
from personalm.serve.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, KeyRequest
from personalm.serve.text_stream import TextStream

DEFAULT_MAX_TOKENS = 256
AVATAR_PREFIX = "avatar:"
DISCONNECT_POLL_S = 0.25


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(status, message)
        self.code = code


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for issue in err.errors()[:5]:
        where = ".".join(str(p) for p in issue.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {issue.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(catalog: Catalog, keys: KeyStore, embedder_factory=None, memory=None) -> FastAPI:
    """Build the app around a model catalog, a key store and (optionally) avatar memory, all
    owned by the caller. With memory, every avatar is the model `avatar:NAME`."""
    app = FastAPI(title="personalm", version="0.1.0", description="OpenAI-compatible API of personalm")
    app.add_middleware(BodySizeLimit)
    state: dict[str, Any] = {}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(err), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), getattr(err, "code", "http_error"))

    def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        who = keys.authenticate(key)
        if who is None:
            raise ApiError(401, "missing or unknown API key (send 'Authorization: Bearer KEY')", "invalid_api_key")
        return who

    def admin(who: Principal = Depends(principal)) -> Principal:
        if not who.is_admin:
            raise ApiError(403, "this needs the admin key", "permission_denied")
        return who

    def entry_for(model_id: str, who: Principal):
        try:
            entry = catalog.get(model_id)
        except UnknownModel:
            raise ApiError(
                404, f"model '{model_id}' does not exist; GET /v1/models lists them", "model_not_found"
            ) from None
        if not who.may_use_model():
            raise ApiError(403, f"this key may not use model '{model_id}'", "permission_denied")
        return entry

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("personalm.serve").joinpath("page/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(who: Principal = Depends(principal)) -> dict[str, Any]:
        visible = [e for e in catalog.entries.values() if who.may_use_model()]
        data = [{"id": e.id, "object": "model", "created": 0, "owned_by": "personalm", "kind": e.kind} | e.meta
                for e in visible]  # fmt: skip
        if memory is not None:
            names = await asyncio.to_thread(memory.names)
            data += [{"id": f"{AVATAR_PREFIX}{n}", "object": "model", "created": 0, "owned_by": "personalm",
                      "kind": "avatar", "avatar": n} for n in names if who.may_use_avatar(n)]  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, who: Principal = Depends(principal)):
        messages = [m.model_dump() for m in body.messages]
        limit = body.max_completion_tokens or body.max_tokens
        if body.model.startswith(AVATAR_PREFIX):
            return await _avatar_chat(request, body, messages, limit, who)
        entry = entry_for(body.model, who)
        model, _ = await asyncio.to_thread(catalog.load, entry.id)
        ids = model.encode_prompt(messages)
        return await _complete(request, entry.id, [(ids, messages)], body, limit, chat=True)

    async def _avatar_chat(request: Request, body: ChatRequest, messages, limit, who: Principal):
        """Retrieval in the store (scoped to this avatar), then the base model answers in their voice."""
        from personalm.avatars.chat import DONT_KNOW, AvatarChat, is_question
        from personalm.serve.avatar_routes import hit_json

        name = body.model[len(AVATAR_PREFIX) :]
        if memory is None or name not in await asyncio.to_thread(memory.names):
            raise ApiError(404, f"model '{body.model}' does not exist; GET /v1/models lists them", "model_not_found")
        if not who.may_use_avatar(name):
            raise ApiError(403, f"this key may not use model '{body.model}'", "permission_denied")
        if messages[-1]["role"] != "user":
            raise ApiError(400, "messages: an avatar answers the last message, which must be the user's")
        base = next(e.id for e in catalog.entries.values() if e.kind == "base")
        model, _ = await asyncio.to_thread(catalog.load, base)
        talk = AvatarChat(memory, name, model)
        talk.history = [m for m in messages[:-1] if m["role"] in ("user", "assistant")]
        question = messages[-1]["content"]
        recall = await asyncio.to_thread(memory.recall, name, question, talk.exemplars, talk.facts)
        retrieved = [hit_json(h) | {"role": "exemplar"} for h in recall.exemplars]
        retrieved += [hit_json(h) | {"role": "fact"} for h in recall.facts]
        supported = recall.support >= talk.min_support or not is_question(question)
        extra = {"retrieved": retrieved, "supported": supported}
        if not supported:
            return _fixed_reply(DONT_KNOW, body, extra)
        composed = await asyncio.to_thread(talk.compose, question, recall)  # reads the profile from the store
        ids = model.encode_prompt(composed)
        return await _complete(request, base, [(ids, composed)], body, limit, chat=True, shown_id=body.model,
                               extra=extra)  # fmt: skip

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, who: Principal = Depends(principal)):
        entry = entry_for(body.model, who)
        model, _ = await asyncio.to_thread(catalog.load, entry.id)
        if body.stream and len(body.prompt) > 1:
            raise ApiError(400, "stream supports one prompt per request")
        prompts = [(model.encode_prompt(p), p) for p in body.prompt]
        return await _complete(request, entry.id, prompts, body, body.max_tokens, chat=False)

    async def _complete(request: Request, model_id: str, prompts, body, limit: int | None, chat: bool,
                        shown_id: str | None = None, extra: dict[str, Any] | None = None):  # fmt: skip
        """Generate for prompts on `model_id`; responses name `shown_id` (an avatar answers through
        its base model) and carry `extra` fields (an avatar's retrieved memories)."""
        model, engine = catalog.load(model_id)
        shown, extra = shown_id or model_id, extra or {}
        budget = engine.max_len if engine else model.context_length
        for ids, _ in prompts:
            if len(ids) >= budget:
                raise ApiError(400, f"prompt of {len(ids)} tokens does not fit the {budget}-token context")
        runs = []
        for ids, prompt in prompts:
            max_tokens = min(limit or DEFAULT_MAX_TOKENS, budget - len(ids))
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed or 0,
                stop=body.stop,
            )
            generator = None if params.greedy else row_generator(params.seed, prompt_key(prompt), 0)
            runs.append((ids, params, generator))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if engine is None:
            return await _complete_unbatched(model, shown, [p for _, p in prompts], runs[0][1], rid, chat) | extra
        if body.stream:
            ids, params, generator = runs[0]
            usage = body.stream_options is not None and body.stream_options.include_usage
            events = _sse(
                engine.stream(ids, params, generator), model, shown, rid, params, chat, usage, len(ids), extra
            )
            return StreamingResponse(events, media_type="text/event-stream")
        tasks = [asyncio.ensure_future(_collect(engine, model, *run)) for run in runs]
        done = asyncio.ensure_future(asyncio.gather(*tasks))
        while not done.done():
            await asyncio.wait({done}, timeout=DISCONNECT_POLL_S)
            if not done.done() and await request.is_disconnected():
                done.cancel()
                raise ApiError(499, "client closed the request", "client_closed")
        try:
            results = done.result()
        except EngineError as err:
            raise ApiError(500, f"generation failed: {err}", "engine_error") from err
        choices = [_choice(i, text, reason, chat) for i, (text, reason, _) in enumerate(results)]
        usage = _usage(sum(len(r[0]) for r in runs), sum(r[2] for r in results))
        kind = "chat.completion" if chat else "text_completion"
        return (
            {"id": rid, "object": kind, "created": int(time.time()), "model": shown, "choices": choices} | usage | extra
        )

    async def _complete_unbatched(model, model_id, prompts, params, rid, chat):
        """Architectures without the batching kernel: transformers' generate in a worker thread."""
        generations = await asyncio.to_thread(model.generate, prompts, params)
        choices = [_choice(i, g.text, g.finish_reason, chat) for i, g in enumerate(generations)]
        usage = _usage(sum(g.prompt_tokens for g in generations), sum(g.completion_tokens for g in generations))
        kind = "chat.completion" if chat else "text_completion"
        return {"id": rid, "object": kind, "created": int(time.time()), "model": model_id, "choices": choices} | usage

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, who: Principal = Depends(principal)) -> dict[str, Any]:
        if "embedder" not in state:
            from personalm.models.embedder import Embedder

            state["embedder"] = await asyncio.to_thread(embedder_factory or Embedder)
        embedder = state["embedder"]
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

    @app.get("/admin/keys")
    async def list_keys(_: Principal = Depends(admin)) -> dict[str, Any]:
        return {"data": keys.list()}

    @app.post("/admin/keys", status_code=201)
    async def create_key(body: KeyRequest, _: Principal = Depends(admin)) -> dict[str, str]:
        if any(k["name"] == body.name for k in keys.list()):
            raise ApiError(409, f"a key named '{body.name}' exists", "conflict")
        return {"name": body.name, "scope": body.scope, "key": keys.create(body.name, body.scope)}

    @app.delete("/admin/keys/{name}")
    async def delete_key(name: str, _: Principal = Depends(admin)) -> dict[str, Any]:
        if not keys.delete(name):
            raise ApiError(404, f"no key named '{name}'", "not_found")
        return {"deleted": name}

    if memory is not None:
        from personalm.serve.avatar_routes import avatar_router

        app.include_router(avatar_router(memory, principal, ApiError))
    app.state.catalog, app.state.keys, app.state.memory = catalog, keys, memory
    return app


def _fixed_reply(text: str, body: ChatRequest, extra: dict[str, Any]):
    """A reply decided without the model (an avatar's "I don't know"), streamed or not."""
    rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
    if not body.stream:
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [_choice(0, text, "stop", True)]} | _usage(0, 0) | extra  # fmt: skip

    async def events() -> AsyncIterator[str]:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, "stop")]
        for n, (delta, reason) in enumerate(deltas):
            chunk = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
            yield f"data: {json.dumps(chunk | extra if n == 0 else chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _collect(engine, model, ids, params, generator) -> tuple[str, str, int]:
    """Run one request to the end: (text, finish_reason, completion tokens)."""
    stream = TextStream(model.decode_ids, params.stop)
    async for event in engine.stream(ids, params, generator):
        if event.finish_reason is not None:
            stream.delta(event.token_ids, True)
            return stream.text, event.finish_reason, len(event.token_ids)
    raise EngineError("the engine ended the request without a result")


async def _sse(
    events: AsyncIterator,
    model,
    model_id: str,
    rid: str,
    params,
    chat: bool,
    usage: bool,
    prompt_tokens: int,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]` (after a usage chunk
    when `stream_options.include_usage` asked for one)."""
    stream = TextStream(model.decode_ids, params.stop)
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str, reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason}
        body = {"id": rid, "object": kind, "created": created, "model": model_id, "choices": [choice]}
        return f"data: {json.dumps(body | (extra or {}) if first else body)}\n\n"

    if chat or extra:
        yield chunk("", None, first=True)
    try:
        async for event in events:
            finished = event.finish_reason is not None
            text = stream.delta(event.token_ids, finished)
            if finished:
                yield chunk(text, "length" if event.finish_reason == "length" else "stop")
                if usage:
                    tail = {"id": rid, "object": kind, "created": created, "model": model_id, "choices": []}
                    yield f"data: {json.dumps(tail | _usage(prompt_tokens, len(event.token_ids)))}\n\n"
                break
            if text:
                yield chunk(text, None)
    except EngineError as err:
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"


def _base64_floats(vector) -> str:
    """OpenAI's base64 encoding: little-endian float32 bytes."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def _choice(index: int, text: str, reason: str, chat: bool) -> dict[str, Any]:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    }
