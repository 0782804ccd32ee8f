"""`personalm bench fusion`: what proxy-tuned decoding (models.fusion, an avatar's default voice)
costs, and how our three-stream decode compares with the way it is usually written.

Two measurements, in one process on the same machine and the same avatar-shaped chats (a system
prompt with a profile and three of the person's passages, and the name-only chat the voice adapter
reads):

* a batch: `fused_generate` of base(served) + (voice(plain) − base(plain)) over `rows` chats, ours
  on the Llama kernel against the peer — the same three streams stepped on the transformers
  forward with its KV cache, which is how proxy-tuning's reference implementation runs (Liu et al.
  2024) — generated tokens per second, greedy, both runs checked to give the same answers;
* a chat turn: one answer by the voice alone (the adapter merged, reading the served chat) against
  one proxy-tuned answer, p50 and p95 milliseconds per turn and p50 per generated token (the two
  answers differ in length), turns interleaved so both see the same load.

The voice is the adapter given with --adapter, or a second copy of the base (a merged adapter costs
what the base costs, so timings do not depend on its values).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from personalm.avatars.chat import system_prompt
from personalm.avatars.retrieval import Hit, Recall
from personalm.avatars.store import Memory
from personalm.models import fusion
from personalm.models.base import SamplingParams
from personalm.provenance import load_average, machine, versions
from personalm.studies.bench import percentile
from personalm.studies.bench.workloads import FALLBACK_PERSONAS, TASKS

WARMUP = 2


def avatar_chats(count: int) -> list[tuple[list[dict], list[dict]]]:
    """(served, plain) chat pairs shaped as an avatar turn: profile + three passages, or the name only."""
    pairs = []
    for i in range(count):
        persona = FALLBACK_PERSONAS[i % len(FALLBACK_PERSONAS)]
        passages = [
            " ".join(f"As {p}, I {verb} every single day, and I would tell anyone who asks exactly why it matters."
                     for p, verb in zip(FALLBACK_PERSONAS[k:] + FALLBACK_PERSONAS[:k], ("work", "learn", "listen"), strict=False))
            for k in range(i, i + 3)
        ]  # fmt: skip
        recall = Recall(exemplars=[Hit(Memory(k, "utterance", text), 0.0, 0.5) for k, text in enumerate(passages)])
        ask = {"role": "user", "content": TASKS[i % len(TASKS)].replace("this persona", "you")}
        served = [{"role": "system", "content": system_prompt("Ada", f"Ada is {persona}.", recall)}, ask]
        pairs.append((served, [{"role": "system", "content": system_prompt("Ada", None, Recall())}, ask]))
    return pairs


def run(rows: int = 16, turns: int = 12, max_tokens: int = 64, model_name: str | None = None,
        adapter: Path | None = None, seed: int = 0, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:  # fmt: skip
    from personalm.models.registry import DEFAULT_MODEL, load_model

    name = model_name or DEFAULT_MODEL
    pairs = avatar_chats(max(rows, turns))
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=seed)
    with load_model(name) as base, load_model(name, adapter=adapter) as voice:
        proxy = fusion.ProxyTuned(base, voice, 1.0)
        served, plain = [p[0] for p in pairs[:rows]], [p[1] for p in pairs[:rows]]
        streams = proxy.terms(served, plain)
        fusion.fused_generate(streams[:1], replace(greedy, max_tokens=4))  # warm the kernel's packed weights
        ours, ours_s = _timed(fusion.fused_generate, streams, greedy)
        log(f"fusion: {rows} rows on the Llama kernel, {ours_s:.1f} s")
        peer, peer_s = _timed(fusion.fused_generate, streams, greedy, None, fusion.FUSED_BATCH, True)
        log(f"fusion: {rows} rows on the transformers forward, {peer_s:.1f} s")
        agree = sum(a.text == b.text for a, b in zip(ours, peer, strict=True))
        tokens = sum(g.completion_tokens for g in ours)

        sampled = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.9, seed=seed)
        alone, fused, per_token = [], [], {"alone": [], "fused": []}
        for pair in pairs[:WARMUP]:
            voice.generate([pair[0]], sampled)
            proxy.generate([pair], sampled)
        for k, pair in enumerate(pairs[:turns]):
            turn = replace(sampled, seed=seed + k)
            for times, key, (answers, seconds) in ((alone, "alone", _timed(voice.generate, [pair[0]], turn)),
                                                   (fused, "fused", _timed(proxy.generate, [pair], turn))):  # fmt: skip
                times.append(seconds * 1000)
                per_token[key].append(seconds * 1000 / max(answers[0].completion_tokens, 1))
            log(f"fusion: turn {k + 1}/{turns}: {alone[-1]:.0f} ms the voice alone, {fused[-1]:.0f} ms proxy-tuned")

    return {
        "benchmark": "fusion",
        "model": name,
        "adapter": str(adapter) if adapter else None,
        "rows": rows,
        "max_tokens": max_tokens,
        "prompt_tokens_mean": round(float(np.mean([g.prompt_tokens for g in ours])), 1),
        "generated_tokens": tokens,
        "ours": "models.fusion.fused_generate, three streams on the Llama kernel",
        "ours_tokens_s": round(tokens / ours_s, 1),
        "peer": "the same three streams on the transformers forward with its KV cache",
        "peer_tokens_s": round(tokens / peer_s, 1),
        "speedup": round(peer_s / ours_s, 2),
        "same_answers": agree,
        "turns": turns,
        "voice_alone_p50_ms": percentile(alone, 50),
        "voice_alone_p95_ms": percentile(alone, 95),
        "fused_p50_ms": percentile(fused, 50),
        "fused_p95_ms": percentile(fused, 95),
        "added_p50_ms": round(percentile(fused, 50) - percentile(alone, 50), 1),
        "added_p95_ms": round(percentile(fused, 95) - percentile(alone, 95), 1),
        "voice_alone_ms_per_token_p50": percentile(per_token["alone"], 50),
        "fused_ms_per_token_p50": percentile(per_token["fused"], 50),
        "load_average_1m": round(load_average(), 2),
        "seed": seed,
        "versions": versions("personalm", "torch", "transformers"),
        "machine": machine(),
    }


def _timed(call: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - start
