"""`personalm bench serve`: many streaming clients against the server vs the same requests one at a time.

Both phases talk to the same real server on loopback (`personalm serve` as its own process: uvicorn,
HTTP, SSE) and walk the same list of persona-driven chat requests in the same order. The concurrent phase keeps `clients` requests in
flight for `seconds`; the sequential phase sends them one after another for `sequential_seconds`
(a full sequential replay would take several times longer, and tokens/s is what is compared).
The peer phase runs the same concurrent load against llama.cpp's `llama-server` on the same GGUF
with one parallel slot per client, for its time to first token beside ours.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from personalm.eval.bootstrap import bootstrap_quantile
from personalm.models.embedded import gguf_path
from personalm.models.registry import DEFAULT_MODEL
from personalm.provenance import machine, versions
from personalm.serve.background import free_port
from personalm.studies.bench import llamacpp_server
from personalm.studies.bench.server_process import ServerProcess
from personalm.studies.bench.workloads import synthesis_prompts

REQUEST_POOL = 2048


@dataclass
class Phase:
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, seed: int = 0) -> dict[str, Any]:
        """Rates, and TTFT p50/p95 with 95% bootstrap intervals over the requests (`ttft_items`)."""
        out: dict[str, Any] = {
            "requests": self.requests,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tok_s": round(self.tokens / self.seconds, 2) if self.seconds else 0.0,
        }
        ttft_ms = np.array(self.ttft_s) * 1000
        for name, q in (("ttft_p50_ms", 0.50), ("ttft_p95_ms", 0.95)):
            if len(ttft_ms):
                interval = bootstrap_quantile(ttft_ms, q, seed=seed)
                out[name] = round(interval.mean, 1)
                out[f"{name}_ci"] = [round(interval.low, 1), round(interval.high, 1)]
            else:
                out[name], out[f"{name}_ci"] = float("nan"), None
        out["ttft_items"] = len(ttft_ms)
        out["errors"] = len(self.errors)
        return out


async def _one(http: httpx.AsyncClient, url: str, body: dict[str, Any], phase: Phase) -> None:
    start = time.perf_counter()
    first = None
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as res:
            if res.status_code != 200:
                phase.errors.append(f"HTTP {res.status_code}: {(await res.aread())[:200]!r}")
                return
            usage = None
            async for line in res.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    phase.errors.append(chunk["error"]["message"])
                    return
                if chunk.get("usage"):
                    usage = chunk["usage"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
        if usage is None:
            phase.errors.append("stream ended without a usage chunk")
            return
        phase.tokens += usage["completion_tokens"]
        phase.requests += 1
        if first is not None:
            phase.ttft_s.append(first)
    except httpx.HTTPError as err:
        phase.errors.append(f"{type(err).__name__}: {err}")


async def _drive(url: str, bodies: list[dict], clients: int, seconds: float, log: Callable[[str], None]) -> Phase:
    """`clients` loops, each sending the next request from the shared list until time is up."""
    phase = Phase()
    next_index = iter(range(len(bodies)))
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            index = next(next_index, None)
            if index is None:
                return
            await _one(http, url, bodies[index], phase)

    # A connection per request, for both servers: llama-server answers "keep-alive" but closes the
    # connection after each streamed reply, so a client that reuses it at once races the close and
    # gets "Server disconnected without sending a response" (~1 in 6 back-to-back requests here).
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    phase.seconds = time.perf_counter() - start
    log(f"  {clients} client(s): {phase.requests} requests, {phase.tokens} tokens in {phase.seconds:.1f}s")
    return phase


def run(
    clients: int = 32,
    seconds: float = 60.0,
    sequential_seconds: float = 30.0,
    max_tokens: int = 64,
    data_dir: Path | None = None,
    model_name: str = DEFAULT_MODEL,
    seed: int = 0,
    peer: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    bodies = [
        {"model": model_name, "messages": chat, "max_tokens": max_tokens, "temperature": 0.7, "seed": seed + i,
         "stream": True, "stream_options": {"include_usage": True}}
        for i, chat in enumerate(synthesis_prompts(REQUEST_POOL, data_dir, seed))
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, _personalm_server(model_name, clients, Path(tmp)) as url:
        asyncio.run(_drive(url, bodies[:2], 2, 60.0, log))
        log(f"concurrent: {clients} streaming clients for {seconds:g}s")
        concurrent = asyncio.run(_drive(url, bodies, clients, seconds, log))
        log(f"sequential: one request at a time for {sequential_seconds:g}s")
        sequential = asyncio.run(_drive(url, bodies, 1, sequential_seconds, log))
    c, s = concurrent.summary(seed), sequential.summary(seed)
    p = _peer(bodies, clients, seconds, seed, log) if peer else None
    return {
        "benchmark": "serve",
        "model": model_name,
        "clients": clients,
        "max_tokens": max_tokens,
        "errors": c["errors"] + s["errors"],
        "error_samples": (concurrent.errors + sequential.errors)[:5],
        "ttft_p50_ms": c["ttft_p50_ms"],
        "ttft_p50_ms_ci": c["ttft_p50_ms_ci"],
        "ttft_p95_ms": c["ttft_p95_ms"],
        "ttft_p95_ms_ci": c["ttft_p95_ms_ci"],
        "ttft_items": c["ttft_items"],
        "concurrent": c,
        "sequential": s,
        "throughput_ratio": round(c["tok_s"] / s["tok_s"], 2) if s["tok_s"] else None,
        "peer": p,
        "peer_ttft_p50_ms": p["ttft_p50_ms"] if p else None,
        "peer_ttft_p95_ms": p["ttft_p95_ms"] if p else None,
        "peer_ttft_p95_ms_ci": p["ttft_p95_ms_ci"] if p else None,
        "seed": seed,
        "versions": versions("personalm", "torch", "transformers", "fastapi", "uvicorn", "httpx"),
        "machine": machine(),
    }


def _personalm_server(model_name: str, clients: int, tmp: Path) -> ServerProcess:
    """`personalm serve` in its own process, `clients` sequences batched, keys and memory in `tmp`."""
    port = free_port()
    argv = [
        sys.executable, "-m", "personalm", "serve", "--port", str(port), "--model", model_name,
        "--max-batch", str(clients), "--max-len", "512", "--keys-db", str(tmp / "keys.db"),
        "--avatar-store", str(tmp / "memory.db"),
    ]  # fmt: skip
    return ServerProcess(argv, port, "personalm serve")


def _peer(
    bodies: list[dict], clients: int, seconds: float, seed: int, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """The same concurrent phase against llama-server (embedded GGUF, one slot per client)."""
    if llamacpp_server.binary() is None:
        log("llama-server not built (scripts/build-llama-server.sh); no peer time to first token")
        return None
    with llamacpp_server.LlamaServer(gguf_path(), slots=clients, ctx_per_slot=512) as url:
        asyncio.run(_drive(url, bodies[:2], 2, 60.0, log))
        log(f"llama-server: {clients} streaming clients for {seconds:g}s")
        phase = asyncio.run(_drive(url, bodies, clients, seconds, log))
    return {"server": "llama-server (llama.cpp), same GGUF", "slots": clients, **phase.summary(seed),
            "error_samples": phase.errors[:5]}  # fmt: skip
