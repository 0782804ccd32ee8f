"""Decoding from several (model, prompt) streams on the real embedded model: the proxy-tuning
formula token by token, the kernel and forward paths agreeing, seeds per row, the cache, bad input."""

import pytest
import torch

from personalm.errors import PersonalmError
from personalm.models.base import Generation, SamplingParams
from personalm.models.cache import CachedModel, GenerationCache
from personalm.models.fusion import ProxyTuned, Stream, fused_generate, local_model
from personalm.models.local import LocalModel
from tests.conftest import random_adapter

SERVED = [
    [{"role": "system", "content": "You are Abraham Lincoln. Things you have said: \"A house divided cannot stand.\""},
     {"role": "user", "content": "What is liberty?"}],
    [{"role": "system", "content": "You are Abraham Lincoln."}, {"role": "user", "content": "Tell me about the war."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Why are speeches short?"}],
]  # fmt: skip
PLAIN = [[{"role": "system", "content": "You are Abraham Lincoln."}, chat[-1]] for chat in SERVED]
PAIRS = list(zip(SERVED, PLAIN, strict=True))


@pytest.fixture(scope="module")
def expert(embedded_model, tmp_path_factory):
    """The embedded model with a random LoRA adapter merged: a different expert on the same vocabulary."""
    adapter = random_adapter(embedded_model.model, tmp_path_factory.mktemp("adapter"), seed=5, rank=4, scale=0.5)
    return LocalModel(embedded_model.path, adapter=adapter, name="expert")


def last_logits(model: LocalModel, chat) -> torch.Tensor:
    ids = torch.tensor([model.encode_prompt(chat)])
    with torch.inference_mode():
        return model.model(input_ids=ids).logits[0, -1].float()


def test_an_expert_that_is_its_base_adds_nothing(embedded_model):
    greedy = SamplingParams(max_tokens=24)
    base = [g.text for g in embedded_model.generate(SERVED, greedy)]
    assert [g.text for g in ProxyTuned(embedded_model, embedded_model, 1.0).generate(PAIRS, greedy)] == base
    assert [g.text for g in ProxyTuned(embedded_model, embedded_model, 0.0).generate(PAIRS, greedy)] == base


@pytest.mark.parametrize("weight", [0.5, 1.0, 2.0])
def test_each_token_comes_from_the_weighted_sum(embedded_model, expert, weight):
    """The first token of every row is the argmax of base(served) + w · (expert(plain) − base(plain))."""
    got = ProxyTuned(embedded_model, expert, weight).generate(PAIRS, SamplingParams(max_tokens=1))
    for (served, plain), generation in zip(PAIRS, got, strict=True):
        logits = last_logits(embedded_model, served) + weight * (
            last_logits(expert, plain) - last_logits(embedded_model, plain)
        )
        assert generation.text == embedded_model.decode_ids([int(logits.argmax())])
    moved = ProxyTuned(embedded_model, expert, 2.0).generate(PAIRS, SamplingParams(max_tokens=16))
    assert [g.text for g in moved] != [g.text for g in embedded_model.generate(SERVED, SamplingParams(max_tokens=16))]


def test_the_fused_distribution_scores_its_own_tokens(embedded_model, expert):
    """`score` is the log-softmax of the same sum: the expert as its own base scores as the base on
    the served chat, and a greedy answer's every token is the fused distribution's most likely one."""
    same = ProxyTuned(embedded_model, embedded_model, 1.0).score(PAIRS[:1], ["Liberty is freedom."])[0]
    alone = embedded_model.score(SERVED[:1], ["Liberty is freedom."])[0]
    assert same.tokens == alone.tokens and same.logprobs == pytest.approx(alone.logprobs, abs=1e-3)
    proxy = ProxyTuned(embedded_model, expert, 1.5)
    answer = proxy.generate(PAIRS[:1], SamplingParams(max_tokens=6))[0].text
    scored = proxy.score(PAIRS[:1], [answer])[0]
    assert len(scored.logprobs) >= 1 and all(v <= 0 for v in scored.logprobs)
    ids = embedded_model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    first = last_logits(embedded_model, SERVED[0]) + 1.5 * (
        last_logits(expert, PLAIN[0]) - last_logits(embedded_model, PLAIN[0])
    )
    assert scored.logprobs[0] == pytest.approx(float(torch.log_softmax(first, -1)[ids[0]]), abs=1e-3)
    assert proxy.score(PAIRS[:1], [""])[0].logprobs == []


def test_kernel_and_forward_paths_agree(embedded_model, expert):
    streams = [Stream(embedded_model, SERVED, 1.0), Stream(expert, PLAIN, 1.0), Stream(embedded_model, PLAIN, -1.0)]
    on_kernel = fused_generate(streams, SamplingParams(max_tokens=16))
    on_forward = fused_generate(streams, SamplingParams(max_tokens=16), batch=2, forward=True)
    agree = [a.text == b.text for a, b in zip(on_kernel, on_forward, strict=True)]
    assert sum(agree) >= len(agree) - 1, (on_kernel, on_forward)
    assert all(g.completion_tokens <= 16 and g.prompt_tokens > 0 for g in on_forward)


def test_a_sampled_row_does_not_depend_on_its_batch_and_the_cache_keeps_it(embedded_model, expert, tmp_path):
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=3)
    proxy = ProxyTuned(embedded_model, expert, 1.0)
    together = proxy.generate(PAIRS, params)
    alone = proxy.generate(PAIRS[1:2], params)
    assert alone[0].text == together[1].text
    cached = CachedModel(proxy, GenerationCache(tmp_path / "g.db"))
    assert [g.text for g in cached.generate(PAIRS, params)] == [g.text for g in together]
    proxy.generate = lambda *a, **k: pytest.fail("served from the cache")  # type: ignore[method-assign]
    assert [g.text for g in cached.generate(PAIRS, params)] == [g.text for g in together]
    assert "proxy:" in cached.model_id and "+1*(" in cached.model_id


class NotLocal:
    model_id = "openai:x@http://127.0.0.1:1/v1"

    def generate(self, prompts, params=None, progress=None):
        return [Generation("x", "stop", 1, 1) for _ in prompts]


def test_bad_input_is_one_clear_error(embedded_model):
    with pytest.raises(PersonalmError, match="needs local models"):
        local_model(NotLocal())
    with pytest.raises(PersonalmError, match=r"weight 5: expected a weight in \[0, 4\]"):
        ProxyTuned(embedded_model, embedded_model, 5.0)
    proxy = ProxyTuned(embedded_model, embedded_model, 1.0)
    with pytest.raises(PersonalmError, match="pairs"):
        proxy.generate(SERVED)
    with pytest.raises(PersonalmError, match="pairs"):
        proxy.score(SERVED, ["x"] * 3)
    with pytest.raises(PersonalmError, match="one prompt per output row"):
        fused_generate([Stream(embedded_model, SERVED, 1.0), Stream(embedded_model, PLAIN[:1], 1.0)])
    with pytest.raises(PersonalmError, match="at least one stream"):
        fused_generate([])
    with pytest.raises(PersonalmError, match="does not fit the context"):
        proxy.generate([("word " * 9000, PLAIN[0])], SamplingParams(max_tokens=4))
