"""DPO training of one LoRA adapter per preference pole (and the P-MORL adapter).

Two trainers, the same settings: `ours` (default) runs DPO as a pair loss in the project's LoRA
loop (`train.loop` with `train.losses.DPOLoss`: frozen fast base, checkpoints a killed run resumes
from); `trl` runs TRL's DPOTrainer with a PEFT config. Both use the base model with the adapter
switched off as the reference, so each run holds one copy of the weights. `personalm bench dpo`
measures the two on the same pairs. Runs are resumable per adapter: an adapter directory that
already holds a finished adapter and dpo.json is kept and skipped.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from personalm.adapters import is_adapter_dir
from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.provenance import versions
from personalm.train.data import read_pairs
from personalm.train.trl_setup import cpu_args, load_fp32, lora_all_linear

TRAINERS = ("ours", "trl")


@dataclass
class DPOSettings:
    model: str = DEFAULT_MODEL
    rank: int = 8
    alpha: int = 16
    lr: float = 5e-4
    beta: float = 0.1
    epochs: int = 1
    max_steps: int = -1
    batch_size: int = 4
    max_length: int = 192
    seed: int = 0
    threads: int | None = None
    trainer: str = "ours"

    def __post_init__(self) -> None:
        if self.trainer not in TRAINERS:
            raise PersonalmError(f"--trainer {self.trainer}: expected one of {', '.join(TRAINERS)}")


def preference_rows(path: Path) -> list[dict]:
    """The pairs as TRL's conversational preference rows, validated like our trainer's."""
    return [
        {"prompt": prompt, "chosen": chosen, "rejected": rejected} for _, prompt, chosen, rejected in read_pairs(path)
    ]


def train_adapter(
    pairs_file: str | Path,
    out: str | Path,
    settings: DPOSettings,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Train one DPO LoRA adapter into `out`; returns {pairs, steps, seconds, final_loss, ...}."""
    out = Path(out)
    if is_adapter_dir(out) and (out / "dpo.json").is_file():
        log(f"{out}: already trained, kept")
        return json.loads((out / "dpo.json").read_text())
    if resolve_local(settings.model) is None:
        raise PersonalmError(f"unknown model '{settings.model}'")
    pairs = preference_rows(Path(pairs_file))
    if not pairs:
        raise PersonalmError(
            "no preference pairs to train on (the judge found every pair a tie)", source=str(pairs_file)
        )
    if settings.trainer == "ours":
        trained = _train_ours(Path(pairs_file), out, settings, log, progress)
    else:
        trained = _train_trl(pairs, out, settings)
    summary = (
        {"pairs": len(pairs)}
        | trained
        | {
            "settings": asdict(settings),
            "data": str(pairs_file),
            "versions": versions("personalm", "torch", "transformers", "peft", "trl"),
        }
    )
    (out / "dpo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_ours(pairs_file: Path, out: Path, settings: DPOSettings, log, progress) -> dict:
    """The LoRA loop with the DPO pair loss; checkpoints under `out` let a killed run continue."""
    from personalm.train.loop import TrainConfig, train

    config = TrainConfig(
        data=str(pairs_file), out=str(out), model=settings.model, rank=settings.rank, alpha=settings.alpha,
        dropout=0.0, lr=settings.lr, epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps > 0 else None, batch_size=settings.batch_size,
        max_len=settings.max_length, seed=settings.seed, loss="dpo", beta=settings.beta, threads=settings.threads,
    )  # fmt: skip
    result = train(config, progress, log)
    accuracies = [s["reward_accuracy"] for s in result.stats if "reward_accuracy" in s]
    margins = [s["reward_margin"] for s in result.stats if "reward_margin" in s]
    return {
        "trainer": "ours",
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "pairs_per_s": round(result.steps * settings.batch_size / result.seconds, 3) if result.seconds else None,
        "final_loss": result.losses[-1] if result.losses else None,
        "first_loss": result.losses[0] if result.losses else None,
        "final_reward_accuracy": accuracies[-1] if accuracies else None,
        "final_reward_margin": margins[-1] if margins else None,
        "resumed_from": result.resumed_from,
    }


def _train_trl(pairs: list[dict], out: Path, settings: DPOSettings) -> dict:
    """TRL's DPOTrainer with the same LoRA shape (dropout off, as TRL's DPO disables dropout)."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if settings.threads:
        torch.set_num_threads(settings.threads)
    tokenizer, model = load_fp32(resolve_local(settings.model))
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
        model=model,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=lora,
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    accuracies = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    trainer.model.save_pretrained(str(out))
    shutil.rmtree(work, ignore_errors=True)
    return {
        "trainer": "trl",
        "steps": result.global_step,
        "seconds": round(seconds, 2),
        "pairs_per_s": round(result.global_step * settings.batch_size / seconds, 3) if seconds else None,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "final_reward_accuracy": accuracies[-1] if accuracies else None,
        "final_reward_margin": margins[-1] if margins else None,
    }


def train_all(data_dir: str | Path, out: str | Path, settings: DPOSettings, only: list[str] | None = None,
              log: Callable[[str], None] = print,
              progress: Callable[[int, int, float], None] | None = None) -> dict[str, dict]:  # fmt: skip
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
        results[file.stem] = train_adapter(file, Path(out) / file.stem, settings, log, progress)
    return results
