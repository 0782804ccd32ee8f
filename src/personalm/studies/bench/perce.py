"""Training step time of PerCE vs plain CE on the same batch, model and adapter.

Both run the trainer's own optimizer step (`train.loop._optimizer_step`) on one batch of
persona-chat windows, alternating CE and PerCE so machine noise hits both alike; the median step
time of each is kept. PerCE adds one no-grad forward without the persona and no backward, so the
ratio should stay well under 2.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from personalm.perce.contrast import tokenize_contrast
from personalm.perce.persona_chat import load_conversations, window_rows
from personalm.provenance import machine, versions
from personalm.tables import write_rows
from personalm.train.data import load_examples
from personalm.train.loop import TrainConfig, _optimizer_step, build_model
from personalm.train.losses import get_loss


def run(
    data: Path, model: str, batch_size: int, max_len: int, repeats: int, log: Callable[[str], None] = print
) -> dict:
    conversations = load_conversations(data / "persona_chat" / "valid.csv")
    rows = window_rows(conversations[: batch_size * 2], window=6)[:batch_size]
    config = TrainConfig(data="", out="", model=model, batch_size=batch_size, max_len=max_len)
    torch.manual_seed(0)
    tokenizer, peft_model = build_model(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.jsonl"
        write_rows(path, rows)
        dataset = load_examples(path, tokenizer, max_len, contrast=tokenize_contrast)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    losses = {"ce": get_loss("ce"), "perce": get_loss("perce")}
    group = [list(range(len(dataset.examples)))]
    times: dict[str, list[float]] = {"ce": [], "perce": []}
    peft_model.train()
    for repeat in range(repeats + 1):
        for name, loss_fn in losses.items():
            state = {"tokens": 0}
            start = time.perf_counter()
            _optimizer_step(peft_model, dataset, group, pad_id, loss_fn, optimizer, scheduler, params, config, state)
            if repeat:  # the first round warms up both
                times[name].append(time.perf_counter() - start)
        if repeat:
            log(f"round {repeat}: CE {times['ce'][-1]:.2f} s, PerCE {times['perce'][-1]:.2f} s")
    ce, perce = statistics.median(times["ce"]), statistics.median(times["perce"])
    tokens = sum(len(e.input_ids) for e in dataset.examples)
    return {
        "batch_size": len(dataset.examples),
        "tokens_per_batch": tokens,
        "repeats": repeats,
        "ce_step_s": round(ce, 3),
        "perce_step_s": round(perce, 3),
        "step_time_ratio": round(perce / ce, 3),
        "ce_tok_s": round(tokens / ce, 1),
        "perce_tok_s": round(tokens / perce, 1),
        "machine": machine(),
        "versions": versions("personalm", "torch", "transformers", "peft"),
    }
