"""The operator profile behind `bench train --profile` and `bench generate --profile`."""

from __future__ import annotations

import pytest
import torch

from personalm.studies.bench.profile import kind_of, profile_steps, summarise


@pytest.mark.parametrize(
    ("op", "kind"),
    [
        ("mkldnn::_linear_pointwise", "matmul"),
        ("aten::addmm", "matmul"),
        ("aten::bmm", "attention"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
        ("aten::bernoulli_", "dropout masks"),
        ("aten::_log_softmax", "softmax and loss"),
        ("aten::_fused_rms_norm", "normalisation"),
        ("aten::_foreach_mul_", "optimizer"),
        ("aten::copy_", "copy and layout"),
        ("aten::silu", "elementwise"),
        ("ProfilerStep*", "other"),
    ],
)
def test_operators_fall_into_their_kind(op: str, kind: str) -> None:
    assert kind_of(op) == kind


def test_only_the_steps_after_the_skipped_ones_are_profiled() -> None:
    a, w = torch.randn(64, 256), torch.randn(128, 256)
    calls = {"steps": 0}

    def run(step) -> None:
        for number in range(5):
            if number < 2:
                torch.sort(torch.randn(4096))  # only in the skipped steps
            torch.nn.functional.linear(a, w)
            calls["steps"] += 1
            step()

    events = profile_steps(run, skip=2, active=3)
    names = {event.key: event.count for event in events}
    assert "aten::sort" not in names
    linear_calls = sum(count for name, count in names.items() if kind_of(name) == "matmul" and "linear" in name)
    assert linear_calls == 3
    summary = summarise(events, flops=3 * 2 * 64 * 256 * 128)
    assert summary["shares"]["matmul"] > 0 and abs(sum(summary["shares"].values()) - 1) < 0.01
    assert summary["matmul_gflops"] > 0
    assert summary["top_ops"][0]["share"] >= summary["top_ops"][-1]["share"]
