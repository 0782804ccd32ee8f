"""Shared fixtures."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from personalm.errors import PersonalmError

LLAMACPP_START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llamacpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenAI-compatible server (llama-cpp-python) on the embedded GGUF; yields its /v1 URL."""
    if any(importlib.util.find_spec(name) is None for name in ("llama_cpp", "uvicorn", "fastapi")):
        pytest.skip("llama-cpp-python[server] is not installed (pip install -e '.[llamacpp]')")
    from personalm.models.embedded import gguf_path

    try:
        gguf = gguf_path()
    except PersonalmError as exc:
        pytest.skip(str(exc))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path = tmp_path_factory.mktemp("llamacpp") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "2",
        "--chat_format", "chatml",
        "--verbose", "false",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + LLAMACPP_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready in {LLAMACPP_START_TIMEOUT_S:g} s; log: {log_path}")
            time.sleep(0.25)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def embedded_model():
    """The real embedded default (SmolLM2-135M-Instruct), loaded once for the whole session."""
    from personalm.models.embedded import ensure_converted
    from personalm.models.local import LocalModel

    return LocalModel(ensure_converted(), name="smollm2-135m-instruct")


@pytest.fixture(scope="session")
def embedder():
    from personalm.models.embedder import Embedder

    return Embedder()
