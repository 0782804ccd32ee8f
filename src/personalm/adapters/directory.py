"""Adapter directories on disk: recognise, list, validate, read and write them (our own code, not PEFT's).

A directory is an adapter directory when it holds adapter_config.json; whether it is a *valid* one is
`validate`'s job, so a broken adapter is reported in one line naming the file, never skipped in
silence. PEFT's own loader would read the same files, but it needs the base model in memory and
answers garbage with a traceback from deep inside json or safetensors; reading the files ourselves
lets the server check every adapter at start and lets soups merge adapters without any model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from personalm.adapters.merge import LoraFactors
from personalm.errors import PersonalmError
from personalm.models.base import stable_hash

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"
LORA = "LORA"
_LORA_KEYS = {"r": "a positive integer rank", "lora_alpha": "a number"}
_PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
_PEFT_ONLY = {
    "use_dora": "DoRA adapters are not a sum of low-rank deltas",
    "layer_replication": "layer replication",
    "lora_bias": "LoRA biases",
}


class UnsupportedAdapter(PersonalmError):
    """A valid PEFT adapter that is more than plain LoRA factors (DoRA, saved modules, biases,
    pickled weights, another PEFT type): PEFT can apply it, our exact merge math cannot."""


@dataclass
class Adapter:
    """A plain LoRA adapter read straight from its files (no model needed): ΔW = scale·B·A per module."""

    name: str
    path: Path
    config: dict[str, Any]
    modules: dict[str, LoraFactors]

    @property
    def identity(self) -> str:
        """Cheap content identity for cache keys: file names, sizes and modification times."""
        files = sorted(f for f in self.path.iterdir() if f.is_file() and f.name.startswith("adapter_"))
        return stable_hash(str(self.path.resolve()), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` claims to be an adapter directory (it holds the adapter config file)."""
    return (Path(path) / CONFIG_FILE).is_file()


def list_adapters(folder: str | Path) -> dict[str, Path]:
    """The adapter directories directly under `folder`, by folder name (none when `folder` is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if is_adapter_dir(p)}


def read_config(path: str | Path) -> dict[str, Any]:
    """The adapter's config, checked: a JSON object with a `peft_type`, and a rank and alpha for LoRA."""
    path = Path(path)
    file = path / CONFIG_FILE
    if not file.is_file():
        raise PersonalmError(f"not a PEFT adapter directory (no {CONFIG_FILE})", source=str(path))
    expected = "expected a PEFT adapter config: a JSON object with peft_type, r and lora_alpha"
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PersonalmError(f"not UTF-8 text ({expected})", source=str(file)) from None
    except OSError as err:
        raise PersonalmError(f"cannot be read ({err.strerror})", source=str(file)) from None
    if not text.strip():
        raise PersonalmError(f"empty file ({expected})", source=str(file))
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise PersonalmError(f"not JSON ({err.msg} at line {err.lineno}; {expected})", source=str(file)) from None
    if not isinstance(config, dict):
        raise PersonalmError(f"holds a JSON {type(config).__name__}, {expected}", source=str(file))
    if not isinstance(config.get("peft_type"), str):
        raise PersonalmError(f"no 'peft_type' ({expected})", source=str(file))
    if config["peft_type"] == LORA:
        for key, want in _LORA_KEYS.items():
            if not _valid(key, config.get(key)):
                problem = "missing" if key not in config else f"{config[key]!r} is not {want}"
                raise PersonalmError(f"'{key}' {problem} ({expected})", source=str(file))
    return config


def _valid(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if key == "r":
        return isinstance(value, int) and value > 0
    return isinstance(value, int | float) and math.isfinite(value)


def weight_keys(path: str | Path) -> list[str]:
    """The tensor names in the adapter's safetensors file, after checking that the file is whole
    (its header parses and covers the file); [] for an adapter with pickled weights only."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    file = path / WEIGHTS_FILE
    if not file.is_file():
        if (path / PICKLED_WEIGHTS_FILE).is_file():
            return []
        raise PersonalmError(f"no {WEIGHTS_FILE} (the adapter's weights)", source=str(path))
    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise PersonalmError(f"not a readable safetensors file ({err})", source=str(file)) from None
    if not keys:
        raise PersonalmError("holds no tensors", source=str(file))
    return keys


def validate(path: str | Path) -> dict[str, Any]:
    """Check an adapter directory's config and weights file without loading any model (run it at start,
    so a broken adapter fails there rather than at the first request); returns the config."""
    config = read_config(path)
    weight_keys(path)
    return config


def load_adapter(path: str | Path, name: str | None = None) -> Adapter:
    """Read a plain LoRA adapter's factors and scales (raises UnsupportedAdapter for anything more)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_config(path)
    keys = weight_keys(path)
    if config["peft_type"] != LORA:
        raise UnsupportedAdapter(f"adapter type {config['peft_type']!r} is not LoRA", source=str(path))
    for flag, what in _PEFT_ONLY.items():
        if config.get(flag):
            raise UnsupportedAdapter(f"{what}: apply or merge it with PEFT", source=str(path))
    if not keys:
        raise UnsupportedAdapter(f"pickled weights ({PICKLED_WEIGHTS_FILE}), no {WEIGHTS_FILE}", source=str(path))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(path / WEIGHTS_FILE).items():
        match = _KEY.match(key)
        if match is None:
            raise UnsupportedAdapter(
                f"tensor {key!r} is not a LoRA factor (modules_to_save is not supported)", source=str(path)
            )
        parts.setdefault(match["module"].removeprefix(_PEFT_PREFIX), {})[match["part"]] = tensor.float()
    modules = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise PersonalmError(f"module {module!r} lacks lora_A or lora_B", source=str(path))
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise PersonalmError(
                f"module {module!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not make a low-rank pair",
                source=str(path),
            )
        modules[module] = LoraFactors(a, b, lora_scale(config, module, a.shape[0]), bool(config.get("fan_in_fan_out")))
    return Adapter(name or path.name, path, config, modules)


def lora_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """alpha/r (alpha/√r with rsLoRA), honouring PEFT's per-module alpha_pattern."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = value
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def save_factors(factors: dict[str, LoraFactors], template: dict[str, Any], out: Path) -> None:
    """Write low-rank factors as a LoRA adapter directory any PEFT loader reads: scale 1 per module
    (lora_alpha = r, with per-module rank and alpha patterns where ranks differ)."""
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
    save_file(tensors, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
