"""API speculative execution (``@function(num_api_spec_tokens=N)``) for black-box APIs that charge per request.

A gen of such a program asks for ``max(max_tokens, N)`` tokens without its stop strings. What the model wrote
past the gen's stop is kept (`SpeculationStore.keep`), keyed by the conversation it continues; a later gen whose
prompt is that text so far plus constants the model happened to write too (``"\\nBirthday:"``) is answered from
it (`SpeculationStore.take`) without a request, up to its own first stop string.

A chat model cannot continue a half-written assistant turn, so for chat APIs the first gen of a turn asks for the
whole turn, and later gens of the turn are answered only from what the model wrote, when it matches the
program's constants (as SGLang's chat speculation does). Speculated gens end at a stop string; a gen without
stop strings is answered only when the model finished its answer there.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence


@dataclass(frozen=True)
class Speculated:
    """Text written after ``text`` (the prompt, or the turn's content so far) in one request; ``finished``: the
    model ended there itself (not at the token limit)."""

    text: str
    continuation: str
    finished: bool


class SpeculationStore:
    """The most recent speculations of one backend (``capacity`` of them), safe to use from any thread."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._entries: OrderedDict[tuple[Hashable, str], Speculated] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, context: Hashable, speculated: Speculated) -> None:
        with self._lock:
            self._entries[(context, speculated.text)] = speculated
            self._entries.move_to_end((context, speculated.text))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def written(self, context: Hashable, text: str) -> str | None:
        """What the model wrote after exactly ``text`` in ``context``, if a speculation from there is kept."""
        with self._lock:
            speculated = self._entries.get((context, text))
        return None if speculated is None else speculated.continuation

    def take(self, context: Hashable, text: str, stops: Sequence[str]) -> str | None:
        """The gen after ``text`` in ``context`` as already written by the model, cut before its first stop
        string; None when no speculation covers it."""
        with self._lock:
            candidates = [s for (c, _), s in reversed(self._entries.items()) if c == context]
        for speculated in candidates:
            rest = _remainder(speculated, text)
            if rest is None:
                continue
            cut = cut_at_stop(rest, stops)
            if cut is not None:
                return cut
            if speculated.finished:
                return rest
        return None


def cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """``text`` before the earliest of ``stops`` in it, or None when none occurs."""
    found = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return text[:min(found)] if found else None


def _remainder(speculated: Speculated, text: str) -> str | None:
    """What ``speculated`` wrote after ``text``, if ``text`` is its prompt plus a prefix of its continuation."""
    if not text.startswith(speculated.text):
        return None
    written = text[len(speculated.text):]
    if not speculated.continuation.startswith(written):
        return None
    return speculated.continuation[len(written):]
