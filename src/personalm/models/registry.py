"""Turn a model name from the CLI or Python into a TextModel.

Names: the embedded default (`smollm2-135m-instruct`, alias `default`), a model converted or
saved under PERSONALM_HOME/models, any local Hugging Face model directory, or
`openai:MODEL[@BASE_URL]` for an OpenAI-compatible endpoint (BASE_URL defaults to
$OPENAI_BASE_URL), or `vllm:MODEL` for any of the local ones run by vLLM in this process (a GPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from personalm.errors import PersonalmError
from personalm.models.base import TextModel
from personalm.models.cache import CachedModel, GenerationCache
from personalm.models.embedded import EMBEDDED_NAME, converted_dir, ensure_converted, gguf_path
from personalm.paths import home

DEFAULT_MODEL = EMBEDDED_NAME
ALIASES = {"default": EMBEDDED_NAME, "embedded": EMBEDDED_NAME, "smollm2": EMBEDDED_NAME}
OPENAI_PREFIX = "openai:"
VLLM_PREFIX = "vllm:"


def resolve_local(name: str) -> Path | None:
    """The directory a local model name points at, converting the embedded model if needed."""
    name = ALIASES.get(name, name)
    if name == EMBEDDED_NAME:
        return ensure_converted()
    saved = home() / "models" / name
    if (saved / "config.json").is_file():
        return saved
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    return None


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    adapter: str | Path | None = None,
    cache: bool | str | Path = False,
    api_key: str | None = None,
    max_concurrency: int = 8,
) -> TextModel:
    """Load a model by name; `cache=True` (or a path) adds the persistent generation cache."""
    model = _load_uncached(name, adapter=adapter, api_key=api_key, max_concurrency=max_concurrency)
    if cache:
        return CachedModel(model, GenerationCache(None if cache is True else cache))
    return model


def _load_uncached(name: str, *, adapter, api_key, max_concurrency) -> TextModel:
    if name.startswith(OPENAI_PREFIX):
        from personalm.models.openai_compat import OpenAICompatModel

        if adapter:
            raise PersonalmError("--adapter applies to local models; an endpoint serves its own adapters")
        model, _, base_url = name[len(OPENAI_PREFIX) :].partition("@")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL", "")
        if not model or not base_url:
            raise PersonalmError(
                f"model '{name}': write openai:MODEL@BASE_URL (or set OPENAI_BASE_URL), "
                "e.g. openai:qwen2.5@http://127.0.0.1:8000/v1"
            )
        return OpenAICompatModel(base_url=base_url, model=model, api_key=api_key, max_concurrency=max_concurrency)
    if name.startswith(VLLM_PREFIX):
        from personalm.models.vllm_model import VLLMModel, import_vllm

        import_vllm(name)  # before any conversion: without vLLM, one line at once
        local = name[len(VLLM_PREFIX) :]
        path = resolve_local(local)
        if path is None:
            raise PersonalmError(f"unknown model '{name}': expected vllm: and a local model name or directory")
        return VLLMModel(path, adapter=adapter, name=ALIASES.get(local, local))
    path = resolve_local(name)
    if path is None:
        raise PersonalmError(
            f"unknown model '{name}': expected '{DEFAULT_MODEL}', a model under {home() / 'models'}, "
            "a local Hugging Face model directory, openai:MODEL@BASE_URL or vllm:MODEL"
        )
    from personalm.models.local import LocalModel

    display = ALIASES.get(name, name)
    return LocalModel(path, adapter=adapter, name=display if display == EMBEDDED_NAME else None)


def list_models() -> list[dict[str, Any]]:
    """Models available without a network: the embedded default and saved local models."""
    rows = [
        {
            "name": EMBEDDED_NAME,
            "kind": "embedded default",
            "source": str(_safe(gguf_path)),
            "converted": (converted_dir() / "config.json").is_file(),
        }
    ]
    root = home() / "models"
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.name != EMBEDDED_NAME and (path / "config.json").is_file():
                rows.append({"name": path.name, "kind": "local", "source": str(path), "converted": True})
    return rows


def _safe(fn) -> object:
    try:
        return fn()
    except PersonalmError as err:
        return f"missing ({err})"
