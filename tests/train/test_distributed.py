"""Data-parallel training under torchrun: two processes on the gloo backend train the same adapter
as one process with the same global batch, and a killed two-process run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from personalm.train.distributed import Group

QUESTIONS = ["What is rain?", "Why is grass green?", "What is a star?", "How do fish breathe?", "Why do cats purr?"]


def test_shards_split_a_batch_without_loss_or_overlap():
    rows = list(range(7))
    shards = [Group(rank, 3).shard(rows) for rank in range(3)]
    assert sorted(sum(shards, [])) == rows and [len(s) for s in shards] == [3, 2, 2]
    assert Group().shard(rows) == rows and Group(1, 8).shard([4]) == []


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _args(data: Path, out: Path) -> list[str]:
    # batch 3 over 2 processes: shards of 2 and 1 rows, unequal token counts, so the loss must be
    # normalised by the global count for the steps to equal one process's
    return [
        "train", "sft", str(data), "-o", str(out), "--max-steps", "6", "--batch-size", "3", "--max-len", "64",
        "--save-every", "2", "--seed", "3", "--rank", "4", "--alpha", "8", "--dropout", "0",
    ]  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_the_one_process_adapter_and_resume(tmp_path, cli):
    data = tmp_path / "chats.jsonl"
    with open(data, "w") as handle:
        for i in range(12):
            q = QUESTIONS[i % len(QUESTIONS)]
            answer = f"Easy words: {q[:-1].lower()}." + " More so." * (i % 4)
            handle.write(
                json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]})
                + "\n"
            )
    one = cli.run(*_args(data, tmp_path / "one"))
    assert one.returncode == 0, str(one)

    two = tmp_path / "two"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "personalm"]
    env = cli.env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [*launch, *_args(data, two)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not list((two / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # the launcher and its workers, as a crash would
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (two / "adapter_config.json").exists()
    resumed = subprocess.run([*launch, *_args(data, two)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resumed from step") == 1, "only rank 0 logs"
    assert resumed.stderr.count("adapter saved to") == 1, "only rank 0 reports"

    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    summary = json.loads((two / "train_config.json").read_text())
    assert (summary["processes"], summary["device"]) == (2, "cpu")
    losses = [[json.loads(line)["loss"] for line in open(out / "train_log.jsonl")] for out in (tmp_path / "one", two)]
    assert len(losses[1]) == 6
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
