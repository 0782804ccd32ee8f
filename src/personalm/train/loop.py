"""The LoRA training loop: a plain PyTorch loop over a PEFT model (nanoGPT-style, no Trainer).

One loop for every loss in the `train.losses` registry: token losses (SFT: CE, and PerCE, which
personalm.perce registers) on chat examples and pair losses (DPO) on preference pairs, which load
with `data.load_pairs` and average over pairs.

Checkpoints hold the adapter, optimizer, scheduler, RNG states and the data position, so a killed
run started again with the same command continues exactly where its last checkpoint left it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from personalm.adapters import is_adapter_dir, read_config
from personalm.devices import autocast, resolve_device
from personalm.errors import PersonalmError
from personalm.models.hf import transformers_offline
from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.provenance import versions
from personalm.train.data import Dataset, batch_tokens, bucketed_batches, collate, load_examples, load_pairs
from personalm.train.distributed import Group, join, leave
from personalm.train.dropout import use_fast_dropout
from personalm.train.frozen_base import freeze_base_layers
from personalm.train.losses import contrast_of, get_loss, loss_units, needs_pairs, supervised_rows

CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainConfig:
    """Every knob of a run; written next to the adapter (in RUN_SUMMARY)."""

    data: str
    out: str
    model: str = DEFAULT_MODEL
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: str = "all-linear"
    lr: float = 2e-4
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_len: int = 512
    overlong: str = "truncate"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 50
    snapshot_every: int | None = None  # also keep a PEFT adapter every N steps (learning curves)
    seed: int = 0
    quant: str = "fp32"
    loss: str = "ce"
    clip_min: float = 0.8  # PerCE weight bounds (--loss perce)
    clip_max: float = 5.0
    beta: float = 0.1  # DPO strength (--loss dpo)
    reference: str = "base"  # DPO reference: the base model, or "start" (the policy as the run starts)
    init_adapter: str | None = None  # start from this adapter's LoRA weights (same rank and targets)
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    out: Path
    steps: int
    tokens: int
    seconds: float
    losses: list[float]
    resumed_from: int | None
    stats: list[dict[str, float]] = field(default_factory=list)  # the loss's per-step extras (DPO rewards)
    examples: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


ProgressFn = Callable[[int, int, float], None]
"""Called after each optimizer step with (step, total steps, loss)."""


def build_model(config: TrainConfig, device: torch.device | None = None):
    """Tokenizer and PEFT-wrapped model: on the CPU (the default) with the frozen base swapped for
    the fast/int8 layers, on another device as plain PEFT layers moved there."""
    transformers = transformers_offline()
    from peft import LoraConfig, get_peft_model

    path = resolve_local(config.model)
    if path is None:
        raise PersonalmError(f"unknown model '{config.model}' (expected a local model name or directory)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    targets: str | list[str] = config.targets if config.targets == "all-linear" else config.targets.split(",")
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise PersonalmError(f"LoRA targets {config.targets!r}: {err}") from None
    if device is None or device.type == "cpu":
        freeze_base_layers(model, config.quant)
        use_fast_dropout(model)
    elif config.quant != "fp32":
        raise PersonalmError(f"--quant {config.quant} is the CPU's int8 path; on {device} train with --quant fp32")
    else:
        model.to(device)
    return tokenizer, model


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters, and their defaults
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[None]:
    """While inside, glibc keeps large freed blocks in the process (no mmap per large block,
    trimming only past 2 GiB free), so each step's (positions x vocabulary) logits, their gradient
    and the dropout masks reuse pages already mapped instead of faulting fresh ones in: on this
    project's 2-core VMs that cut the loss's share of a LoRA step from 20% to 1% and zero fills
    from 10% to 2% (`bench train --profile`). On leaving, glibc's defaults come back and the free
    memory goes back to the OS. Nothing where libc is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    """`max_steps`, when given, overrides `epochs` (as in transformers): the data cycles as needed."""
    return config.max_steps or math.ceil(batches_per_epoch / config.grad_accum) * config.epochs


def train(config: TrainConfig, progress: ProgressFn | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train a LoRA adapter into `config.out` (resuming from its latest checkpoint if any)."""
    device = resolve_device()
    with freed_memory_kept() if device.type == "cpu" else contextlib.nullcontext():
        return _train(config, device, progress, log)


def _train(
    config: TrainConfig, device: torch.device, progress: ProgressFn | None, log: Callable[[str], None]
) -> TrainResult:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import get_cosine_schedule_with_warmup

    if config.threads:
        torch.set_num_threads(config.threads)
    procs = join(device)
    if device.type == "cuda" and procs.world > 1:
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if not procs.main:
        progress, log = None, lambda message: None
    out = Path(config.out)
    loss_fn = get_loss(
        config.loss, clip_min=config.clip_min, clip_max=config.clip_max, beta=config.beta, reference=config.reference
    )
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    tokenizer, model = build_model(config, device)
    if needs_pairs(loss_fn):
        dataset = load_pairs(config.data, tokenizer, config.max_len, config.overlong)
    else:
        dataset = load_examples(config.data, tokenizer, config.max_len, config.overlong, contrast=contrast_of(loss_fn))
    if dataset.truncated or dataset.dropped:
        kind = "pair(s)" if needs_pairs(loss_fn) else "example(s)"
        log(f"{dataset.truncated} {kind} truncated to {config.max_len} tokens, {dataset.dropped} dropped")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches_per_epoch = math.ceil(len(dataset.examples) / config.batch_size)
    steps = total_steps(config, batches_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)

    state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "seconds": 0.0, "losses": [], "stats": []}
    resumed_from = _resume(out, model, optimizer, scheduler, state, set_peft_model_state_dict)
    if resumed_from is not None:
        log(f"resumed from step {resumed_from}")
    elif config.init_adapter:
        _load_start(model, config, set_peft_model_state_dict)
    if getattr(loss_fn, "needs_start_reference", False):
        _start_reference(model, dataset, pad_id, config.batch_size, loss_fn, state, device)
    model.train()
    start = time.perf_counter() - state["seconds"]
    while state["step"] < steps:
        order = bucketed_batches(dataset.examples, config.batch_size, config.seed, state["epoch"])
        if state["batch"] >= len(order):
            state["epoch"], state["batch"] = state["epoch"] + 1, 0
            continue
        group = order[state["batch"] : state["batch"] + config.grad_accum]
        loss = _optimizer_step(
            model, dataset, group, pad_id, loss_fn, optimizer, scheduler, params, config, state, device, procs
        )
        state["batch"] += len(group)
        state["step"] += 1
        state["losses"].append(loss)
        state["stats"].append(loss_fn.step_stats() if hasattr(loss_fn, "step_stats") else {})
        state["seconds"] = time.perf_counter() - start
        if progress:
            progress(state["step"], steps, loss)
        if procs.main and config.snapshot_every and state["step"] % config.snapshot_every == 0:
            model.save_pretrained(out / SNAPSHOTS / f"step-{state['step']:07d}")
        if procs.main and state["step"] % config.save_every == 0 and state["step"] < steps:
            _checkpoint(out, model, optimizer, scheduler, state, get_peft_model_state_dict)
    if procs.main:
        model.save_pretrained(out)
        _write_run_files(out, config, dataset, state, steps, device, procs.world)
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    leave(procs)
    return TrainResult(
        out, state["step"], state["tokens"], state["seconds"], state["losses"], resumed_from, state["stats"],
        len(dataset.examples),
    )  # fmt: skip


def _optimizer_step(
    model,
    dataset: Dataset,
    group,
    pad_id,
    loss_fn,
    optimizer,
    scheduler,
    params,
    config,
    state,
    device: torch.device | None = None,
    procs: Group = Group(),
) -> float:
    """One optimizer step over `grad_accum` micro-batches, averaging the loss over all their tokens
    (or pairs): with several processes, over all of theirs (this one holds its shard of each)."""
    shards = [procs.shard(batch) for batch in group]
    micro = [_batch(dataset, shard, pad_id, device) for shard in shards if shard]
    local = sum(loss_units(b) for b in micro)
    total = procs.sum([local], device)[0] if procs.world > 1 else local
    loss_sum, tokens = 0.0, 0
    prepare = getattr(loss_fn, "prepare", None)
    for batch in micro:
        if prepare:
            prepare(model, batch)
        rows, targets = supervised_rows(model, batch)
        with autocast(device or torch.device("cpu")):
            loss, _ = loss_fn(rows, targets, batch)
        (loss / total).backward()
        loss_sum += float(loss.detach())
        tokens += batch_tokens(batch)
    if procs.world > 1:
        procs.sum_grads(params)
        loss_sum, tokens = procs.sum([loss_sum, tokens], device)
    state["tokens"] += int(tokens)
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / total


def _batch(dataset: Dataset, rows: list[int], pad_id: int, device: torch.device | None) -> dict[str, Any]:
    """The collated rows (with their indices), on `device` when one is given and not the CPU."""
    batch = collate([dataset.examples[i] for i in rows], pad_id) | {"index": torch.tensor(rows)}
    if device is None or device.type == "cpu":
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


RUN_SUMMARY = "train_config.json"  # written last, after the adapter: a run with it finished
RUN_LOG = "train_log.jsonl"


def read_run(out: str | Path) -> dict[str, Any]:
    """A finished run's record (settings, steps, tokens, seconds, final loss, versions) with its
    per-step log under "log": the one reader of the files `train` leaves beside the adapter."""
    out = Path(out)
    summary = json.loads((out / RUN_SUMMARY).read_text())
    log = out / RUN_LOG
    summary["log"] = (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    )
    return summary


def finished_run(config: TrainConfig) -> bool:
    """Whether `config.out` already holds the adapter of a finished run with exactly these settings
    (a command run again after a kill, or with nothing changed, then keeps it instead of training again)."""
    out = Path(config.out)
    try:
        saved = json.loads((out / RUN_SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return is_adapter_dir(out) and saved.get("config") == json.loads(json.dumps(asdict(config)))


def _load_start(model, config: TrainConfig, set_state) -> None:
    """The LoRA weights of `config.init_adapter` into the fresh model (a preference round after SFT,
    an avatar's next voice version): same base, rank and target layers needed. A checkpoint of this
    run, when there is one, is loaded instead."""
    from peft.utils import load_peft_weights

    start = Path(config.init_adapter)
    if not start.is_dir():
        raise PersonalmError("no such adapter folder to start from", source=str(start))
    saved = read_config(start)
    if saved.get("r") != config.rank:
        raise PersonalmError(f"adapter rank {saved.get('r')} but this run trains rank {config.rank}", source=str(start))
    try:
        loaded = set_state(model, load_peft_weights(str(start), device="cpu"))
    except (OSError, ValueError, RuntimeError) as err:
        raise PersonalmError(f"cannot start from this adapter ({err})", source=str(start)) from None
    unfit = [key for key in loaded.unexpected_keys if "lora_" in key]
    if unfit:
        raise PersonalmError(
            f"its weights do not fit the model being trained (e.g. {unfit[0]}): same base, rank and targets needed",
            source=str(start),
        )


@torch.no_grad()
def _start_reference(
    model, dataset: Dataset, pad_id: int, batch_size: int, loss_fn, state: dict, device: torch.device
) -> None:
    """Reference log-probs of every pair under the starting policy, before any step (they ride in
    the checkpoints, so a resumed run keeps the reference it began with)."""
    if "reference" in state:
        loss_fn.restore_reference(state["reference"])
        return
    model.eval()
    indices = list(range(len(dataset.examples)))
    for start in range(0, len(indices), batch_size):
        loss_fn.prepare(model, _batch(dataset, indices[start : start + batch_size], pad_id, device))
    state["reference"] = loss_fn.reference_logps()


def _checkpoint(out: Path, model, optimizer, scheduler, state: dict, get_state) -> None:
    """Write step-N atomically (temp dir, then rename) and keep only the newest few."""
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:07d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(
        {
            "adapter": get_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "state": state,
        },
        tmp / "state.pt",
    )
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(out: Path, model, optimizer, scheduler, state: dict, set_state) -> int | None:
    checkpoints = sorted((out / CHECKPOINTS).glob("step-*")) if (out / CHECKPOINTS).is_dir() else []
    if not checkpoints:
        return None
    saved = torch.load(checkpoints[-1] / "state.pt", weights_only=False, map_location="cpu")
    set_state(model, saved["adapter"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    state.update(saved["state"])
    return int(state["step"])


def _write_run_files(
    out: Path, config: TrainConfig, dataset: Dataset, state: dict, steps: int, device: torch.device, processes: int
) -> None:
    summary = {
        "config": asdict(config),
        "device": str(device),
        "processes": processes,
        "steps": steps,
        "examples": len(dataset.examples),
        "truncated": dataset.truncated,
        "dropped": dataset.dropped,
        "tokens_seen": state["tokens"],
        "seconds": round(state["seconds"], 2),
        "final_loss": state["losses"][-1] if state["losses"] else None,
        "versions": versions("personalm", "torch", "transformers", "peft"),
    }
    with open(out / RUN_LOG, "w") as handle:
        stats = state.get("stats", [])
        stats = [{}] * (len(state["losses"]) - len(stats)) + stats
        for step, (loss, extra) in enumerate(zip(state["losses"], stats, strict=True), start=1):
            handle.write(json.dumps({"step": step, "loss": loss} | extra) + "\n")
    tmp = out / f".{RUN_SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / RUN_SUMMARY)
