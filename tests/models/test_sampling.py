import torch

from personalm.models.base import SamplingParams, apply_stop
from personalm.models.sampling import choose_tokens, filter_logits, row_generator


def test_top_k_keeps_only_k_best():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    out = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]


def test_top_p_keeps_smallest_nucleus_and_always_the_best():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    tiny = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.01))
    assert torch.isfinite(tiny).tolist() == [[True, False, False, False]]


def test_greedy_is_argmax_and_sampling_follows_each_rows_stream():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    assert choose_tokens(logits, SamplingParams(), [None] * 3).tolist() == logits.argmax(-1).tolist()
    params = SamplingParams(temperature=1.0, seed=7)
    draw = lambda: choose_tokens(logits, params, [row_generator(7, f"p{i}", 0) for i in range(3)])  # noqa: E731
    assert draw().tolist() == draw().tolist()
    # A row's sample does not depend on its neighbours.
    alone = choose_tokens(logits[1:2], params, [row_generator(7, "p1", 0)])
    assert alone.item() == draw()[1].item()


def test_apply_stop_cuts_at_earliest_stop():
    assert apply_stop("abc. def\nghi", (".", "\n")) == ("abc", True)
    assert apply_stop("abc", ("x",)) == ("abc", False)


def test_sampling_params_validate():
    import pytest

    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
