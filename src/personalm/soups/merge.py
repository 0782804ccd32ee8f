"""Soups of preference adapters: the user's weights checked, the soup written to a directory (cached),
or loaded as a model. The merge math itself, and reading and applying adapters, live in the adapter
layer (`personalm.adapters`); this module is what soups add on top: preference names, the choice of
method (our exact sum, or one of PEFT's combination types), the soup.json record and the cache.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from personalm.adapters import (
    Adapter,
    apply_factors,
    check_weights,
    exact_factors,
    is_adapter_dir,
    load_adapter,
    save_factors,
)
from personalm.adapters.merge import chosen
from personalm.adapters.peft import combine_with_peft
from personalm.errors import PersonalmError
from personalm.models.base import stable_hash
from personalm.paths import home

EXACT = "exact"
PEFT_METHODS = (
    "linear",
    "cat",
    "svd",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)
METHODS = (EXACT, *PEFT_METHODS)
SOUP_FILE = "soup.json"


def parse_weights(text: str, known: Sequence[str]) -> dict[str, float]:
    """`expertise.elementary=0.5,style.friendly=0.5` → {name: weight}; unknown names and all-zero fail."""
    weights: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise PersonalmError(f"weight {item!r}: expected NAME=NUMBER, e.g. expertise.elementary=0.5")
        try:
            weight = float(value)
        except ValueError:
            raise PersonalmError(f"weight {item!r}: {value.strip()!r} is not a number") from None
        if not math.isfinite(weight):
            raise PersonalmError(f"weight {item!r} must be finite")
        if name not in known:
            raise PersonalmError(f"weight {item!r}: {_unknown(name, known)}")
        if name in weights:
            raise PersonalmError(f"weight for '{name}' given twice")
        weights[name] = weight
    check_weights(weights)
    return weights


def check_named_weights(weights: Mapping[str, float], known: Sequence[str]) -> dict[str, float]:
    """Weights that arrive as a mapping (a request's JSON), checked like `parse_weights` checks text."""
    for name, weight in weights.items():
        if not math.isfinite(weight):
            raise PersonalmError(f"weight for '{name}' must be finite")
        if name not in known:
            raise PersonalmError(f"weight for '{name}': {_unknown(name, known)}")
    check_weights(weights)
    return {name: float(weight) for name, weight in weights.items()}


def _unknown(name: str, known: Sequence[str]) -> str:
    return f"unknown preference '{name}' (known: {', '.join(known)})"


def cache_key(adapters: Mapping[str, Adapter], weights: Mapping[str, float], method: str, density: float | None) -> str:
    used = sorted((n, w, adapters[n].identity) for n, w in weights.items() if n in adapters)
    return stable_hash("soup-v1", used, method, density)[:20]


def merge_to_dir(
    adapters: Mapping[str, Adapter],
    weights: Mapping[str, float],
    out: str | Path,
    *,
    method: str = EXACT,
    density: float | None = None,
    base: str | None = None,
) -> Path:
    """Write the soup as a PEFT adapter directory (+ soup.json with what went in). Atomic; replaces an
    earlier merge at `out`, never a file or a folder that is not an adapter."""
    if method not in METHODS:
        raise PersonalmError(f"unknown merge method '{method}' (choose from {', '.join(METHODS)})")
    check_weights(weights)
    for name in weights:
        chosen(adapters, name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PersonalmError("exists and is not a folder (expected a folder for the merged adapter)", source=str(out))
    if out.is_dir() and any(out.iterdir()) and not is_adapter_dir(out):
        raise PersonalmError("is a folder that holds no adapter; will not replace it", source=str(out))
    tmp = out.with_name(f".tmp-{out.name}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        if method == EXACT:
            save_factors(exact_factors(adapters, weights), adapters[next(iter(weights))].config, tmp)
        else:
            paths = {n: adapters[n].path for n in weights}
            combine_with_peft(paths, weights, _peft_base(adapters, weights, base), tmp, method, density)
        meta = {
            "method": method,
            "density": density,
            "weights": dict(weights),
            "adapters": {n: str(adapters[n].path) for n in weights},
        }
        (tmp / SOUP_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except OSError as err:
        raise PersonalmError(f"cannot write the merged adapter ({err.strerror or err})", source=str(out)) from None
    return out


def _peft_base(adapters: Mapping[str, Adapter], weights: Mapping[str, float], base: str | None) -> Path:
    """The base model PEFT merges on: `base`, else the first adapter's, else the default model."""
    from personalm.models.registry import DEFAULT_MODEL, resolve_local

    path = resolve_local(base or adapters[next(iter(weights))].config.get("base_model_name_or_path") or DEFAULT_MODEL)
    if path is None:
        path = resolve_local(DEFAULT_MODEL)
    return path


def cached_merge(
    adapters: Mapping[str, Adapter],
    weights: Mapping[str, float],
    *,
    method: str = EXACT,
    density: float | None = None,
    base: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """The soup's adapter directory, merged once per (adapters, weights, method) and reused after."""
    check_weights(weights)
    for name in weights:
        chosen(adapters, name)
    root = Path(cache_dir) if cache_dir else home() / "soups" / "merged"
    out = root / cache_key(adapters, weights, method, density)
    if (out / SOUP_FILE).is_file():
        return out
    return merge_to_dir(adapters, weights, out, method=method, density=density, base=base)


def load_adapters(specs: Mapping[str, str | Path]) -> dict[str, Adapter]:
    return {name: load_adapter(path, name) for name, path in specs.items()}


def load_soup(
    adapters: Mapping[str, Adapter] | Mapping[str, str | Path],
    weights: Mapping[str, float],
    *,
    base: str | None = None,
    method: str = EXACT,
    density: float | None = None,
):
    """A LocalModel whose weights are the base plus the soup, merged on the fly at load time.

    The exact method adds Σ w_k·s_k·B_k·A_k to the base weights directly (no PEFT, nothing written);
    other methods go through PEFT once and are cached on disk.
    """
    from personalm.models.local import LocalModel
    from personalm.models.registry import DEFAULT_MODEL, resolve_local

    loaded = {n: a if isinstance(a, Adapter) else load_adapter(a, n) for n, a in adapters.items()}
    check_weights(weights)
    path = resolve_local(base or DEFAULT_MODEL)
    if path is None:
        raise PersonalmError(f"unknown base model '{base}'")
    key = cache_key(loaded, weights, method, density)
    if method == EXACT:
        model = LocalModel(path)
        apply_factors(model.model, exact_factors(loaded, weights))
        model.weights_changed()
    else:
        model = LocalModel(path, adapter=cached_merge(loaded, weights, method=method, density=density, base=base))
    model.model_id = f"{model.model_id}+soup:{key}"
    return model
