"""The continuous batcher keeps one request's failure to that request (on a stand-in kernel whose
next token is the last one plus one, so every answer is known in advance)."""

from __future__ import annotations

import pytest
import torch

from personalm.models.base import SamplingParams
from personalm.models.batching import MIN_SHARED_PREFIX, ContinuousBatcher, DecodeRequest, length_groups

VOCAB = 50
POISON = 13
GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


class CountingKernel:
    """Logits that pick (last token + 1) % VOCAB; a prefill with POISON in any prompt fails, as a
    decode does while `decode_fails` is set."""

    def __init__(self, slots: int = 4, max_len: int = 32):
        self.slots, self.max_len = slots, max_len
        self.decode_fails = False
        self.prefills: list[tuple[list[int], int]] = []  # (lengths, offset) of each prefill pass

    def prefill(self, first_slot: int, sequences: list[list[int]], offset: int = 0) -> torch.Tensor:
        if any(POISON in s for s in sequences):
            raise IndexError("index is out of bounds for dimension with size 0")
        self.prefills.append(([len(s) for s in sequences], offset))
        return self._next([s[-1] for s in sequences])

    def save_prefix(self, slot: int, length: int) -> list:
        return [length]

    def load_prefix(self, prefix: list, first_slot: int, count: int) -> None:
        pass

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.decode_fails:
            raise RuntimeError("decode failed")
        return self._next(tokens.tolist())

    def move_slot(self, source: int, target: int, length: int) -> None:
        pass

    @staticmethod
    def _next(last: list[int]) -> torch.Tensor:
        return torch.nn.functional.one_hot((torch.tensor(last) + 1) % VOCAB, VOCAB).float()


def batcher(kernel: CountingKernel) -> ContinuousBatcher:
    return ContinuousBatcher(kernel, eos_ids=set(), decode_text=lambda ids: " ".join(map(str, ids)), refill_at=1)


def drain(engine: ContinuousBatcher) -> dict[int, tuple[list[int], str, str | None]]:
    done = {}
    while engine.busy:
        for event in engine.step():
            if event.finish_reason is not None:
                done[event.handle] = (event.token_ids, event.finish_reason, event.error)
    return done


def test_a_prompt_that_fails_prefill_fails_alone():
    engine = batcher(CountingKernel())
    good, bad, other = (engine.submit(DecodeRequest(p, None, GREEDY)) for p in ([1, 2], [POISON], [7]))
    done = drain(engine)
    assert done[good][:2] == ([3, 4, 5, 6], "length") and done[other][:2] == ([8, 9, 10, 11], "length")
    assert done[bad][1] == "error" and "out of bounds" in done[bad][2]


def test_a_failed_decode_ends_its_rows_and_the_queue_still_runs():
    kernel = CountingKernel()
    engine = batcher(kernel)
    running = engine.submit(DecodeRequest([1], None, GREEDY))
    engine.step()
    kernel.decode_fails = True
    failed = {e.handle: e for e in engine.step()}
    assert failed[running].finish_reason == "error" and "decode failed" in failed[running].error
    kernel.decode_fails = False
    later = engine.submit(DecodeRequest([20], None, GREEDY))
    assert drain(engine)[later][:2] == ([21, 22, 23, 24], "length")


def test_an_empty_prompt_is_refused_at_submit():
    with pytest.raises(ValueError, match="empty prompt"):
        batcher(CountingKernel()).submit(DecodeRequest([], None, GREEDY))


def test_a_failing_row_fails_a_whole_run():
    engine = batcher(CountingKernel())
    with pytest.raises(RuntimeError, match="out of bounds"):
        engine.run([DecodeRequest([1], None, GREEDY), DecodeRequest([POISON], None, GREEDY)])
    assert not engine.busy


def test_length_groups_split_only_where_padding_costs_more_than_a_pass():
    assert length_groups([40] * 32) == [list(range(32))]
    lengths = [30, 200, 31, 29, 198]
    groups = length_groups(lengths, pass_cost=40)
    assert groups == [[3, 0, 2], [4, 1]]  # shortest first; each index once
    assert length_groups([30, 35], pass_cost=40) == [[0, 1]]  # 5 tokens of padding < another pass


def test_shared_prompt_start_is_prefilled_once_and_answers_do_not_change():
    start = list(range(1, MIN_SHARED_PREFIX + 3))
    prompts = [start + [20 + i] * (i + 1) for i in range(3)]
    engine = batcher(CountingKernel(slots=8))
    handles = [engine.submit(DecodeRequest(prompt, None, GREEDY)) for prompt in prompts]
    done = drain(engine)
    assert [done[h][0] for h in handles] == [[21, 22, 23, 24], [22, 23, 24, 25], [23, 24, 25, 26]]
    passes = engine.kernel.prefills
    assert passes[0] == ([len(start)], 0)  # the shared start, once
    assert all(offset == len(start) for _, offset in passes[1:])
    assert sorted(n for lengths, _ in passes[1:] for n in lengths) == [1, 2, 3]


def test_a_prompt_arriving_later_reuses_the_cached_start_until_it_is_forgotten():
    start = list(range(1, MIN_SHARED_PREFIX + 3))
    engine = batcher(CountingKernel(slots=8))
    for tail in ([30], [31]):
        engine.submit(DecodeRequest(start + tail, None, GREEDY))
        drain(engine)
    assert engine.prefix is not None and engine.prefix.ids == start
    engine.kernel.prefills.clear()
    engine.submit(DecodeRequest(start + [32, 33], None, GREEDY))
    drain(engine)
    assert engine.kernel.prefills == [([2], len(start))]
    engine.forget_prefix()  # the weights were edited: the cached KV is stale
    engine.kernel.prefills.clear()
    engine.submit(DecodeRequest(start + [34], None, GREEDY))
    drain(engine)
    assert engine.kernel.prefills == [([len(start) + 1], 0)]


def test_admit_hands_out_first_tokens_before_any_decode():
    engine = batcher(CountingKernel(slots=4))
    running = engine.submit(DecodeRequest([1], None, GREEDY))
    engine.admit()
    engine.decode()
    new = engine.submit(DecodeRequest([40, 41], None, GREEDY))
    assert engine.can_admit
    events = engine.admit()
    assert [(e.handle, e.token_ids) for e in events] == [(new, [42])]
    assert not engine.can_admit
    assert {e.handle: e.token_ids for e in engine.decode()} == {running: [2, 3, 4], new: [42, 43]}
