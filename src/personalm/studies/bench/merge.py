"""`personalm bench merge`: time to turn a new preference combination into a loaded soup.

Ours: Σ w_k·s_k·B_k·A_k from the adapter files, added to an already-loaded base as one fused\nmultiply-add per module over the stacked factors.
Peer: PEFT on the same base and adapters — load each adapter, add_weighted_adapter(cat) (the exact
PEFT combination), merge_and_unload. Both are compared with the training time of one P-MORL run,
which is what a new combination would cost without soups.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from personalm.adapters import apply_factors, exact_factors, is_adapter_dir, load_adapter
from personalm.errors import PersonalmError
from personalm.models.hf import transformers_offline
from personalm.models.registry import resolve_local
from personalm.provenance import machine, versions
from personalm.soups.collect import PMORL


def run(adapters_dir: Path, weights: dict[str, float], model: str, repeats: int, log: Callable[[str], None]) -> dict:
    from peft import PeftModel

    path = resolve_local(model)
    if path is None:
        raise PersonalmError(f"unknown model '{model}'")
    paths = {name: adapters_dir / name for name in weights}
    for name, p in paths.items():
        if not is_adapter_dir(p):
            raise PersonalmError(f"no adapter '{name}'", source=str(adapters_dir))
    base = transformers_offline().AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    pristine = copy.deepcopy(base.state_dict())
    ours, peer = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        adapters = {n: load_adapter(p, n) for n, p in paths.items()}
        apply_factors(base, exact_factors(adapters, weights))
        ours.append(time.perf_counter() - start)
        base.load_state_dict(pristine)

        start = time.perf_counter()
        names = list(paths)
        peft_model = PeftModel.from_pretrained(base, str(paths[names[0]]), adapter_name="a0")
        for i, name in enumerate(names[1:], start=1):
            peft_model.load_adapter(str(paths[name]), adapter_name=f"a{i}")
        peft_model.add_weighted_adapter(
            [f"a{i}" for i in range(len(names))], list(weights.values()), "soup", combination_type="cat"
        )
        peft_model.set_adapter("soup")
        base = peft_model.merge_and_unload(adapter_names=["soup"])
        peer.append(time.perf_counter() - start)
        base.load_state_dict(pristine)
    log(f"ours {statistics.median(ours):.3f}s, PEFT {statistics.median(peer):.3f}s (median of {repeats})")
    train_file = adapters_dir / PMORL / "dpo.json"
    pmorl_seconds = json.loads(train_file.read_text())["seconds"] if train_file.is_file() else None
    merge_seconds = round(statistics.median(ours), 4)
    return {
        "merge_seconds": merge_seconds,
        "peft_cat_merge_seconds": round(statistics.median(peer), 4),
        "speedup_vs_peft": round(statistics.median(peer) / merge_seconds, 2),
        "pmorl_train_seconds": pmorl_seconds,
        "pmorl_train_over_merge": round(pmorl_seconds / merge_seconds, 1) if pmorl_seconds else None,
        "weights": weights,
        "repeats": repeats,
        "machine": machine(),
        "versions": versions("personalm", "torch", "transformers", "peft"),
    }
