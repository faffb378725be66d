"""Stop strings in constrained gens: which tokens would end a gen with a stop string, and whether the output is
complete where they would.

A token that contains a stop string ends the gen there (the stop and what follows are trimmed), so a constraint
is satisfied by the text *before* the stop, not by the token: such a token is allowed exactly where that text
leaves the matcher accepting, whether or not the constraint allows the token's own bytes, and it is not allowed
where the text before the stop would be incomplete. Tokens are grouped by the bytes before their first stop
(the stop that ends first, as `runtime.stop.StopMatcher` picks), so a state is checked once per group.

A stop string can also begin in earlier output and end in the next token (``"\\n\\n"`` after a ``"\\n"``): the
caller passes the output's last bytes to `pending`, and decides by the matcher state where that stop began.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from sglang_dsl.compiler.token_index import packed_words
from sglang_dsl.compiler.vocabulary import Vocabulary

CACHE_ITEMS = 4096  # ending masks kept per (matcher, stop set)


def _packed(ids: np.ndarray, size: int) -> np.ndarray:
    row = np.zeros(packed_words(size), dtype=np.uint32)
    np.bitwise_or.at(row, ids >> 5, np.uint32(1) << (ids & 31).astype(np.uint32))
    return row


@dataclass(eq=False)
class StopTokens:
    """The tokens of ``vocab`` that contain one of ``stops`` (UTF-8), as a packed mask (`containing`), grouped by
    the bytes before their first stop (`groups`)."""

    vocab: Vocabulary
    stops: tuple[bytes, ...]
    containing: np.ndarray
    groups: tuple[tuple[bytes, np.ndarray], ...]
    _endings: "weakref.WeakKeyDictionary" = field(default_factory=weakref.WeakKeyDictionary, repr=False)
    _starting: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(cls, vocab: Vocabulary, stops: tuple[str, ...]) -> "StopTokens":
        """The table for ``stops`` (built once per vocabulary and stop set)."""
        key = tuple(sorted(set(s for s in stops if s)))
        cache = vocab.__dict__.setdefault("_stop_tokens", {})
        found = cache.get(key)
        if found is None:
            found = cache[key] = cls._build(vocab, tuple(s.encode("utf-8") for s in key))
        return found

    @classmethod
    def _build(cls, vocab: Vocabulary, stops: tuple[bytes, ...]) -> "StopTokens":
        by_prefix: dict[bytes, list[int]] = {}
        for token, data in enumerate(vocab.token_bytes):
            if data:
                cut = first_stop(data, stops)
                if cut is not None:
                    by_prefix.setdefault(data[:cut], []).append(token)
        ids = np.array(sorted(t for group in by_prefix.values() for t in group), dtype=np.int64)
        groups = tuple((prefix, np.array(tokens, dtype=np.int64)) for prefix, tokens in by_prefix.items())
        return cls(vocab, stops, _packed(ids, vocab.size), groups)

    @property
    def longest(self) -> int:
        return max(map(len, self.stops))

    def ending(self, matcher, state) -> np.ndarray:
        """Packed mask of the tokens containing a stop whose text before the stop leaves ``matcher`` accepting
        from ``state`` (cached per state)."""
        with self._lock:
            cache = self._endings.setdefault(matcher, OrderedDict())
            row = cache.get(state)
            if row is not None:
                cache.move_to_end(state)
                return row
        ok = [tokens for prefix, tokens in self.groups if _accepts(matcher, state, prefix)]
        row = _packed(np.concatenate(ok), self.vocab.size) if ok else np.zeros_like(self.containing)
        with self._lock:
            cache[state] = row
            if len(cache) > CACHE_ITEMS:
                cache.popitem(last=False)
        return row

    def pending(self, tail: bytes) -> list[tuple[int, bytes]]:
        """The stops that ``tail`` (the output's last bytes) ends part-way into: (how many of their bytes are
        already written, the bytes still to come), longest written part first."""
        found = [(n, stop[n:]) for stop in self.stops for n in range(len(stop) - 1, 0, -1) if tail.endswith(stop[:n])]
        return sorted(found, key=lambda item: -item[0])

    def starting_with(self, rest: bytes) -> np.ndarray:
        """Packed mask of the tokens whose bytes start with ``rest``."""
        row = self._starting.get(rest)
        if row is None:
            lo, hi = self.vocab.tokens_with_prefix(rest)
            row = self._starting[rest] = _packed(self.vocab.sorted_tokens[1][lo:hi], self.vocab.size)
        return row

    def occurs_in(self, data: bytes) -> bool:
        return any(stop in data for stop in self.stops)


def first_stop(data: bytes, stops: tuple[bytes, ...]) -> int | None:
    """Where the first stop in ``data`` begins (of the stops found, the one that ends first, then the one that
    begins first), or None."""
    best: tuple[int, int] | None = None
    for stop in stops:
        at = data.find(stop)
        if at >= 0 and (best is None or (at + len(stop), at) < best):
            best = (at + len(stop), at)
    return None if best is None else best[1]


def _accepts(matcher, state, prefix: bytes) -> bool:
    if prefix:
        state = matcher.advance_bytes(state, prefix)
    return state is not None and matcher.accepting(state)
