"""The continuous batcher keeps one request's failure to that request (on a stand-in kernel whose
next token is the last one plus one, so every answer is known in advance)."""

from __future__ import annotations

import pytest
import torch

from personalm.models.base import SamplingParams
from personalm.models.batching import ContinuousBatcher, DecodeRequest

VOCAB = 50
POISON = 13
GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


class CountingKernel:
    """Logits that pick (last token + 1) % VOCAB; a prefill with POISON in any prompt fails, as a
    decode does while `decode_fails` is set."""

    def __init__(self, slots: int = 4, max_len: int = 32):
        self.slots, self.max_len = slots, max_len
        self.decode_fails = False

    def prefill(self, first_slot: int, sequences: list[list[int]], offset: int = 0) -> torch.Tensor:
        if any(POISON in s for s in sequences):
            raise IndexError("index is out of bounds for dimension with size 0")
        return self._next([s[-1] for s in sequences])

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
