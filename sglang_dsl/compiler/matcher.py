"""What the runtime drives during decoding: a `Matcher` (compiled once per constraint and vocabulary, shared by
requests) and a per-request state it advances token by token.

Every matcher answers, for a state: the packed mask of allowed tokens (``[ceil(V / 32)]`` uint32, EOS ids set
where the output may end), whether the output may end there (`accepting`) or must (`terminal`), the state after a
token (None if the token was not allowed), and the bytes every continuation must start with (`forced`, for
jump-forward).

For the token budget rule, also: `completion`, how many tokens at most the shortest way from a state to a
complete output takes (0 where the output may end), and `budget_mask`, the mask restricted to tokens after which
that many still fit in ``limit`` tokens (the plain mask where no completion fits at all, ``completion(state) >
limit + 1``)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from sglang_dsl.compiler.token_index import TokenIndex
from sglang_dsl.compiler.vocabulary import Vocabulary


class Matcher(Protocol):
    vocab: Vocabulary

    def start(self) -> Any: ...

    def mask(self, state: Any) -> np.ndarray: ...

    def advance(self, state: Any, token: int) -> Any | None: ...

    def accepting(self, state: Any) -> bool: ...

    def terminal(self, state: Any) -> bool: ...

    def forced(self, state: Any) -> bytes: ...

    def completion(self, state: Any) -> int: ...

    def budget_mask(self, state: Any, limit: int) -> np.ndarray: ...


class RegexMatcher:
    """A regex's `TokenIndex`; states are DFA state numbers."""

    def __init__(self, index: TokenIndex):
        self.index = index
        self.vocab = index.vocab
        self._thresholds = index.thresholds.tolist()  # a list: the budget rule's check runs every step

    def start(self) -> int:
        return self.index.initial

    def mask(self, state: int) -> np.ndarray:
        return self.index.row(state)

    def masks(self, states) -> np.ndarray:
        return self.index.rows(states)

    def advance(self, state: int, token: int) -> int | None:
        nxt = self.index.next_state(state, token)
        return None if nxt == self.index.dfa.dead else nxt

    def accepting(self, state: int) -> bool:
        return self.index.is_accepting(state)

    def terminal(self, state: int) -> bool:
        return self.index.is_terminal(state)

    def forced(self, state: int) -> bytes:
        return self.index.dfa.forced_bytes(state)

    def completion(self, state: int) -> int:
        return int(self.index.distances[state])

    def budget_mask(self, state: int, limit: int) -> np.ndarray:
        if limit >= self._thresholds[state] or self.index.distances[state] > limit + 1:  # ample, or nothing fits
            return self.index.row(state)
        return self.index.row_within(state, limit)

    def advance_bytes(self, state: int, data: bytes) -> int | None:
        nxt = self.index.dfa.walk(state, data)
        return None if nxt == self.index.dfa.dead else nxt

    @property
    def nbytes(self) -> int:
        return self.index.nbytes
