"""llama.cpp's `llama-server` as the batched peer of `bench generate` and `bench serve`, run for real
at a tiny size on the embedded GGUF (`make test` builds the binary once)."""

from __future__ import annotations

import httpx
import pytest

from personalm.models.embedded import gguf_path
from personalm.studies.bench import generate, llamacpp_server, serve
from personalm.studies.bench.workloads import synthesis_prompts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        llamacpp_server.binary() is None,
        reason="llama-server not built: run scripts/build-llama-server.sh (make test builds it)",
    ),
]


def test_server_runs_parallel_slots_and_stops() -> None:
    server = llamacpp_server.LlamaServer(gguf_path(), slots=2, ctx_per_slot=256)
    with server as url:
        props = httpx.get(f"{url}/props", timeout=10).json()
        assert props["total_slots"] == 2
    assert server._proc is not None and server._proc.poll() is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_throughput_counts_every_reply() -> None:
    prompts = synthesis_prompts(4, None)
    result = llamacpp_server.throughput(gguf_path(), prompts, max_tokens=6, slots=2)
    assert result["slots"] == 2
    assert 4 <= result["tokens"] <= 4 * 6
    assert result["tok_s"] > 0


def test_bench_generate_reports_the_server_ratio() -> None:
    result = generate.run(prompts_count=3, max_tokens=5, llamacpp=True, server_slots=(2, 3))
    assert [run["slots"] for run in result["llamacpp_server"]] == [2, 3]
    best = max(run["tok_s"] for run in result["llamacpp_server"])
    assert result["llamacpp_server_tok_s"] == best
    assert result["llamacpp_server_speedup"] == pytest.approx(result["ours_tok_s"] / best, abs=0.02)
    assert result["llamacpp_speedup"] > 0 and result["speedup"] > 0


def test_bench_serve_times_the_peer_under_the_same_load() -> None:
    result = serve.run(clients=3, seconds=4, sequential_seconds=2, max_tokens=6)
    assert result["errors"] == 0
    peer = result["peer"]
    assert peer["errors"] == 0 and peer["requests"] >= 3 and peer["slots"] == 3
    assert result["peer_ttft_p95_ms"] == peer["ttft_p95_ms"] >= result["peer_ttft_p50_ms"] > 0
    assert result["ttft_p95_ms"] >= result["ttft_p50_ms"] > 0
    for phase, key in ((result, "ttft_p95_ms"), (result, "ttft_p50_ms"), (peer, "ttft_p95_ms")):
        low, high = phase[f"{key}_ci"]
        assert low <= phase[key] <= high
    assert result["peer_ttft_p95_ms_ci"] == peer["ttft_p95_ms_ci"]
    assert result["ttft_items"] == result["concurrent"]["ttft_items"] >= 3
