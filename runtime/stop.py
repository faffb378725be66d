"""Finding a request's stop strings in its text as it is decoded, piece by piece."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class StopHit:
    """A stop string found in the accumulated text (everything fed so far).

    ``keep``: how many characters of the accumulated text to keep (the stop string starts there); ``end``: where
    it ends (``text[:end]`` is what ``no_stop_trim`` keeps); ``kept_text``: ``text[:keep]``."""

    stop: str
    keep: int
    end: int
    kept_text: str


class StopMatcher:
    """Watches one request's decoded text for its stop strings.

    Feed it each newly decoded piece. The first stop string to *complete* wins (the one whose end comes first;
    of those ending at the same place, the one starting first), which makes the result the same however the text
    is split into pieces: it equals ``min((text.find(s) + len(s), text.find(s)) for s found in text)`` over the
    whole text. Each feed looks only at the last ``longest stop - 1`` characters of earlier text plus the new
    piece, since no stop string occurred before.

    ``holdback`` is how many trailing characters of the text could be the beginning of a stop string: a streamer
    should not emit them yet, since the next piece may complete a stop and they would have to be trimmed."""

    def __init__(self, stop_strings: Iterable[str]) -> None:
        self.stops = tuple(dict.fromkeys(s for s in stop_strings if s))
        self._context = max(map(len, self.stops), default=1) - 1  # earlier characters a match can reach back
        self._prefixes = frozenset(s[:n] for s in self.stops for n in range(1, len(s)))
        self._pieces: list[str] = []
        self._length = 0
        self._tail = ""  # the accumulated text's last `_context` characters
        self.holdback = 0
        self.hit: StopHit | None = None

    @property
    def length(self) -> int:
        """Characters fed so far."""
        return self._length

    @property
    def text(self) -> str:
        """Everything fed so far."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def feed(self, new_text: str) -> StopHit | None:
        """Append ``new_text``; return the stop found, if any. Once a stop is found, later feeds are ignored and
        return the same hit."""
        if self.hit is not None:
            return self.hit
        if not new_text:
            return None
        window = self._tail + new_text
        offset = self._length - len(self._tail)  # position of window[0] in the accumulated text
        self._pieces.append(new_text)
        self._length += len(new_text)
        best: tuple[int, int, str] | None = None
        for stop in self.stops:
            start = window.find(stop)  # the first occurrence also ends first; all end inside new_text
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        if best is not None:
            end, start, stop = best
            self.hit = StopHit(stop, offset + start, offset + end, self.text[: offset + start])
            self.holdback = 0
            return self.hit
        self._tail = window[max(0, len(window) - self._context) :]
        self.holdback = next(
            (n for n in range(len(self._tail), 0, -1) if self._tail[len(self._tail) - n :] in self._prefixes), 0
        )
        return None
