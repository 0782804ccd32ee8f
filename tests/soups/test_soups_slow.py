"""A tiny end-to-end soup on the embedded model: collect, DPO-train two poles, merge, generate."""

from __future__ import annotations

import json

import pytest
import torch

from personalm.adapters import exact_deltas, load_adapter, soup_applied
from personalm.eval.judges import ProgrammaticJudge
from personalm.models.base import SamplingParams
from personalm.models.registry import load_model
from personalm.soups.collect import CollectConfig, collect
from personalm.soups.dpo import DPOSettings, train_adapter
from personalm.soups.merge import load_soup
from personalm.soups.preferences import Preferences

pytestmark = pytest.mark.slow


def test_tiny_soup_end_to_end(tmp_path):
    prefs = Preferences.default()
    with load_model() as policy:
        sizes = collect(policy, ProgrammaticJudge(), prefs, ["Why is the sky blue?", "What is DNA?"], tmp_path / "data",
                        CollectConfig(samples=3, max_pairs=3, max_tokens=24), log=lambda _: None)  # fmt: skip
    assert sum(sizes.values()) > 0
    poles = [k for k, n in sizes.items() if n and k != "pmorl"][:2]
    settings = DPOSettings(max_steps=1, batch_size=2, max_length=96, rank=4, alpha=8, lr=1e-3, threads=1)
    for key in poles:
        summary = train_adapter(
            tmp_path / "data" / "dpo" / f"{key}.jsonl", tmp_path / key, settings, log=lambda _: None
        )
        assert summary["steps"] == 1
        assert json.loads((tmp_path / key / "dpo.json").read_text())["pairs"] == sizes[key]
    weights = {poles[0]: 0.5, poles[-1]: 0.5}
    adapters = {k: load_adapter(tmp_path / k, k) for k in weights}
    assert all(torch.count_nonzero(d) for d in exact_deltas(adapters, weights).values())
    with load_soup(adapters, weights) as soup:
        text = soup.generate(["Why is the sky blue?"], SamplingParams(max_tokens=8))[0].text
        assert "+soup:" in soup.model_id
    assert isinstance(text, str)


def test_soup_applied_changes_generation_and_restores_it():
    params = SamplingParams(max_tokens=6)
    with load_model() as model:
        before = model.generate(["Name a colour."], params)[0].text
        weight = model.model.get_submodule("model.layers.0.mlp.down_proj").weight
        delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5
        with soup_applied(model, {"model.layers.0.mlp.down_proj": delta}, "noise"):
            during = model.generate(["Name a colour."], params)[0].text
        after = model.generate(["Name a colour."], params)[0].text
    assert during != before
    assert after == before


def test_demo_step_answers_under_two_opposite_combinations(tmp_path):
    from rich.console import Console

    from personalm.demo import soups as demo

    with load_model() as model, open(tmp_path / "console.txt", "w") as sink:
        demo.run(Console(file=sink), model, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "soups" / "answers.jsonl").read_text().splitlines()]
    assert [sorted(r["weights"]) for r in rows] == [sorted(c) for c in demo.OPPOSITES]
    assert all(abs(sum(r["weights"].values()) - 1) < 1e-9 and r["answer"].strip() for r in rows)
    assert all((tmp_path / "soups" / "adapters" / k / "adapter_config.json").is_file() for k in rows[0]["weights"])
