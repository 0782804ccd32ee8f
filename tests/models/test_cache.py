"""The generation cache: hits are free, misses are generated exactly as an uncached call would."""

from personalm.models.base import Generation, SamplingParams, TextModel
from personalm.models.cache import CachedModel, GenerationCache


class CountingModel(TextModel):
    """Records every prompt it is asked to generate; answers with the prompt and its occurrence."""

    model_id = "counting"

    def __init__(self):
        self.calls: list[list[str]] = []

    def generate(self, prompts, params=None, progress=None):
        self.calls.append(list(prompts))
        seen: dict[str, int] = {}
        out = []
        for p in prompts:
            seen[p] = seen.get(p, -1) + 1
            out.append(Generation(f"{p}#{seen[p]}", "stop", 1, 1))
        return out

    def score(self, contexts, continuations):
        raise NotImplementedError


def test_second_run_is_served_from_disk(tmp_path):
    inner = CountingModel()
    model = CachedModel(inner, GenerationCache(tmp_path / "c.sqlite"))
    params = SamplingParams(temperature=1.0, seed=3)
    first = model.generate(["a", "b", "a"], params)
    assert [g.text for g in first] == ["a#0", "b#0", "a#1"]
    reopened = CachedModel(inner, GenerationCache(tmp_path / "c.sqlite"))
    assert reopened.generate(["a", "b", "a"], params) == first
    assert len(inner.calls) == 1


def test_key_covers_params_and_model(tmp_path):
    inner = CountingModel()
    model = CachedModel(inner, GenerationCache(tmp_path / "c.sqlite"))
    model.generate(["a"], SamplingParams(seed=1, temperature=1.0))
    model.generate(["a"], SamplingParams(seed=2, temperature=1.0))
    model.generate(["a"], SamplingParams(seed=1, temperature=1.0, max_tokens=7))
    assert len(inner.calls) == 3


def test_resume_after_partial_run_regenerates_only_missing_occurrences(tmp_path):
    inner = CountingModel()
    model = CachedModel(inner, GenerationCache(tmp_path / "c.sqlite"), chunk_size=2)
    params = SamplingParams(temperature=1.0)
    model.generate(["x", "y"], params)
    out = model.generate(["x", "y", "x", "z"], params)
    assert [g.text for g in out] == ["x#0", "y#0", "x#1", "z#0"]
    # occurrence 1 of "x" is produced by sending "x" twice, as an uncached call would see it.
    assert inner.calls[-1] == ["x", "x", "z"]


def test_chunks_keep_a_prompts_occurrences_together(tmp_path):
    inner = CountingModel()
    model = CachedModel(inner, GenerationCache(tmp_path / "c.sqlite"), chunk_size=2)
    out = model.generate(["a", "b", "a", "a", "c"], SamplingParams(temperature=1.0))
    assert [g.text for g in out] == ["a#0", "b#0", "a#1", "a#2", "c#0"]
    assert inner.calls == [["a", "a", "a"], ["b", "c"]]
    assert sum(len(call) for call in inner.calls) == 5


def test_greedy_duplicates_are_generated_once(tmp_path):
    inner = CountingModel()
    model = CachedModel(inner, GenerationCache(tmp_path / "c.sqlite"))
    out = model.generate(["q", "q", "q"], SamplingParams())
    assert inner.calls == [["q"]] and len(out) == 3


def test_cached_real_model_matches_uncached(embedded_model, tmp_path):
    cached = CachedModel(embedded_model, GenerationCache(tmp_path / "c.sqlite"))
    prompts = ["Say hello.", "Say goodbye.", "Say hello."]
    params = SamplingParams(max_tokens=8, temperature=0.9, seed=5)
    assert cached.generate(prompts, params) == embedded_model.generate(prompts, params)
    assert len(cached.cache) == 3
