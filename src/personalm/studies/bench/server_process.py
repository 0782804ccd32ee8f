"""A server command run as its own process on a loopback port, for the serving benchmarks (and the
tests' llama.cpp server)."""

from __future__ import annotations

import subprocess
import tempfile
import time

import httpx

START_TIMEOUT_S = 120.0


class ServerProcess:
    """`with ServerProcess(argv, port) as url:` runs a server command on a loopback port until
    its `health` path answers 200, and stops it on exit. Benchmarks run each contender's server as
    its own process, so the load generator never shares an interpreter with the server it measures."""

    def __init__(self, argv: list[str], port: int, name: str, health: str = "/health"):
        self.argv, self.port, self.name, self.health = argv, port, name, health
        self._log = tempfile.TemporaryFile()
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        self._proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}: {self._tail()}")
            try:
                if httpx.get(f"{self.url}{self.health}", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not become healthy in {START_TIMEOUT_S:g}s: {self._tail()}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def _tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-500:].decode("utf-8", "replace").strip()
