"""`personalm bench train`: our LoRA trainer vs TRL's SFTTrainer, same model, data, LoRA and shapes.

Both train the embedded model with LoRA (rank 16 on all linear layers by default) on the same
chat examples, each exactly `seq_len` tokens long (so padding favours neither), batch `batch_size`,
for the same number of optimizer steps, one after the other in this process. TRL runs with its
own defaults otherwise (what a user of `SFTTrainer` gets), glibc's default allocator included;
our trainer keeps freed memory in the process (`train.loop.freed_memory_kept`), and TRL is run a
second time with that setting too (`speedup_same_allocator`). Tokens/s count every token
processed, first step included for both.

Achieved FLOP/s use 4 x (frozen linear params) + 6 x (LoRA params) per token: the frozen base
costs a forward matmul and one for the input gradient; LoRA weights also get weight gradients.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.provenance import fp32_matmul_peak_gflops, machine, versions
from personalm.studies.bench.profile import profile_steps, summarise
from personalm.studies.bench.workloads import personas as load_personas
from personalm.train.data import tokenize_chat
from personalm.train.loop import TrainConfig, build_model, freed_memory_kept, train
from personalm.train.trl_setup import cpu_args, load_fp32, lora_all_linear

QUESTIONS = [
    "Describe your typical working day.",
    "What advice would you give to someone starting out in your field?",
    "Tell me about a problem you solved recently.",
    "What do you read, and why?",
]


def training_chats(count: int, seq_len: int, data_dir: Path | None, tokenizer, seed: int = 0) -> list[dict]:
    """Chats of exactly `seq_len` tokens: a persona asks, the answer is other real persona texts."""
    personas = load_personas(data_dir)
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        answer = ""
        messages = []
        while True:
            answer += rng.choice(personas) + " "
            messages = [
                {"role": "user", "content": f"Persona: {rng.choice(personas)}\n{QUESTIONS[i % len(QUESTIONS)]}"},
                {"role": "assistant", "content": answer.strip()},
            ]
            if _length(tokenizer, messages) >= seq_len:
                break
        words = answer.split()
        while len(words) > 1:
            trial = [messages[0], {"role": "assistant", "content": " ".join(words[:-1])}]
            if _length(tokenizer, trial) < seq_len:
                break
            words = words[:-1]
            messages = trial
        rows.append({"messages": messages})
    return rows


def _length(tokenizer, messages: list[dict]) -> int:
    """Tokens of the chat exactly as both trainers see it."""
    return len(tokenize_chat(tokenizer, messages)[0])


def _flops_per_token(model_path: Path, config: TrainConfig) -> float:
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    frozen = sum(m.weight.numel() for m in plain.modules() if isinstance(m, torch.nn.Linear))
    _, peft_model = build_model(config)
    lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return 4.0 * frozen + 6.0 * lora


def _trl(rows: list[dict], model_path: Path, config: TrainConfig, out: Path) -> float:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, model = load_fp32(model_path)
    args = SFTConfig(
        per_device_train_batch_size=config.batch_size,
        max_steps=config.max_steps,
        max_length=config.max_len,
        learning_rate=config.lr,
        seed=config.seed,
        **cpu_args(out),
    )
    lora = lora_all_linear(config.rank, config.alpha, config.dropout)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def _profile(config: TrainConfig, out: Path, flops_per_step: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Our trainer under torch.profiler: 2 steps to warm up, then 4 profiled."""
    skip, active = 2, 4
    log(f"profiling {active} of our steps")

    def run(step: Callable[[], None]) -> None:
        profiled = replace(config, out=str(out), max_steps=skip + active, save_every=skip + active + 1)
        train(profiled, progress=lambda *_: step(), log=lambda _: None)

    return {"steps": active, **summarise(profile_steps(run, skip, active), flops_per_step * active)}


def run(
    steps: int = 6,
    batch_size: int = 8,
    seq_len: int = 256,
    rank: int = 16,
    data_dir: Path | None = None,
    model_name: str = DEFAULT_MODEL,
    seed: int = 0,
    profile: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Time ours and TRL; with `profile`, then also profile 4 of our steps (after 2 unprofiled)."""
    model_path = resolve_local(model_name)
    peak = fp32_matmul_peak_gflops()
    log(f"fp32 matmul peak {peak:.1f} GFLOP/s")
    tokenizer, _ = build_model(TrainConfig(data="", out="", model=model_name, rank=rank))
    rows = training_chats(steps * batch_size, seq_len, data_dir, tokenizer, seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = TrainConfig(
            data=str(data), out=str(Path(tmp) / "ours"), model=model_name, rank=rank, max_steps=steps,
            batch_size=batch_size, max_len=seq_len, seed=seed, save_every=steps + 1,
        )  # fmt: skip
        log(f"ours: {steps} steps of {batch_size} x {seq_len} tokens")
        ours = train(config, log=log)
        log(f"  {ours.tokens} tokens in {ours.seconds:.1f}s")
        trl_tokens = sum(min(_length(tokenizer, r["messages"]), seq_len) for r in rows)
        log("TRL SFTTrainer: same steps, batch, length, LoRA; glibc's default allocator, as its users run it")
        trl_s = _trl(rows, model_path, config, Path(tmp) / "trl")
        log(f"  {trl_tokens} tokens in {trl_s:.1f}s")
        log("TRL SFTTrainer again, keeping freed memory as our trainer does")
        with freed_memory_kept():
            trl_kept_s = _trl(rows, model_path, config, Path(tmp) / "trl-kept")
        log(f"  {trl_tokens} tokens in {trl_kept_s:.1f}s")
        flops = _flops_per_token(model_path, config)
        profiled = _profile(config, Path(tmp) / "profiled", ours.tokens / ours.steps * flops, log) if profile else None
    ours_tok_s = ours.tokens / ours.seconds
    trl_tok_s = trl_tokens / trl_s
    return {
        "benchmark": "train",
        "model": model_name,
        "steps": steps,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "lora": {"rank": rank, "alpha": config.alpha, "targets": config.targets},
        "ours_tokens": ours.tokens,
        "ours_s": round(ours.seconds, 2),
        "ours_tok_s": round(ours_tok_s, 1),
        "peer": "trl.SFTTrainer (defaults, same LoRA, batch, length, steps)",
        "trl_tokens": trl_tokens,
        "trl_s": round(trl_s, 2),
        "trl_tok_s": round(trl_tok_s, 1),
        "speedup": round(ours_tok_s / trl_tok_s, 2),
        "trl_kept_memory_tok_s": round(trl_tokens / trl_kept_s, 1),
        "speedup_same_allocator": round(ours_tok_s / (trl_tokens / trl_kept_s), 2),
        "flops_per_token": flops,
        "peak_gflops": round(peak, 1),
        "ours_gflops": round(ours_tok_s * flops / 1e9, 1),
        "peak_fraction": round(ours_tok_s * flops / 1e9 / peak, 3),
        "trl_peak_fraction": round(trl_tok_s * flops / 1e9 / peak, 3),
        "ours_final_loss": round(ours.losses[-1], 4),
        "profile": profiled,
        "seed": seed,
        "versions": versions("personalm", "torch", "transformers", "peft", "trl"),
        "machine": machine(),
    }
