"""llama.cpp's own `llama-server` as a benchmark peer: parallel slots and continuous batching.

llama-cpp-python's server answers one request at a time, which is not how a CPU user serves many
requests; `llama-server` is. The binary is built once by `scripts/build-llama-server.sh` from the
llama.cpp source vendored by the pinned llama-cpp-python sdist, and cached beside its wheel.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from personalm.models.base import Prompt
from personalm.serve.background import free_port
from personalm.studies.bench.server_process import ServerProcess

VERSION = "0.3.36"


def binary() -> Path | None:
    """The built `llama-server`: $PERSONALM_LLAMA_SERVER, else the Makefile's cache; None if absent."""
    named = os.environ.get("PERSONALM_LLAMA_SERVER")
    if named:
        return Path(named) if Path(named).is_file() else None
    cache = Path(os.environ.get("WHEELHOUSE", Path.home() / ".cache" / "personalm" / "wheels-noamx"))
    path = cache / f"llama-server-{VERSION}" / "llama-server"
    return path if path.is_file() else None


class LlamaServer(ServerProcess):
    """llama-server with `slots` parallel sequences of `ctx_per_slot` tokens each (continuous
    batching is on by default)."""

    def __init__(self, gguf: Path, slots: int, ctx_per_slot: int = 1024, threads: int | None = None):
        path = binary()
        if path is None:
            raise FileNotFoundError("llama-server is not built (run scripts/build-llama-server.sh)")
        port = free_port()
        threads = threads or os.cpu_count() or 1
        argv = [
            str(path), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(slots), "-c", str(slots * ctx_per_slot), "-t", str(threads), "-tb", str(threads),
            "--cont-batching", "--no-webui", "--seed", "0",
        ]  # fmt: skip
        super().__init__(argv, port, "llama-server")


async def _all_in_flight(url: str, prompts: Sequence[Prompt], max_tokens: int) -> int:
    """Send every prompt at once (greedy, `max_tokens` each); the completion tokens of all replies."""
    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def one(messages: Prompt) -> int:
            body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
            res = await http.post(f"{url}/v1/chat/completions", json=body)
            res.raise_for_status()
            return res.json()["usage"]["completion_tokens"]

        return sum(await asyncio.gather(*(one(p) for p in prompts)))


def throughput(
    gguf: Path,
    prompts: Sequence[Prompt],
    max_tokens: int,
    slots: int,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Tokens/s of llama-server with `slots` parallel slots on the whole workload, all in flight."""
    with LlamaServer(gguf, slots) as url:
        asyncio.run(_all_in_flight(url, prompts[:2], 4))
        start = time.perf_counter()
        tokens = asyncio.run(_all_in_flight(url, prompts, max_tokens))
        seconds = time.perf_counter() - start
    log(f"  llama-server, {slots} slots: {tokens} tokens in {seconds:.1f}s")
    return {"slots": slots, "tokens": tokens, "s": round(seconds, 3), "tok_s": round(tokens / seconds, 2)}
