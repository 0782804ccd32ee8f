"""`personalm bench critic`: how fast the preference critic scores, and what it adds to a chat turn.

Three measurements, in one process on the same machine:

* load: seconds to load the saved artifact (imports done, as in a running server), best of 3;
* throughput: (preference, question + answer) pairs per second, ours batched
  (`PreferenceCritic.pair_probabilities`, 64 a batch) against two peers on the same pairs: ours one
  pair at a time, and sentence-transformers' `CrossEncoder.predict` on the same encoder weights
  and tokenizer (its own classification head; only its speed is compared);
* a chat turn on the embedded model: one candidate answer without the critic, against n = 4
  candidates sampled in one batched `generate` call and scored by the critic (preference-aware
  answering); p50 and p95 milliseconds per turn, turns interleaved so both see the same load.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from personalm.critic.data import in_topics, prefeval_items
from personalm.critic.model import MAX_LEN, PreferenceCritic, pair_text
from personalm.models.base import SamplingParams
from personalm.provenance import load_average, machine, versions
from personalm.studies.bench import percentile

BATCH = 64
WARMUP = 2


def run(
    artifact: Path,
    data: Path,
    pairs: int = 512,
    single: int = 64,
    turns: int = 12,
    candidates: int = 4,
    max_tokens: int = 48,
    model_name: str | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    from personalm.models.registry import DEFAULT_MODEL, load_model

    critic, load_s = _load(artifact)
    topics = critic.meta.get("topics", {}).get("test") or []
    items = in_topics(prefeval_items(data), topics) or prefeval_items(data)
    rng = random.Random(seed)
    triples = [(i.preference, i.question, a) for i in items for a in i.answers]
    rng.shuffle(triples)
    triples = (triples * (pairs // max(len(triples), 1) + 1))[:pairs]
    firsts = [p for p, _, _ in triples]
    seconds = [pair_text(q, a) for _, q, a in triples]
    log(f"critic: {len(triples)} pairs from topics {', '.join(topics) or 'all'}; load {load_s * 1000:.0f} ms")

    critic.pair_probabilities(firsts[:BATCH], seconds[:BATCH])
    start = time.perf_counter()
    ours = critic.pair_probabilities(firsts, seconds, batch=BATCH)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    for k in range(single):
        critic.pair_probabilities(firsts[k : k + 1], seconds[k : k + 1], batch=1)
    single_s = time.perf_counter() - start
    peer_s = _cross_encoder_predict(artifact, firsts, seconds)
    log(f"critic: {len(triples) / ours_s:.0f} pairs/s batched, {single / single_s:.0f} one at a time")

    name = model_name or DEFAULT_MODEL
    asked = rng.sample(items, min(turns, len(items)))
    chats = [
        [{"role": "system", "content": f"What you remember about the user:\n- {i.preference}"},
         {"role": "user", "content": i.question}]
        for i in asked
    ]  # fmt: skip
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.9, seed=seed)
    plain, with_critic, critic_ms = [], [], []
    with load_model(name) as model:
        for chat in chats[:WARMUP]:
            model.generate([chat], params)
        for k, (item, chat) in enumerate(zip(asked, chats, strict=True)):
            turn = replace(params, seed=seed + k)
            start = time.perf_counter()
            model.generate([chat], turn)
            plain.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            answers = [g.text for g in model.generate([chat] * candidates, turn)]
            scored = time.perf_counter()
            critic.score([item.preference], item.question, answers)
            with_critic.append((time.perf_counter() - start) * 1000)
            critic_ms.append((time.perf_counter() - scored) * 1000)
            log(
                f"critic: turn {k + 1}/{len(chats)}: {plain[-1]:.0f} ms plain, {with_critic[-1]:.0f} ms with n={candidates}"
            )

    return {
        "benchmark": "critic",
        "artifact": str(artifact),
        "load_s": round(load_s, 3),
        "pairs": len(triples),
        "max_len": MAX_LEN,
        "ours": "PreferenceCritic.pair_probabilities, batches of 64",
        "ours_pairs_s": round(len(triples) / ours_s, 1),
        "peer_one_at_a_time": "PreferenceCritic.pair_probabilities, one pair per call",
        "one_at_a_time_pairs": single,
        "one_at_a_time_pairs_s": round(single / single_s, 1),
        "speedup_vs_one_at_a_time": round((len(triples) / ours_s) / (single / single_s), 2),
        "peer_cross_encoder": "sentence_transformers.CrossEncoder.predict, same encoder, batch 64",
        "cross_encoder_pairs_s": round(len(triples) / peer_s, 1),
        "speedup_vs_cross_encoder": round(peer_s / ours_s, 2),
        "turn_model": name,
        "turns": len(chats),
        "candidates": candidates,
        "max_tokens": max_tokens,
        "plain_p50_ms": percentile(plain, 50),
        "plain_p95_ms": percentile(plain, 95),
        "with_critic_p50_ms": percentile(with_critic, 50),
        "with_critic_p95_ms": percentile(with_critic, 95),
        "critic_scoring_p50_ms": percentile(critic_ms, 50),
        "added_p50_ms": round(percentile(with_critic, 50) - percentile(plain, 50), 1),
        "added_p95_ms": round(percentile(with_critic, 95) - percentile(plain, 95), 1),
        "scores_mean": round(float(ours.mean()), 4),
        "load_average_1m": round(load_average(), 2),
        "seed": seed,
        "versions": versions("personalm", "torch", "transformers", "sentence-transformers"),
        "machine": machine(),
    }


def _load(artifact: Path, repeats: int = 3) -> tuple[PreferenceCritic, float]:
    best, critic = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        critic = PreferenceCritic.load(artifact)
        best = min(best, time.perf_counter() - start)
    assert critic is not None
    return critic, best


def _cross_encoder_predict(artifact: Path, firsts: list[str], seconds: list[str]) -> float:
    """Seconds of sentence-transformers' CrossEncoder.predict over the same pairs (after one warm-up batch)."""
    import logging

    from sentence_transformers import CrossEncoder

    logging.getLogger("transformers").setLevel(logging.ERROR)
    peer = CrossEncoder(
        str(artifact / "encoder"), num_labels=1, max_length=MAX_LEN, device="cpu", local_files_only=True
    )
    pairs = list(zip(firsts, seconds, strict=True))
    peer.predict(pairs[:BATCH], batch_size=BATCH, show_progress_bar=False)
    start = time.perf_counter()
    peer.predict(pairs, batch_size=BATCH, show_progress_bar=False)
    return time.perf_counter() - start
