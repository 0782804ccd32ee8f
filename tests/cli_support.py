"""Run the `personalm` CLI in a subprocess, as a user would, or in this process (fast): exit code, stdout, stderr."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-c", "from personalm.cli.app import main; main()"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def cli_json(*args: str, cwd: Path | None = None) -> dict:
    """The JSON a `--json` command prints last, after checking it exited 0 (else its stderr tail)."""
    done = run_cli(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out[-2000:]}\n--- stderr ---\n{self.err[-2000:]}"


def run_main(*args: str, stdin: str = "") -> Ran:
    """Run the CLI in this process (no interpreter start, no imports paid twice): exit code, stdout, stderr."""
    from personalm.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err), _stdin(stdin):
        try:
            main(list(args))
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


@contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


def one_error_line(ran: Ran) -> str:
    """The single `error: ...` line of a user error (exit 2, no traceback), or an assertion naming what is wrong."""
    assert ran.code == 2, str(ran)
    assert "Traceback" not in ran.out + ran.err, str(ran)
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), str(ran)
    return lines[0]
