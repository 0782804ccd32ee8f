"""The exact merge math and the one way adapters go into a model, on tiny random adapters, against
PEFT's own merge into full weights."""

from __future__ import annotations

import copy

import pytest
import torch

from personalm.adapters import (
    apply_deltas,
    apply_factors,
    check_shapes,
    exact_deltas,
    exact_factors,
    load_adapter,
    merge_into,
    separate_average,
    soup_applied,
)
from personalm.errors import PersonalmError


@pytest.fixture(scope="module")
def soup(peft_soup):
    base, folders = peft_soup
    paths = dict(zip(('a', 'b', 'c'), folders, strict=True))
    return base, paths, {name: load_adapter(path, name) for name, path in paths.items()}


def peft_merged(base, path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(base), str(path)).merge_and_unload()


def full_merge_delta(base, path) -> dict[str, torch.Tensor]:
    """PEFT's merge_and_unload of one adapter into a copy of the base: the reference ΔW."""
    before = dict(base.named_parameters())
    merged = peft_merged(base, path)
    return {n.removesuffix(".weight"): p.detach() - before[n].detach() for n, p in merged.named_parameters()}


def test_exact_soup_equals_sum_of_full_weight_merges(soup):
    base, paths, adapters = soup
    weights = {"a": 0.5, "b": 0.3, "c": -0.2}
    reference = {name: full_merge_delta(base, paths[name]) for name in weights}
    deltas = exact_deltas(adapters, weights)
    assert len(deltas) == 2 * 7
    for module, delta in deltas.items():
        expected = sum(w * reference[n][module] for n, w in weights.items())
        torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)


def test_soup_applied_to_base_matches_full_weight_model(soup):
    base, paths, adapters = soup
    weights = {"a": 1.0, "b": 1.0}
    model = copy.deepcopy(base)
    apply_deltas(model, exact_deltas(adapters, weights))
    reference = {name: full_merge_delta(base, paths[name]) for name in weights}
    ids = torch.tensor([[1, 5, 9, 3]])
    manual = copy.deepcopy(base)
    apply_deltas(manual, {m: reference["a"][m] + reference["b"][m] for m in reference["b"]})
    torch.testing.assert_close(model(ids).logits, manual(ids).logits, rtol=1e-5, atol=1e-5)


def test_merge_into_equals_peft_merge_and_unload(soup):
    base, paths, _ = soup
    ours = merge_into(copy.deepcopy(base), paths["b"])
    for (name, got), (_, want) in zip(
        ours.named_parameters(), peft_merged(base, paths["b"]).named_parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_merge_into_hands_dora_to_peft(tmp_path, tiny_base, peft_adapter):
    """DoRA is not a sum of low-rank deltas: PEFT merges it, with the same result as PEFT alone."""
    base = tiny_base()
    path = peft_adapter(base, tmp_path / "dora", 4, rank=2, alpha=4, use_dora=True)
    ours = merge_into(copy.deepcopy(base), path)
    for (name, got), (_, want) in zip(ours.named_parameters(), peft_merged(base, path).named_parameters(), strict=True):
        torch.testing.assert_close(got, want, msg=name)


def test_averaging_a_and_b_separately_is_not_the_average_of_deltas(soup):
    _, _, adapters = soup
    same_rank = {k: adapters[k] for k in ("a", "c")}
    weights = {"a": 0.5, "c": 0.5}
    exact = exact_deltas(same_rank, weights)
    approx = separate_average(same_rank, weights)
    module = next(iter(exact))
    gap = (exact[module] - approx[module]).norm() / exact[module].norm()
    assert gap > 0.1


def test_fused_stacked_factors_equal_the_dense_soup(soup):
    base, _, adapters = soup
    weights = {"a": 0.4, "b": -0.7, "c": 0.2}
    dense, fused = copy.deepcopy(base), copy.deepcopy(base)
    apply_deltas(dense, exact_deltas(adapters, weights))
    apply_factors(fused, exact_factors(adapters, weights))
    for (name, a), (_, b) in zip(dense.named_parameters(), fused.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert next(iter(exact_factors(adapters, {"a": 0.5, "b": 0.5}).values())).A.shape[0] == 4 + 2


@pytest.mark.parametrize(
    ("weights", "message"),
    [({}, "no merge weights"), ({"a": 0.0}, "all merge weights are zero"), ({"z": 1.0}, "no adapter named 'z'")],
)
def test_bad_merge_weights_are_one_clear_error(soup, weights, message):
    with pytest.raises(PersonalmError, match=message):
        exact_factors(soup[2], weights)


def test_the_shape_check_names_the_adapter_and_the_module(soup, tiny_base):
    _, paths, adapters = soup
    other = tiny_base()
    other.model.layers[0].self_attn.q_proj = torch.nn.Linear(16, 8, bias=False)
    before = {n: p.detach().clone() for n, p in other.named_parameters()}
    with pytest.raises(PersonalmError, match=r"q_proj'.*\(16, 16\) != weight \(8, 16\)") as err:
        apply_factors(other, adapters["a"].modules, str(paths["a"]))
    assert str(paths["a"]) in str(err.value)
    assert all(torch.equal(p, before[n]) for n, p in other.named_parameters())  # nothing touched
    del other.model.layers[1]
    with pytest.raises(PersonalmError, match="base model has no module 'model.layers.1"):
        check_shapes(other, {m: f for m, f in adapters["a"].modules.items() if ".1." in m})


def test_soup_applied_restores_the_base_bit_for_bit(soup):
    base, _, adapters = soup

    class Holder:
        model = copy.deepcopy(base)
        model_id = "tiny"
        changed = 0

        def weights_changed(self):
            self.changed += 1

    holder = Holder()
    before = {n: p.detach().clone() for n, p in holder.model.named_parameters()}
    with soup_applied(holder, exact_deltas(adapters, {"b": 1.0}), "x") as model:
        assert model.model_id == "tiny+soup:x"
        assert any(not torch.equal(p, before[n]) for n, p in model.model.named_parameters())
    assert holder.model_id == "tiny"
    assert holder.changed == 2
    for name, param in holder.model.named_parameters():
        assert torch.equal(param, before[name]), name
