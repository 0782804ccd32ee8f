"""`personalm bench synth`: our synthesis runners vs the Persona Hub reference pattern.

(a) local: `synthesize` over N personas in one batched call vs one persona, one request at a time
    (the reference scripts' loop), same model, same prompts, same token budget;
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

from personalm.bench.hardware import machine, versions
from personalm.bench.workloads import personas as load_personas
from personalm.models.base import TextModel
from personalm.models.registry import DEFAULT_MODEL, load_model
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
    synthesize(rows[:2], task, model, options)  # warm-up
    log(f"local: {len(rows)} personas in one batched call")
    ours = _side(*_timed(lambda: synthesize(rows, task, model, options)))
    log(f"local: {sequential} personas one request at a time")
    peer = _side(*_timed(lambda: _one_at_a_time(rows[:sequential], task, model, options)))
    result: dict[str, Any] = {
        "benchmark": "synth",
        "task": task_name,
        "model": model.model_id,
        "max_tokens": max_tokens,
        "local": {"ours": ours, "one_at_a_time": peer},
        "local_speedup": _ratio(ours, peer),
        "http_speedup": None,
    }
    if http:
        result["http"] = _http(rows, task, options, model_name, model, concurrency, sequential, log)
        result["http_speedup"] = _ratio(result["http"]["concurrent"], result["http"]["sequential"])
    model.close()
    return result | {"seed": seed, "versions": versions("personalm", "torch", "httpx"), "machine": machine()}


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
