"""Soups on tiny random adapters: the saved exact soup, the merge cache, the user's weights, and PEFT's
combination types. The merge math itself is tested with the adapter layer (tests/adapters)."""

from __future__ import annotations

import copy

import pytest
import torch

from personalm.adapters import apply_deltas, exact_deltas, exact_factors, load_adapter
from personalm.errors import PersonalmError
from personalm.soups.merge import cached_merge, merge_to_dir, parse_weights


@pytest.fixture(scope="module")
def soup(peft_soup):
    base, folders = peft_soup
    paths = dict(zip(('expertise.elementary', 'style.friendly', 'informativeness.concise'), folders, strict=True))
    return base, paths, {name: load_adapter(path, name) for name, path in paths.items()}


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


def test_merge_to_dir_replaces_only_an_earlier_merge(soup, tmp_path):
    _, _, adapters = soup
    weights = {"expertise.elementary": 1.0}
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(PersonalmError, match="exists and is not a folder"):
        merge_to_dir(adapters, weights, target)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("keep")
    with pytest.raises(PersonalmError, match="holds no adapter"):
        merge_to_dir(adapters, weights, tmp_path / "folder")
    first = merge_to_dir(adapters, weights, tmp_path / "soup")
    assert merge_to_dir(adapters, {"style.friendly": 1.0}, first) == first
    assert target.read_text() == "keep" and (tmp_path / "folder" / "x.txt").read_text() == "keep"


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
