"""The LoRA trainer: label masking, data validation, the frozen-base matmuls, save/load, kill and resume."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import personalm.train
from personalm.errors import PersonalmError
from personalm.train.data import IGNORE, load_examples, tokenize_chat
from personalm.train.frozen_base import FrozenLinear

QUESTIONS = ["What is rain?", "Why is grass green?", "What is a star?", "How do fish breathe?"]


def _write_chats(path: Path, count: int = 16) -> Path:
    with open(path, "w") as handle:
        for i in range(count):
            q = QUESTIONS[i % len(QUESTIONS)]
            chat = [{"role": "user", "content": q}, {"role": "assistant", "content": f"Easy words: {q[:-1].lower()}."}]
            handle.write(json.dumps({"messages": chat}) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    return embedded_model.tokenizer


def test_train_never_imports_perce():
    """PerCE registers its loss into train's registry; no import statement in train reaches perce."""
    imported = set()
    for source in Path(personalm.train.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    assert imported and not [name for name in imported if name.startswith("personalm.perce")]


def test_only_assistant_turns_are_supervised(tokenizer):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    ids, labels = tokenize_chat(tokenizer, chat)
    assert len(ids) == len(labels)
    kept = [label for label in labels if label != IGNORE]
    assert tokenizer.decode(kept) == "hello there<|im_end|>\nsee you<|im_end|>\n"


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "empty assistant"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "expected system, user or assistant"),
        ({"messages": [{"content": "hi"}]}, "needs 'role' and 'content'"),
        ({"text": "hi"}, "messages"),
    ],
)
def test_malformed_examples_name_their_line(tmp_path, tokenizer, row, needle):
    path = _write_chats(tmp_path / "d.jsonl", 2)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    with pytest.raises(PersonalmError) as err:
        load_examples(path, tokenizer, 128)
    assert needle in str(err.value) and ":3:" in str(err.value)


def test_overlong_examples_truncate_drop_or_fail(tmp_path, tokenizer):
    path = _write_chats(tmp_path / "d.jsonl", 4)
    with open(path, "a") as handle:
        long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
        handle.write(json.dumps({"messages": long}) + "\n")
    truncated = load_examples(path, tokenizer, 64, "truncate")
    assert truncated.dropped == 1 and truncated.truncated == 1 and len(truncated.examples) == 4
    assert load_examples(path, tokenizer, 64, "drop").dropped == 1
    with pytest.raises(PersonalmError, match=":5: example has"):
        load_examples(path, tokenizer, 64, "error")


@pytest.mark.parametrize(("quant", "tolerance"), [("fp32", 1e-5), ("int8", 0.04)])
def test_frozen_linear_matches_a_plain_linear_forward_and_backward(quant, tolerance):
    """int8 quantizes activations too (7-bit per tensor): ~2% relative error at the model's widths."""
    torch.manual_seed(0)
    weight = torch.randn(96, 576) * 0.05
    x = torch.randn(3, 5, 576, requires_grad=True)
    reference = torch.nn.functional.linear(x, weight)
    reference.square().sum().backward()
    expected_grad, x.grad = x.grad.clone(), None
    frozen = FrozenLinear(weight, quant)
    out = frozen(x)
    out.square().sum().backward()
    assert (out - reference).norm() / reference.norm() < tolerance
    assert (x.grad - expected_grad).norm() / expected_grad.norm() < tolerance


def _sft(data: Path, out: Path, *extra: str, steps: int = 6) -> list[str]:
    return [
        "train", "sft", str(data), "-o", str(out),
        "--max-steps", str(steps), "--batch-size", "4", "--max-len", "64", "--save-every", "2", "--seed", "3", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_adapter(tmp_path, cli):
    data = _write_chats(tmp_path / "d.jsonl", 16)
    whole = cli.run(*_sft(data, tmp_path / "whole", steps=10))
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = tmp_path / "killed"
    command = [*cli.command, *_sft(data, killed, steps=10)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((killed / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter_config.json").exists()
    resumed = cli.run(*_sft(data, killed, steps=10))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stderr

    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    losses = [json.loads(line)["loss"] for line in open(killed / "train_log.jsonl")]
    assert len(losses) == 10 and losses[-1] < losses[0]


@pytest.mark.slow
def test_cli_errors_and_a_trained_adapter_loads_for_generation(tmp_path, cli):
    from personalm.models.base import SamplingParams
    from personalm.models.registry import load_model

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    run = cli.run(*_sft(bad, tmp_path / "x"), timeout=300)
    assert run.returncode == 2 and "bad.jsonl:1: no assistant turn" in run.stderr and "Traceback" not in run.stderr
    beta = cli.run(*_sft(bad, tmp_path / "y", "--loss", "dpo", "--beta", "0"))
    assert beta.returncode == 2 and "--beta 0.0: must be positive" in beta.stderr and "Traceback" not in beta.stderr

    data = _write_chats(tmp_path / "d.jsonl", 8)
    out = tmp_path / "adapter"
    ok = cli.run(*_sft(data, out, "--quant", "int8"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    again = cli.run(*_sft(data, out), timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    model = load_model(adapter=out)
    text = model.generate([[{"role": "user", "content": "What is rain?"}]], SamplingParams(max_tokens=8))[0].text
    assert text.strip()
    assert json.loads((out / "train_config.json").read_text())["config"]["quant"] == "int8"


@pytest.mark.slow
def test_bench_train_runs_both_trainers_on_the_same_batch(tmp_path: Path, cli) -> None:
    args = ["bench", "train", "--steps", "2", "--batch-size", "1", "--seq-len", "128", "--rank", "2", "--profile",
            "--json"]  # fmt: skip
    summary = cli.json(*args, cwd=tmp_path)
    assert {"ours_tok_s", "trl_tok_s", "speedup", "peak_fraction"} <= set(summary)
    assert summary["ours_tok_s"] > 0 and summary["trl_tok_s"] > 0 and 0 < summary["peak_fraction"] < 1
    assert summary["trl_kept_memory_tok_s"] > 0 and summary["speedup_same_allocator"] > 0
    assert summary["profile"]["steps"] == 4 and summary["profile"]["shares"]["matmul"] > 0.1


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident size from Linux /proc")
def test_freed_memory_is_kept_while_training_and_returned_after() -> None:
    from personalm.train.loop import freed_memory_kept

    before = _rss_mb()
    with freed_memory_kept():
        block = torch.ones(64 * 2**20)  # 256 MiB: glibc would map it fresh and unmap it on free
        del block
        inside = _rss_mb()
    after = _rss_mb()
    assert inside - before > 200  # kept for the next step to reuse
    assert inside - after > 200  # handed back once training is over
