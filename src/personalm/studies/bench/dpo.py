"""`personalm bench dpo`: our DPO trainer vs TRL's DPOTrainer on the same preference pairs.

The pairs are real soups data the project writes itself: `soups collect` (embedded policy, CPU
judges, built-in prompts, generation cache) run into a temporary folder, and the first
`steps x batch_size` Prompted-MORL pairs kept, so both trainers see exactly those pairs once (one
epoch of `steps` steps). Both run through `soups.dpo.train_adapter`, the path `soups train` takes,
with the same settings (LoRA rank 8 on all linear layers, beta, lr, batch, max length, seed), one
after the other in this process. Pairs/s count trained pairs over the training loop's time (model
loading and tokenization excluded for both). Afterwards each adapter is scored on the same pairs by
the same code (DPO loss and reward accuracy against the base model), so the quality columns compare
the adapters, not the trainers' own logging.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from personalm.errors import PersonalmError
from personalm.eval.judges import ProgrammaticJudge
from personalm.models.registry import DEFAULT_MODEL
from personalm.provenance import load_average, machine, versions
from personalm.soups.collect import PMORL, CollectConfig, collect
from personalm.soups.dpo import DPOSettings, train_adapter
from personalm.soups.preferences import Preferences
from personalm.soups.prompts import BUILTIN_PROMPTS
from personalm.tables import read_rows, write_rows
from personalm.train.data import collate, load_pairs
from personalm.train.losses import DPOLoss, loss_units, supervised_rows

COLLECT = CollectConfig(samples=3, max_pairs=3, max_tokens=48, seed=0)


def prompts_for(count: int) -> int:
    """How many built-in prompts to collect for `count` P-MORL pairs: one per 16 pairs asked, at least 2
    (a prompt gives up to 3 pairs x 8 combinations at COLLECT, fewer after ties)."""
    return max(2, count // 16 + 1)


def bench_pairs(folder: Path, count: int, model_name: str, log: Callable[[str], None]) -> Path:
    """`count` Prompted-MORL pairs from a small `soups collect` run (built-in prompts) into `folder`."""
    from personalm.models.registry import load_model

    prompts = list(BUILTIN_PROMPTS[: prompts_for(count)])
    with load_model(model_name, cache=True) as policy:
        collect(policy, ProgrammaticJudge(), Preferences.default(), prompts, folder / "collect", COLLECT, log=log)
    rows = [row for _, row in read_rows(folder / "collect" / "dpo" / f"{PMORL}.jsonl")]
    if len(rows) < count:
        raise PersonalmError(f"collect gave {len(rows)} pairs, fewer than the {count} asked for; ask for fewer")
    path = folder / "pairs.jsonl"
    write_rows(path, rows[:count])
    return path


@torch.no_grad()
def score_adapter(adapter: Path, pairs: Path, settings: DPOSettings) -> dict[str, float]:
    """DPO loss and reward accuracy/margin of a trained adapter over the pairs (reference: the base)."""
    from peft import PeftModel

    from personalm.models.hf import transformers_offline
    from personalm.models.registry import resolve_local

    transformers = transformers_offline()
    path = resolve_local(settings.model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    base = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    dataset = load_pairs(pairs, tokenizer, settings.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss_fn = DPOLoss(settings.beta)
    total, count, correct, margin = 0.0, 0, 0.0, 0.0
    for start in range(0, len(dataset.examples), settings.batch_size):
        index = list(range(start, min(start + settings.batch_size, len(dataset.examples))))
        batch = collate([dataset.examples[i] for i in index], pad_id) | {"index": torch.tensor(index)}
        loss_fn.prepare(model, batch)
        rows, targets = supervised_rows(model, batch)
        loss, _ = loss_fn(rows, targets, batch)
        stats = loss_fn.step_stats()
        n = loss_units(batch)
        total, count = total + float(loss), count + n
        correct += stats["reward_accuracy"] * n
        margin += stats["reward_margin"] * n
    return {"loss": round(total / count, 4), "reward_accuracy": round(correct / count, 4),
            "reward_margin": round(margin / count, 4)}  # fmt: skip


def run(
    steps: int = 8,
    batch_size: int = 4,
    max_length: int = 192,
    lr: float = 5e-4,
    beta: float = 0.1,
    model_name: str = DEFAULT_MODEL,
    threads: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    load = {"start": load_average()}
    settings = DPOSettings(model=model_name, rank=8, alpha=16, lr=lr, beta=beta, epochs=1, batch_size=batch_size,
                           max_length=max_length, seed=seed, threads=threads)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs = bench_pairs(folder, steps * batch_size, model_name, log)
        runs, scores = {}, {}
        for trainer in ("ours", "trl"):
            log(f"{trainer}: {steps} steps of {batch_size} pairs, max length {max_length}")
            settings.trainer = trainer
            runs[trainer] = train_adapter(pairs, folder / trainer, settings, log=log)
            load[f"after_{trainer}"] = load_average()
            log(f"  {runs[trainer]['seconds']}s; scoring the adapter on the pairs")
            scores[trainer] = score_adapter(folder / trainer, pairs, settings)
    pairs_s = {t: steps * batch_size / runs[t]["seconds"] for t in runs}
    return {
        "benchmark": "dpo",
        "model": model_name,
        "pairs": steps * batch_size,
        "pairs_source": f"soups collect on {prompts_for(steps * batch_size)} built-in prompts, P-MORL set",
        "steps": steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "lr": lr,
        "beta": beta,
        "lora": {"rank": settings.rank, "alpha": settings.alpha, "dropout": 0.0, "targets": "all-linear"},
        "peer": "trl.DPOTrainer (PEFT config; reference = base with the adapter off)",
        "ours_s": runs["ours"]["seconds"],
        "trl_s": runs["trl"]["seconds"],
        "ours_pairs_s": round(pairs_s["ours"], 3),
        "trl_pairs_s": round(pairs_s["trl"], 3),
        "speedup": round(pairs_s["ours"] / pairs_s["trl"], 2),
        "ours_train_final_loss": runs["ours"]["final_loss"],
        "trl_train_final_loss": runs["trl"]["final_loss"],
        "ours_loss": scores["ours"]["loss"],
        "trl_loss": scores["trl"]["loss"],
        "ours_reward_accuracy": scores["ours"]["reward_accuracy"],
        "trl_reward_accuracy": scores["trl"]["reward_accuracy"],
        "ours_reward_margin": scores["ours"]["reward_margin"],
        "trl_reward_margin": scores["trl"]["reward_margin"],
        "seed": seed,
        "collect": {
            "samples": COLLECT.samples,
            "max_pairs": COLLECT.max_pairs,
            "max_tokens": COLLECT.max_tokens,
            "seed": COLLECT.seed,
        },  # fmt: skip
        "load_average_1m": {k: round(v, 2) for k, v in load.items()},
        "versions": versions("personalm", "torch", "transformers", "peft", "trl"),
        "machine": machine(),
    }
