"""Where the time goes: an operator profile grouped into the few kinds of work that matter.

`personalm bench train --profile` and `bench generate --profile` use it to show why a run reaches
the fraction of the fp32 matmul peak it does: how much of the time is spent inside matmuls at all,
how fast the matmuls run while they do, and what the rest is (attention, softmax and loss,
dropout masks, normalisation, elementwise, copies, optimizer). torch.profiler records each operator's own time
on the calling thread; its overhead inflates the many small operators a little, which is said
next to the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.profiler import ProfilerActivity, profile, schedule

# First match wins; names are torch operator names (aten::mm, mkldnn::_linear_pointwise, ...).
# Batched matmuls are attention in both engines (decode scores, SDPA's parts), the rest are the
# projections whose FLOPs the benchmarks count.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmul", ("::mm", "::addmm", "::matmul", "::linear", "_linear_pointwise")),
    ("attention", ("scaled_dot_product", "attention", "::bmm", "::baddbmm")),
    ("softmax and loss", ("softmax", "cross_entropy", "nll_loss", "logsumexp", "::sort", "::topk", "multinomial")),
    ("dropout masks", ("bernoulli", "dropout")),
    ("normalisation", ("rms_norm", "layer_norm", "::pow", "::mean", "::rsqrt", "norm")),
    ("optimizer", ("_foreach", "adam", "addcdiv", "lerp", "clip_grad")),
    ("copy and layout", ("copy_", "::cat", "::clone", "::contiguous", "_to_copy", "::index", "gather",
                         "scatter", "embedding", "::stack", "::fill_", "::zero_", "::zeros", "::empty")),
    ("elementwise", ("::mul", "::add", "::sub", "::div", "silu", "::neg", "::exp", "::where", "::masked_fill",
                     "::sum", "::sigmoid", "threshold")),
)  # fmt: skip


def kind_of(name: str) -> str:
    return next((kind for kind, marks in KINDS if any(mark in name for mark in marks)), "other")


def summarise(events: Any, flops: float | None = None, top: int = 8) -> dict[str, Any]:
    """Shares of self time per kind and the top operators; with `flops` (matmul work done in the
    profiled span) also the GFLOP/s the matmuls ran at while they ran."""
    totals: dict[str, float] = {}
    ops = []
    for event in events:
        us = event.self_cpu_time_total
        if us <= 0:
            continue
        totals[kind_of(event.key)] = totals.get(kind_of(event.key), 0.0) + us
        ops.append((us, event.key, event.count))
    whole = sum(totals.values()) or 1.0
    result: dict[str, Any] = {
        "profiled_s": round(whole / 1e6, 3),
        "shares": {kind: round(us / whole, 3) for kind, us in sorted(totals.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            {"op": key, "calls": count, "share": round(us / whole, 3)}
            for us, key, count in sorted(ops, reverse=True)[:top]
        ],
    }
    if flops is not None and totals.get("matmul"):
        result["matmul_gflops"] = round(flops / (totals["matmul"] / 1e6) / 1e9, 1)
    return result


def profile_steps(run: Callable[[Callable[[], None]], Any], skip: int = 0, active: int = 1) -> Any:
    """Profile `run`, which gets a callback to call at the end of each of its steps: all of it, or
    with `skip` > 0 only the `active` steps after the first `skip`. Returns the operator averages."""
    steps = schedule(wait=skip - 1, warmup=1, active=active) if skip else None
    with profile(activities=[ProfilerActivity.CPU], schedule=steps) as prof:
        run(prof.step if skip else lambda: None)
    return prof.key_averages()
