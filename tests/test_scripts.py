"""The scripts people run by hand: the GPU check's CPU dry run goes through every stage."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(cli):
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), "--cpu"], env=cli.env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["device"], report["compute_dtype"]) == ("cpu", "float32")
    for stage in ("generate", "merged_generate"):
        assert report[stage]["tokens"] > 0 and report[stage]["tok_s"] > 0, report[stage]
    assert report["train"]["steps"] == 2 and report["train"]["tokens"] > 0
    assert report["served_chat"]["status"] == 200 and report["served_chat"]["completion_tokens"] > 0
    assert report["peak_memory_mib"] > 0


def test_gpu_check_without_the_device_is_one_line(cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here: the check would run")
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh")], env=cli.env(), capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: device 'cuda': no CUDA GPU is visible to torch {torch.__version__}"
    ]
