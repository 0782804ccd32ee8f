"""DPO training of one LoRA adapter per preference pole (and the P-MORL adapter) with TRL.

TRL's DPOTrainer with a PEFT config uses the base model with the adapter switched off as the
reference, so each run holds one copy of the weights. Runs are resumable per adapter: an adapter
directory that already holds adapter_config.json is kept and skipped.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from personalm.bench.hardware import versions
from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.tables import read_rows
from personalm.train.trl_setup import cpu_args, load_fp32, lora_all_linear


@dataclass
class DPOSettings:
    model: str = DEFAULT_MODEL
    rank: int = 8
    alpha: int = 16
    lr: float = 5e-5
    beta: float = 0.1
    epochs: int = 1
    max_steps: int = -1
    batch_size: int = 4
    max_length: int = 192
    seed: int = 0
    threads: int | None = None


def load_pairs(path: Path) -> list[dict]:
    rows = []
    for line, row in read_rows(path):
        for column in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(column), list):
                raise PersonalmError(
                    f"expected column '{column}' to hold a list of messages", source=str(path), line=line
                )
        rows.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
    return rows


def train_adapter(
    pairs_file: str | Path, out: str | Path, settings: DPOSettings, log: Callable[[str], None] = print
) -> dict:
    """Train one DPO LoRA adapter into `out`; returns {pairs, steps, seconds, final_loss}."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    out = Path(out)
    if (out / "adapter_config.json").is_file() and (out / "dpo.json").is_file():
        log(f"{out}: already trained, kept")
        return json.loads((out / "dpo.json").read_text())
    pairs = load_pairs(Path(pairs_file))
    if not pairs:
        raise PersonalmError(
            "no preference pairs to train on (the judge found every pair a tie)", source=str(pairs_file)
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    path = resolve_local(settings.model)
    if path is None:
        raise PersonalmError(f"unknown model '{settings.model}'")
    tokenizer, model = load_fp32(path)
    work = out.with_name(f".work-{out.name}")
    args = DPOConfig(
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.lr,
        beta=settings.beta,
        max_length=settings.max_length,
        seed=settings.seed,
        disable_tqdm=True,
        **cpu_args(work),
    )
    lora = lora_all_linear(settings.rank, settings.alpha)
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, peft_config=lora
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    accuracies = [h["rewards/accuracies"] for h in trainer.state.log_history if "rewards/accuracies" in h]
    trainer.model.save_pretrained(str(out))
    summary = {
        "pairs": len(pairs),
        "steps": result.global_step,
        "seconds": round(seconds, 2),
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "final_reward_accuracy": accuracies[-1] if accuracies else None,
        "settings": asdict(settings),
        "data": str(pairs_file),
        "versions": versions("personalm", "torch", "transformers", "peft", "trl"),
    }
    (out / "dpo.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return summary


def train_all(data_dir: str | Path, out: str | Path, settings: DPOSettings, only: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict[str, dict]:  # fmt: skip
    """One adapter per dpo/*.jsonl file (every pole, plus pmorl) into OUT/<name>/."""
    files = sorted((Path(data_dir) / "dpo").glob("*.jsonl"))
    if not files:
        raise PersonalmError("no dpo/*.jsonl here; run `personalm soups collect` first", source=str(data_dir))
    names = [f.stem for f in files]
    for name in only or []:
        if name not in names:
            raise PersonalmError(f"no DPO data for '{name}' (have: {', '.join(names)})", source=str(data_dir))
    results = {}
    for file in files:
        if only and file.stem not in only:
            continue
        log(f"training {file.stem} on {file}")
        results[file.stem] = train_adapter(file, Path(out) / file.stem, settings, log)
    return results
