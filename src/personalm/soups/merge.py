"""Merge preference adapters into one model: the exact sum of LoRA weight deltas, or PEFT's variants.

A LoRA adapter k changes a linear weight W by ΔW_k = s_k·B_k·A_k (s_k = alpha/r, or alpha/√r with
rsLoRA). The soup the user asks for, with weights w_k, is W + Σ_k w_k·s_k·B_k·A_k. That sum is what
`method="exact"` computes, and it is stored exactly as one rank-Σr_k adapter whose A stacks the A_k and
whose B stacks the w_k·s_k·B_k (so any PEFT loader can read it back).

Averaging A and B separately — A = Σ w_k·A_k, B = Σ w_k·B_k, as the original Personalized Soups code
does, and as PEFT's `linear` combination does up to square roots — is *not* the average of the deltas:
(Σ w_j B_j)(Σ w_k A_k) = Σ_k w_k² B_k A_k + Σ_{j≠k} w_j w_k B_j A_k, with cross terms B_j A_k pairing
factors that were never trained together. Use `linear` only as the approximation it is.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

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
NEEDS_DENSITY = ("ties", "dare", "magnitude_prune")
SOUP_FILE = "soup.json"
_PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoraFactors:
    """One adapted module: ΔW = scale·B·A (transposed for fan_in_fan_out layers)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    fan_in_fan_out: bool = False

    def delta(self) -> torch.Tensor:
        d = self.scale * (self.B @ self.A)
        return d.T if self.fan_in_fan_out else d


@dataclass
class Adapter:
    """A PEFT LoRA adapter read straight from its files (no model needed)."""

    name: str
    path: Path
    config: dict
    modules: dict[str, LoraFactors]

    @property
    def identity(self) -> str:
        """Cheap content identity for cache keys: file names, sizes and modification times."""
        files = sorted(f for f in self.path.iterdir() if f.is_file() and f.name.startswith("adapter_"))
        return stable_hash(str(self.path.resolve()), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])


def load_adapter(path: str | Path, name: str | None = None) -> Adapter:
    """Read a LoRA adapter's factors and scales; plain LoRA only (no DoRA, no extra saved modules)."""
    from safetensors.torch import load_file

    path = Path(path)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise PersonalmError("not a PEFT adapter directory (no adapter_config.json)", source=str(path))
    config = json.loads(config_file.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise PersonalmError(f"adapter type {config.get('peft_type')!r} is not LoRA", source=str(path))
    if config.get("use_dora"):
        raise PersonalmError("DoRA adapters are not a sum of low-rank deltas; merge them with PEFT", source=str(path))
    weights_file = path / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise PersonalmError("no adapter_model.safetensors", source=str(path))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(weights_file).items():
        match = _KEY.match(key)
        if match is None:
            raise PersonalmError(
                f"tensor {key!r} is not a LoRA factor (modules_to_save is not supported)", source=str(path)
            )
        parts.setdefault(match["module"].removeprefix(_PEFT_PREFIX), {})[match["part"]] = tensor.float()
    modules = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise PersonalmError(f"module {module!r} lacks lora_A or lora_B", source=str(path))
        modules[module] = LoraFactors(
            ab["A"], ab["B"], _scale(config, module, ab["A"].shape[0]), bool(config.get("fan_in_fan_out"))
        )
    return Adapter(name or path.name, path, config, modules)


def _scale(config: dict, module: str, rank: int) -> float:
    """alpha/r (alpha/√r with rsLoRA), honouring PEFT's per-module alpha_pattern."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = value
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


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


def check_weights(weights: Mapping[str, float]) -> None:
    if not weights:
        raise PersonalmError("no merge weights given (expected NAME=NUMBER,...)")
    if all(w == 0 for w in weights.values()):
        raise PersonalmError("all merge weights are zero: the soup would be the base model")


def exact_deltas(adapters: Mapping[str, Adapter], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Σ_k w_k·s_k·B_k·A_k per module: the dense weight update of the soup (PEFT-free)."""
    check_weights(weights)
    deltas: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        if weight == 0:
            continue
        for module, factors in _adapter(adapters, name).modules.items():
            update = weight * factors.delta()
            deltas[module] = deltas[module] + update if module in deltas else update
    return deltas


def exact_factors(adapters: Mapping[str, Adapter], weights: Mapping[str, float]) -> dict[str, LoraFactors]:
    """The exact soup as stacked low-rank factors: A = [A_1; A_2; ...], B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]."""
    check_weights(weights)
    stacks: dict[str, tuple[list[torch.Tensor], list[torch.Tensor], bool]] = {}
    for name, weight in weights.items():
        if weight == 0:
            continue
        for module, f in _adapter(adapters, name).modules.items():
            a_list, b_list, _ = stacks.setdefault(module, ([], [], f.fan_in_fan_out))
            a_list.append(f.A)
            b_list.append(weight * f.scale * f.B)
    return {m: LoraFactors(torch.cat(a), torch.cat(b, dim=1), 1.0, fifo) for m, (a, b, fifo) in stacks.items()}


def separate_average(adapters: Mapping[str, Adapter], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """What averaging A and B separately yields, s·(Σ w_k B_k)(Σ w_k A_k): shown to differ from the exact soup."""
    out = {}
    chosen = [(_adapter(adapters, n), w) for n, w in weights.items()]
    for module in chosen[0][0].modules:
        first = chosen[0][0].modules[module]
        a = sum(w * ad.modules[module].A for ad, w in chosen)
        b = sum(w * ad.modules[module].B for ad, w in chosen)
        out[module] = first.scale * (b @ a)
    return out


def apply_deltas(model: torch.nn.Module, deltas: Mapping[str, torch.Tensor]) -> None:
    """Add each module's update to the base weights in place (the model then runs at base cost)."""
    with torch.no_grad():
        for module, delta in deltas.items():
            layer = _layer(model, module)
            if layer.weight.shape != delta.shape:
                raise PersonalmError(
                    f"module {module!r}: adapter delta {tuple(delta.shape)} != weight {tuple(layer.weight.shape)}"
                )
            layer.weight += delta.to(layer.weight.dtype)


def apply_factors(model: torch.nn.Module, factors: Mapping[str, LoraFactors]) -> None:
    """Add each module's scale·B·A in place with one fused multiply-add (no dense temporary):
    with the stacked factors of `exact_factors` that is one matmul per module for the whole soup."""
    with torch.no_grad():
        for module, f in factors.items():
            weight = _layer(model, module).weight
            if f.fan_in_fan_out:
                weight.addmm_(f.A.T.to(weight.dtype), f.B.T.to(weight.dtype), alpha=f.scale)
            else:
                weight.addmm_(f.B.to(weight.dtype), f.A.to(weight.dtype), alpha=f.scale)


def _layer(model: torch.nn.Module, module: str) -> torch.nn.Module:
    try:
        return model.get_submodule(module)
    except AttributeError:
        raise PersonalmError(f"the base model has no module {module!r}: adapter trained on another model") from None


def _adapter(adapters: Mapping[str, Adapter], name: str) -> Adapter:
    if name not in adapters:
        raise PersonalmError(f"unknown preference '{name}' (adapters: {', '.join(adapters)})")
    return adapters[name]


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
    """Write the soup as a PEFT adapter directory (+ soup.json with what went in). Atomic."""
    if method not in METHODS:
        raise PersonalmError(f"unknown merge method '{method}' (choose from {', '.join(METHODS)})")
    check_weights(weights)
    for name in weights:
        _adapter(adapters, name)
    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    if method == EXACT:
        _save_factors(exact_factors(adapters, weights), _first_config(adapters, weights), tmp)
    else:
        _peft_merge(adapters, weights, tmp, method, density, base)
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
    return out


def _first_config(adapters: Mapping[str, Adapter], weights: Mapping[str, float]) -> dict:
    return adapters[next(iter(weights))].config


def _save_factors(factors: Mapping[str, LoraFactors], template: dict, out: Path) -> None:
    """Save stacked factors as a LoRA adapter with scale 1 (lora_alpha = r, per-module via patterns)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    tensors = {}
    ranks = {}
    for module, f in factors.items():
        tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = f.A.contiguous()
        tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = f.B.contiguous()
        ranks[module] = f.A.shape[0]
    rank = max(ranks.values())
    config = dict(template)
    config.update(
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        rank_pattern={m: r for m, r in ranks.items() if r != rank},
        alpha_pattern={m: r for m, r in ranks.items() if r != rank},
        target_modules=sorted({m.rsplit(".", 1)[-1] for m in factors}),
        lora_dropout=0.0,
    )
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _peft_merge(adapters, weights, out: Path, method: str, density: float | None, base: str | None) -> None:
    """PEFT's add_weighted_adapter on the base model (needs the base weights)."""
    from peft import PeftModel

    from personalm.models.hf import transformers_offline
    from personalm.models.registry import DEFAULT_MODEL, resolve_local

    if any(method.startswith(p) for p in NEEDS_DENSITY) and density is None:
        raise PersonalmError(f"merge method '{method}' needs --density (fraction of weights kept, e.g. 0.5)")
    path = resolve_local(base or adapters[next(iter(weights))].config.get("base_model_name_or_path") or DEFAULT_MODEL)
    if path is None:
        path = resolve_local(DEFAULT_MODEL)
    model = transformers_offline().AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    names = list(weights)
    peft_model = PeftModel.from_pretrained(model, str(adapters[names[0]].path), adapter_name=_safe(names[0]))
    for name in names[1:]:
        peft_model.load_adapter(str(adapters[name].path), adapter_name=_safe(name))
    kwargs = {"density": density} if density is not None else {}
    try:
        peft_model.add_weighted_adapter(
            [_safe(n) for n in names], [weights[n] for n in names], "soup", combination_type=method, **kwargs
        )
    except ValueError as err:
        raise PersonalmError(f"merge method '{method}': {err}") from None
    peft_model.save_pretrained(str(out), selected_adapters=["soup"])
    nested = out / "soup"
    if nested.is_dir():
        for f in nested.iterdir():
            f.rename(out / f.name)
        nested.rmdir()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


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
        _adapter(adapters, name)
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


@contextmanager
def soup_applied(model, update: Mapping[str, torch.Tensor] | Mapping[str, LoraFactors], tag: str) -> Iterator:
    """Temporarily turn a loaded LocalModel into a soup (one base load for many weightings).

    The touched weights are restored bit for bit afterwards, and the model id names the soup while
    it lasts so no cache mixes the two."""
    originals = {m: model.model.get_submodule(m).weight.detach().clone() for m in update}
    base_id = model.model_id
    if all(isinstance(v, LoraFactors) for v in update.values()):
        apply_factors(model.model, update)
    else:
        apply_deltas(model.model, update)
    model.weights_changed()
    model.model_id = f"{base_id}+soup:{tag}"
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, weight in originals.items():
                model.model.get_submodule(m).weight.copy_(weight)
        model.weights_changed()
        model.model_id = base_id
