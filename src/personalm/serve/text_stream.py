"""Token ids → text deltas for streaming, without ever sending what a stop string will remove.

Decoding token by token breaks multi-byte characters and would leak the first characters of a
stop string before the rest arrives, so each step re-decodes the whole answer and holds back an
incomplete character and any tail that could still grow into a stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from personalm.models.base import apply_stop


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.sent = ""

    def delta(self, token_ids: list[int], finished: bool) -> str:
        """The new text to send after these ids; on the last call everything left (stop-cut)."""
        text, hit = apply_stop(self.decode(token_ids), self.stop)
        if not finished and not hit:
            text = text[: len(text) - self._held_back(text)]
        new = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent += new
        return new

    def _held_back(self, text: str) -> int:
        if text.endswith("\ufffd"):
            return 1
        return max((n for s in self.stop for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0)

    @property
    def text(self) -> str:
        return self.sent
