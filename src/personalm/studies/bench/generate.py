"""`personalm bench generate`: our batched local backend against the two things a CPU user would
otherwise run, on the same prompts and token budget in one process:

* Hugging Face `generate`, one prompt at a time (how the Persona Hub reference scripts call a
  local model), on the very same fp32 weights: tokens/s and greedy agreement;
* llama.cpp (llama-cpp-python) on the very same GGUF file, one request at a time;
* llama.cpp's `llama-server` on the same GGUF with N parallel slots and continuous batching, every
  request in flight at once (how a CPU user serves many requests), when the binary is built.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from personalm.models.base import SamplingParams
from personalm.models.embedded import gguf_path
from personalm.models.local import LocalModel
from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.provenance import fp32_matmul_peak_gflops, machine, versions
from personalm.studies.bench import llamacpp_server
from personalm.studies.bench.peers import hf_one_at_a_time
from personalm.studies.bench.profile import profile_steps, summarise
from personalm.studies.bench.workloads import synthesis_prompts


def _flops_per_token(model: torch.nn.Module) -> tuple[int, int]:
    """(2 x body matmul params, 2 x lm_head params): prompt tokens cost the first, generated the sum."""
    head = model.lm_head.weight.numel()
    body = sum(
        m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    return 2 * body, 2 * head


def _profile(model: LocalModel, prompts, params: SamplingParams, flops: float) -> dict[str, Any]:
    """Our whole batch (prefill and decode) once more, under torch.profiler."""

    return summarise(profile_steps(lambda _: model.generate(prompts, params)), flops)


def _llamacpp_one_at_a_time(prompts, max_tokens: int, log) -> tuple[int, float]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False, seed=0)
    llm.create_chat_completion(prompts[0], max_tokens=4, temperature=0.0)
    tokens = 0
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        reply = llm.create_chat_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        tokens += reply["usage"]["completion_tokens"]
        log(f"  llama.cpp {i + 1}/{len(prompts)}")
    return tokens, time.perf_counter() - start


def run(
    prompts_count: int = 64,
    max_tokens: int = 64,
    data_dir: Path | None = None,
    model_name: str = DEFAULT_MODEL,
    llamacpp: bool = True,
    server_slots: tuple[int, ...] = (8, 16),
    profile: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run all four and return the measurements (tokens/s, ratios, agreement, peak fraction); with
    `profile`, our run is repeated under torch.profiler."""
    path = resolve_local(model_name)
    model = LocalModel(path)
    prompts = synthesis_prompts(prompts_count, data_dir)
    params = SamplingParams(max_tokens=max_tokens)
    peak = fp32_matmul_peak_gflops()
    log(f"fp32 matmul peak {peak:.1f} GFLOP/s")

    model.generate(prompts[:2], SamplingParams(max_tokens=4))
    start = time.perf_counter()
    ours = model.generate(prompts, params)
    ours_s = time.perf_counter() - start
    ours_tokens = sum(g.completion_tokens for g in ours)
    prompt_tokens = sum(g.prompt_tokens for g in ours)
    log(f"ours: {ours_tokens} tokens in {ours_s:.1f}s")

    hf_texts, hf_tokens, hf_s = hf_one_at_a_time(model, prompts, params, log)
    agree = sum(a.text == b for a, b in zip(ours, hf_texts, strict=True))

    body, head = _flops_per_token(model.model)
    ours_gflops = (body * (prompt_tokens + ours_tokens) + head * ours_tokens) / ours_s / 1e9
    result: dict[str, Any] = {
        "benchmark": "generate",
        "model": model.model_id,
        "prompts": prompts_count,
        "max_tokens": max_tokens,
        "prompt_tokens": prompt_tokens,
        "ours_tokens": ours_tokens,
        "ours_s": round(ours_s, 3),
        "ours_tok_s": round(ours_tokens / ours_s, 2),
        "peer": "transformers generate, one prompt at a time",
        "peer_tokens": hf_tokens,
        "peer_s": round(hf_s, 3),
        "peer_tok_s": round(hf_tokens / hf_s, 2),
        "speedup": round((ours_tokens / ours_s) / (hf_tokens / hf_s), 2),
        "greedy_agreement": round(agree / prompts_count, 4),
        "peak_gflops": round(peak, 1),
        "ours_gflops": round(ours_gflops, 1),
        "peak_fraction": round(ours_gflops / peak, 3),
        "compute_bound_tok_s": round(peak * 1e9 / (body + head), 1),
        "profile": _profile(model, prompts, params, body * (prompt_tokens + ours_tokens) + head * ours_tokens)
        if profile
        else None,
        "llamacpp_tok_s": None,
        "llamacpp_speedup": None,
        "llamacpp_server": [],
        "llamacpp_server_tok_s": None,
        "llamacpp_server_speedup": None,
        "seed": 0,
        "versions": versions("personalm", "torch", "transformers", "llama_cpp_python"),
        "machine": machine(),
    }
    if llamacpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            log("llama-cpp-python not installed (pip install 'personalm[llamacpp]'); skipping llama.cpp")
        else:
            cpp_tokens, cpp_s = _llamacpp_one_at_a_time(prompts, max_tokens, log)
            result["llamacpp_tokens"] = cpp_tokens
            result["llamacpp_s"] = round(cpp_s, 3)
            result["llamacpp_tok_s"] = round(cpp_tokens / cpp_s, 2)
            result["llamacpp_speedup"] = round((ours_tokens / ours_s) / (cpp_tokens / cpp_s), 2)
    if llamacpp and server_slots:
        if llamacpp_server.binary() is None:
            log("llama-server not built (scripts/build-llama-server.sh); skipping the llama.cpp server")
        else:
            runs = [llamacpp_server.throughput(gguf_path(), prompts, max_tokens, n, log) for n in server_slots]
            best = max(run["tok_s"] for run in runs)
            result["llamacpp_server"] = runs
            result["llamacpp_server_tok_s"] = best
            result["llamacpp_server_speedup"] = round((ours_tokens / ours_s) / best, 2)
    return result
