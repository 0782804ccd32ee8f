"""`personalm bench synth`: our synthesis runners vs the Persona Hub reference pattern.

(a) local: `synthesize` over N personas in one batched call vs the Persona Hub reference pattern,
    one persona, one request at a time (the reference scripts' loop) through Hugging Face
    `generate` on the same weights, same prompts, same sampling and token budget
    (`local_speedup`); and, as a stricter check, vs our own engine called one persona at a time
    (`local_speedup_vs_own_sequential`), which isolates what batching alone buys;
(b) http: the same runner through an OpenAI-compatible endpoint (our server on loopback, a real
    HTTP server) with bounded concurrency vs sequential calls.
Throughput is completion tokens per second; the one-at-a-time side runs a prefix of the personas
(its tokens/s does not depend on how many it runs) to keep the benchmark short.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from personalm.errors import PersonalmError
from personalm.models.base import TextModel
from personalm.models.local import LocalModel
from personalm.models.registry import DEFAULT_MODEL, load_model
from personalm.provenance import machine, versions
from personalm.studies.bench.peers import hf_one_at_a_time
from personalm.studies.bench.workloads import personas as load_personas
from personalm.synth.modes import chat
from personalm.synth.run import Row, SynthOptions, synthesize
from personalm.synth.tasks import Task, get_task


def _timed(fn: Callable[[], list[Row]]) -> tuple[int, float, int]:
    start = time.perf_counter()
    rows = fn()
    return sum(r["completion_tokens"] for r in rows), time.perf_counter() - start, len(rows)


def _one_at_a_time(rows: Sequence[Row], task: Task, model: TextModel, options: SynthOptions) -> list[Row]:
    return [out for row in rows for out in synthesize([row], task, model, options)]


def _side(tokens: int, seconds: float, rows: int) -> dict[str, Any]:
    return {"rows": rows, "tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 2)}


def _ratio(ours: dict[str, Any], peer: dict[str, Any]) -> float | None:
    return round(ours["tok_s"] / peer["tok_s"], 2) if peer["tok_s"] else None


def run(
    personas: int = 64,
    sequential: int = 8,
    concurrency: int = 16,
    max_tokens: int = 64,
    task_name: str = "math",
    data_dir: Path | None = None,
    model_name: str = DEFAULT_MODEL,
    http: bool = True,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    task = get_task(task_name)
    rows = [{"id": str(i), "persona": p} for i, p in enumerate(load_personas(data_dir)[:personas])]
    options = SynthOptions(max_tokens=max_tokens, temperature=0.8, seed=seed)
    model = load_model(model_name)
    if not isinstance(model, LocalModel):
        raise PersonalmError(f"bench synth compares local runners; '{model_name}' is not a local model")
    synthesize(rows[:2], task, model, options)  # warm-up
    log(f"local: {len(rows)} personas in one batched call")
    ours = _side(*_timed(lambda: synthesize(rows, task, model, options)))
    log(f"local: {sequential} personas through HF generate, one request at a time")
    prompts = [chat(task, options.mode, r["persona"], (), options.constraints) for r in rows[:sequential]]
    _, hf_tokens, hf_s = hf_one_at_a_time(model, prompts, options.params())
    reference = _side(hf_tokens, hf_s, sequential)
    log(f"local: {sequential} personas through our engine, one request at a time")
    own = _side(*_timed(lambda: _one_at_a_time(rows[:sequential], task, model, options)))
    result: dict[str, Any] = {
        "benchmark": "synth",
        "task": task_name,
        "model": model.model_id,
        "max_tokens": max_tokens,
        "personas": personas,
        "sequential": sequential,
        "local": {"ours": ours, "reference_hf_one_at_a_time": reference, "own_engine_one_at_a_time": own},
        "local_speedup": _ratio(ours, reference),
        "local_speedup_vs_own_sequential": _ratio(ours, own),
        "http_speedup": None,
    }
    if http:
        result["http"] = _http(rows, task, options, model_name, model, concurrency, sequential, log)
        result["http_speedup"] = _ratio(result["http"]["concurrent"], result["http"]["sequential"])
    model.close()
    return result | {
        "seed": seed,
        "versions": versions("personalm", "torch", "transformers", "httpx"),
        "machine": machine(),
    }


def _http(rows, task, options, model_name, model, concurrency, sequential, log) -> dict[str, Any]:
    """Our server on loopback; the client runner with `concurrency` requests in flight vs one."""
    from personalm.models.openai_compat import OpenAICompatModel
    from personalm.serve.app import create_app
    from personalm.serve.auth import KeyStore
    from personalm.serve.background import BackgroundServer
    from personalm.serve.catalog import Catalog

    catalog = Catalog([model_name], slots=concurrency, max_len=512)
    catalog.attach(model_name, model)
    with (
        tempfile.TemporaryDirectory() as tmp,
        BackgroundServer(create_app(catalog, KeyStore(Path(tmp) / "k.db", None))) as url,
    ):
        many = OpenAICompatModel(f"{url}/v1", model_name, "unused", max_concurrency=concurrency)
        one = OpenAICompatModel(f"{url}/v1", model_name, "unused", max_concurrency=1)
        synthesize(rows[:2], task, many, options)  # warm-up
        log(f"http: {len(rows)} personas, {concurrency} requests in flight")
        concurrent = _side(*_timed(lambda: synthesize(rows, task, many, options)))
        log(f"http: {sequential} personas, one request at a time")
        single = _side(*_timed(lambda: _one_at_a_time(rows[:sequential], task, one, options)))
        many.close()
        one.close()
    return {"concurrency": concurrency, "concurrent": concurrent, "sequential": single}
