"""Run the `personalm` CLI in a subprocess, as a user would (exit code, stdout, stderr)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-c", "from personalm.cli.app import main; main()"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def cli_json(*args: str, cwd: Path | None = None) -> dict:
    """The JSON a `--json` command prints last, after checking it exited 0 (else its stderr tail)."""
    done = run_cli(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
