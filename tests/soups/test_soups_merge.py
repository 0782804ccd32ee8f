"""The soup merge math on tiny random adapters: exact deltas vs PEFT's own merge into full weights."""

from __future__ import annotations

import copy

import pytest
import torch

from personalm.errors import PersonalmError
from personalm.soups.merge import (
    apply_deltas,
    cached_merge,
    exact_deltas,
    exact_factors,
    load_adapter,
    merge_to_dir,
    parse_weights,
    separate_average,
)


def tiny_base() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def make_adapter(base, out, seed: int, rank: int, alpha: int, rslora: bool = False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=False, use_rslora=rslora
    )
    model = get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def soup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_base()
    paths = {
        "expertise.elementary": make_adapter(base, root / "a", 1, rank=4, alpha=8),
        "style.friendly": make_adapter(base, root / "b", 2, rank=2, alpha=16, rslora=True),
        "informativeness.concise": make_adapter(base, root / "c", 3, rank=4, alpha=4),
    }
    adapters = {name: load_adapter(path, name) for name, path in paths.items()}
    return base, paths, adapters


def full_merge_delta(base, path) -> dict[str, torch.Tensor]:
    """PEFT's merge_and_unload of one adapter into a copy of the base: the reference ΔW."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(path)).merge_and_unload()
    before = dict(base.named_parameters())
    return {n.removesuffix(".weight"): p.detach() - before[n].detach() for n, p in merged.named_parameters()}


def test_exact_soup_equals_sum_of_full_weight_merges(soup):
    base, paths, adapters = soup
    weights = {"expertise.elementary": 0.5, "style.friendly": 0.3, "informativeness.concise": -0.2}
    reference = {name: full_merge_delta(base, paths[name]) for name in weights}
    deltas = exact_deltas(adapters, weights)
    assert len(deltas) == 2 * 7
    for module, delta in deltas.items():
        expected = sum(w * reference[n][module] for n, w in weights.items())
        torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)


def test_soup_applied_to_base_matches_full_weight_model(soup):
    base, paths, adapters = soup
    weights = {"expertise.elementary": 1.0, "style.friendly": 1.0}
    model = copy.deepcopy(base)
    apply_deltas(model, exact_deltas(adapters, weights))
    reference = {name: full_merge_delta(base, paths[name]) for name in weights}
    ids = torch.tensor([[1, 5, 9, 3]])
    manual = copy.deepcopy(base)
    apply_deltas(
        manual,
        {m: reference["expertise.elementary"][m] + reference["style.friendly"][m] for m in reference["style.friendly"]},
    )
    torch.testing.assert_close(model(ids).logits, manual(ids).logits, rtol=1e-5, atol=1e-5)


def test_saved_exact_soup_is_a_peft_adapter_with_the_same_weights(soup, tmp_path):
    from peft import PeftModel

    base, _, adapters = soup
    weights = {"expertise.elementary": 0.5, "style.friendly": 0.5}
    out = merge_to_dir(adapters, weights, tmp_path / "soup")
    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(out)).merge_and_unload()
    expected = copy.deepcopy(base)
    apply_deltas(expected, exact_deltas(adapters, weights))
    for (name, got), (_, want) in zip(merged.named_parameters(), expected.named_parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    factors = exact_factors(adapters, weights)
    assert next(iter(factors.values())).A.shape[0] == 4 + 2


def test_averaging_a_and_b_separately_is_not_the_average_of_deltas(soup):
    _, _, adapters = soup
    same_rank = {k: adapters[k] for k in ("expertise.elementary", "informativeness.concise")}
    weights = {"expertise.elementary": 0.5, "informativeness.concise": 0.5}
    exact = exact_deltas(same_rank, weights)
    approx = separate_average(same_rank, weights)
    module = next(iter(exact))
    gap = (exact[module] - approx[module]).norm() / exact[module].norm()
    assert gap > 0.1


def test_cache_reuses_a_merge_and_keys_on_weights(soup, tmp_path):
    _, _, adapters = soup
    first = cached_merge(adapters, {"expertise.elementary": 0.5}, cache_dir=tmp_path)
    again = cached_merge(adapters, {"expertise.elementary": 0.5}, cache_dir=tmp_path)
    other = cached_merge(adapters, {"expertise.elementary": 0.25}, cache_dir=tmp_path)
    assert first == again != other
    assert (first / "soup.json").stat().st_mtime_ns == (again / "soup.json").stat().st_mtime_ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("expertise.elementary", "expected NAME=NUMBER"),
        ("expertise.elementary=lots", "is not a number"),
        ("expertise.toddler=1", "unknown preference 'expertise.toddler'"),
        ("expertise.elementary=0,style.friendly=0", "all merge weights are zero"),
        ("", "no merge weights"),
    ],
)
def test_bad_weights_are_one_clear_error(text, message):
    with pytest.raises(PersonalmError, match=message):
        parse_weights(text, ["expertise.elementary", "style.friendly"])


def test_weights_parse():
    assert parse_weights("a.x=0.5, b.y=-1", ["a.x", "b.y"]) == {"a.x": 0.5, "b.y": -1.0}


def test_soup_applied_restores_the_base_bit_for_bit(soup):
    from personalm.soups.merge import soup_applied

    base, _, adapters = soup

    class Holder:
        model = copy.deepcopy(base)
        model_id = "tiny"
        changed = 0

        def weights_changed(self):
            self.changed += 1

    holder = Holder()
    before = {n: p.detach().clone() for n, p in holder.model.named_parameters()}
    with soup_applied(holder, exact_deltas(adapters, {"style.friendly": 1.0}), "x") as model:
        assert model.model_id == "tiny+soup:x"
        assert any(not torch.equal(p, before[n]) for n, p in model.model.named_parameters())
    assert holder.model_id == "tiny"
    assert holder.changed == 2
    for name, param in holder.model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_peft_combination_types_run_through_peft(soup, tmp_path, monkeypatch):
    """cat through PEFT equals the exact soup; linear (A and B averaged separately) does not."""
    from peft import PeftModel

    import personalm.models.registry as registry

    base, paths, adapters = soup
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    monkeypatch.setattr(registry, "resolve_local", lambda name: base_dir)
    weights = {"expertise.elementary": 0.5, "informativeness.concise": 0.5}
    exact = copy.deepcopy(base)
    apply_deltas(exact, exact_deltas(adapters, weights))
    for method, equal in (("cat", True), ("linear", False)):
        out = merge_to_dir(adapters, weights, tmp_path / method, method=method)
        merged = PeftModel.from_pretrained(copy.deepcopy(base), str(out)).merge_and_unload()
        w_got = merged.model.layers[0].self_attn.q_proj.weight
        w_exact = exact.model.layers[0].self_attn.q_proj.weight
        assert torch.allclose(w_got, w_exact, atol=1e-5) is equal, method


def test_fused_stacked_factors_equal_the_dense_soup(soup):
    from personalm.soups.merge import apply_factors

    base, _, adapters = soup
    weights = {"expertise.elementary": 0.4, "style.friendly": -0.7, "informativeness.concise": 0.2}
    dense, fused = copy.deepcopy(base), copy.deepcopy(base)
    apply_deltas(dense, exact_deltas(adapters, weights))
    apply_factors(fused, exact_factors(adapters, weights))
    for (name, a), (_, b) in zip(dense.named_parameters(), fused.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
