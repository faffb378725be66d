"""A byte DFA indexed against a vocabulary: which tokens each state allows, as packed bitmasks.

For every live state ``s`` the index holds one row of ``ceil(V / 32)`` uint32 words; bit ``t % 32`` of word
``t // 32`` is set iff token ``t`` may come next: all of its bytes can be read from ``s`` without leaving the live
states (EOS ids: iff ``s`` accepts). Next states are not stored: the runtime walks the sampled token's bytes
through the DFA (a few table lookups), which keeps the index at ``S * V / 8`` bytes however dense the states.

Rows are computed by walking the vocabulary's byte trie from all requested states at once, breadth first,
vectorized with numpy: only (state, trie node) pairs that are still alive are carried to the next level, so a
sparse state (inside JSON punctuation) costs a few operations and a dense one (inside a string) about one pass
over the trie. Rows are built eagerly for every state, or lazily on first use (``lazy=True``).

Soundness needs more than byte-level liveness when the vocabulary cannot spell some byte on its own: a state
that is live for bytes could be a dead end for tokens. When that can happen the index is built eagerly and
tokens leading into states from which no token sequence reaches acceptance are removed (a fixpoint).

**Token budgets.** An eager build also records which states each state's tokens lead to, and from that the
exact number of tokens each state needs at least to reach acceptance (`distances`) and the most any of its
tokens leaves to do (`thresholds`). With ``limit`` tokens left after the next one, `row_within` keeps the tokens
whose end state can still be completed in time; a state whose threshold is within the limit keeps its whole row.
A lazy index (huge automata) bounds distances by single-byte tokens instead and checks every state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

import numpy as np

from sglang_dsl.compiler.automaton import ByteDFA
from sglang_dsl.compiler.completion import UNREACHABLE, byte_distances, token_distances
from sglang_dsl.compiler.errors import VocabularyError
from sglang_dsl.compiler.vocabulary import Vocabulary

_CHUNK_PAIRS = 1 << 21  # most (state, trie node) pairs carried through one level at once
_CHUNK_REACH = 1 << 24  # most (state, end state) flags collected at once while recording successors
WITHIN_ROWS = 4096  # budget rows (`row_within`) kept per index


def packed_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


@dataclass(eq=False)
class TokenIndex:
    """A `ByteDFA` and a `Vocabulary`, with the allowed-token bitmask of each state."""

    dfa: ByteDFA
    vocab: Vocabulary
    masks: np.ndarray  # uint32 [S, W]
    ready: np.ndarray  # bool [S]: row computed
    eos: bool = True  # set the EOS bits of accepting states
    distances: np.ndarray | None = None  # int32 [S]: fewest tokens to acceptance (`UNREACHABLE`: none)
    thresholds: np.ndarray | None = None  # int32 [S]: most tokens left to do after any one allowed token
    _crossings: dict = field(default_factory=dict, repr=False)  # state -> `accepting_nodes`
    _within: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (state, limit) -> budget row
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, dfa: ByteDFA, vocab: Vocabulary, lazy: bool = False, eos: bool = True, check: bool = True
              ) -> "TokenIndex":
        """Index ``dfa`` against ``vocab``: every row now, or (``lazy``) each on first use. ``eos=False`` leaves
        the EOS bits clear (for automata that are part of something larger). ``check``: raise `VocabularyError`
        if no token can start a match."""
        s = dfa.num_states
        index = cls(dfa, vocab, np.zeros((s, packed_words(vocab.size)), dtype=np.uint32), np.zeros(s, dtype=bool),
                    eos=eos)
        if _needs_token_fixpoint(dfa, vocab):
            index._build_with_fixpoint()
        elif not lazy:
            successors: list = []
            index.masks[:] = index._compute(np.arange(s), successors=successors)
            index.ready[:] = True
            index._set_distances(*_concat_pairs(successors))
        else:
            index._set_byte_distances()
        if check:
            index._check_initial()
        return index

    # ---- queries ----------------------------------------------------------------------------------------------

    @property
    def initial(self) -> int:
        return self.dfa.initial

    @property
    def num_states(self) -> int:
        return self.dfa.num_states

    def is_accepting(self, state: int) -> bool:
        return bool(self.dfa.accepting[state])

    def is_terminal(self, state: int) -> bool:
        """Accepting with nothing allowed after: the output is complete."""
        return bool(self.dfa.terminal[state])

    def next_state(self, state: int, token: int) -> int:
        """The state after ``token`` (``dfa.dead`` if the token is not allowed; EOS leads to the dead state)."""
        data = self.vocab.token_bytes[token] if 0 <= token < self.vocab.size else None
        if data is None:
            return self.dfa.dead
        return self.dfa.walk(state, data)

    def row(self, state: int) -> np.ndarray:
        """The packed mask ``[W]`` uint32 of ``state``."""
        if not self.ready[state]:
            self.rows(np.array([state]))
        return self.masks[state]

    def rows(self, states: np.ndarray | Iterable[int]) -> np.ndarray:
        """Packed masks ``[len(states), W]`` (computing missing rows first)."""
        states = np.asarray(states, dtype=np.int64)
        missing = states[~self.ready[states]]
        if missing.size:
            with self._lock:
                missing = np.unique(missing[~self.ready[missing]])
                if missing.size:
                    self.masks[missing] = self._compute(missing)
                    self.ready[missing] = True
        return self.masks[states]

    def row_within(self, state: int, limit: int) -> np.ndarray:
        """The packed mask of ``state`` restricted to tokens after which at most ``limit`` more tokens reach
        acceptance (EOS kept where the state accepts). The whole row when every token qualifies."""
        if limit >= self.thresholds[state]:
            return self.row(state)
        key = (state, limit)
        with self._lock:
            row = self._within.get(key)
            if row is not None:
                self._within.move_to_end(key)
                return row
        row = self.row_where(state, self.distances, limit)
        with self._lock:
            self._within[key] = row
            if len(self._within) > WITHIN_ROWS:
                self._within.popitem(last=False)
        return row

    def row_where(self, state: int, distances: np.ndarray, limit: int) -> np.ndarray:
        """The packed mask of ``state`` restricted to tokens whose end state ``e`` has ``distances[e] <= limit``
        (``distances``: any per-state costs, ``[S]``). Not cached."""
        return self._compute(np.array([state]), within=(distances, limit))[0]

    def allowed_tokens(self, state: int) -> np.ndarray:
        """Token ids allowed in ``state`` (EOS included where it accepts), ascending."""
        bits = np.unpackbits(self.row(state).view(np.uint8), bitorder="little")[: self.vocab.size]
        return np.nonzero(bits)[0]

    def is_allowed(self, state: int, token: int) -> bool:
        return bool((int(self.row(state)[token >> 5]) >> (token & 31)) & 1)

    @cached_property
    def _flat_table(self) -> np.ndarray:
        return self.dfa.transitions.reshape(-1).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.masks.nbytes + self.dfa.transitions.nbytes)

    # ---- construction -----------------------------------------------------------------------------------------

    def accepting_nodes(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """Trie nodes below the root whose bytes, read from ``state``, end in an accepting state and that have
        children (proper prefixes of longer tokens), with those end states: where a token can cross from one
        match into whatever follows it. (Found along with the state's row when that is computed alone.)"""
        found = self._crossings.get(state)
        if found is None:
            found = self._crossings[state] = self._accepting_nodes(state)
        return found

    def _accepting_nodes(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        trie = self.vocab.trie
        table = self._flat_table
        dead = self.dfa.dead
        accepting = self.dfa.accepting
        nodes = np.zeros(1, dtype=np.int64)
        current = np.array([state], dtype=np.int64)
        found_nodes, found_states = [], []
        while nodes.size:
            counts = trie.num_children[nodes]
            total = int(counts.sum())
            if total == 0:
                break
            parent = np.repeat(np.arange(nodes.size, dtype=np.int64), counts)
            offsets = np.cumsum(counts) - counts
            child = trie.first_child[nodes][parent] + (np.arange(total, dtype=np.int64) - offsets[parent])
            nxt = table[current[parent] * 256 + trie.node_byte[child]]
            keep = nxt != dead
            nodes, current = child[keep], nxt[keep]
            hit = accepting[current] & (trie.num_children[nodes] > 0)
            if hit.any():
                found_nodes.append(nodes[hit])
                found_states.append(current[hit])
        if not found_nodes:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(found_nodes), np.concatenate(found_states)

    def _check_initial(self) -> None:
        if not self.row(self.initial).any():
            raise VocabularyError("no sequence of this vocabulary's tokens matches the constraint")

    def _compute(self, states: np.ndarray, ends: list | None = None, successors: list | None = None,
                 within: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        """Packed rows of ``states``; with ``ends``, also append (row, token, end state) arrays to it; with
        ``successors``, (state, end state) pairs, each once; with ``within = (costs, limit)``, only tokens whose
        end state costs at most ``limit``."""
        vocab, trie = self.vocab, self.vocab.trie
        v = vocab.size
        out = np.zeros((states.size, packed_words(v) * 4), dtype=np.uint8)
        dead = self.dfa.dead
        table = self._flat_table
        accepting = self.dfa.accepting
        node_byte, first_child, num_children, node_token = (
            trie.node_byte, trie.first_child, trie.num_children, trie.node_token)
        # states in chunks sized so that a dense chunk stays within _CHUNK_PAIRS pairs per level
        per_state = max(1, _CHUNK_PAIRS // max(1, trie.num_nodes))
        if successors is not None:
            per_state = max(1, min(per_state, _CHUNK_REACH // (self.dfa.num_states + 1)))
        for start in range(0, states.size, per_state):
            chunk = states[start : start + per_state]
            reach = None if successors is None else np.zeros(chunk.size * (self.dfa.num_states + 1), dtype=bool)
            allowed = np.zeros((chunk.size, v), dtype=bool)
            rows = np.arange(chunk.size, dtype=np.int64)
            nodes = np.zeros(chunk.size, dtype=np.int64)
            current = chunk.astype(np.int64)
            crossings: list = []
            while rows.size:
                counts = num_children[nodes]
                total = int(counts.sum())
                if total == 0:
                    break
                parent = np.repeat(np.arange(rows.size, dtype=np.int64), counts)
                offsets = np.cumsum(counts) - counts
                child = first_child[nodes][parent] + (np.arange(total, dtype=np.int64) - offsets[parent])
                nxt = table[current[parent] * 256 + node_byte[child]]
                keep = nxt != dead
                rows, nodes, current = rows[parent[keep]], child[keep], nxt[keep]
                tokens = node_token[nodes]
                has = tokens >= 0
                if within is not None:
                    has &= within[0][current] <= within[1]
                allowed[rows[has], tokens[has]] = True
                if reach is not None:
                    reach[rows[has] * (self.dfa.num_states + 1) + current[has]] = True
                if chunk.size == 1:  # the crossing nodes come for free
                    hit = accepting[current] & (num_children[nodes] > 0)
                    crossings.append((nodes[hit], current[hit]))
                if ends is not None and has.any():
                    ends.append((rows[has] + start, tokens[has], current[has]))
            if chunk.size == 1:
                self._crossings[int(chunk[0])] = (
                    np.concatenate([c[0] for c in crossings] or [np.zeros(0, np.int64)]),
                    np.concatenate([c[1] for c in crossings] or [np.zeros(0, np.int64)]))
            if reach is not None:
                src, dst = np.divmod(np.flatnonzero(reach), self.dfa.num_states + 1)
                successors.append((chunk[src], dst))
            for primary, dup in trie.duplicates:
                allowed[:, dup] = allowed[:, primary]
                if ends is not None:
                    hit = np.nonzero(allowed[:, primary])[0]
                    if hit.size:
                        ends.append((hit + start, np.full(hit.size, dup), None))
            for eos in vocab.eos_token_ids if self.eos else ():
                if 0 <= eos < v:
                    allowed[:, eos] = accepting[chunk]
            out[start : start + chunk.size, : (v + 7) // 8] = np.packbits(allowed, axis=1, bitorder="little")
        return out.view("<u4").astype(np.uint32, copy=False)

    def _build_with_fixpoint(self) -> None:
        """Eager build for vocabularies that cannot spell every byte alone: drop tokens that lead into states
        from which no token sequence reaches an accepting state."""
        s = self.dfa.num_states
        ends: list = []
        self.masks[:] = self._compute(np.arange(s), ends)
        self.ready[:] = True
        src = [e[0] for e in ends if e[2] is not None]
        tok = [e[1] for e in ends if e[2] is not None]
        dst = [e[2] for e in ends if e[2] is not None]
        if not src:
            self._set_distances(np.zeros(0, np.int64), np.zeros(0, np.int64))
            return
        src_a, tok_a, dst_a = np.concatenate(src), np.concatenate(tok), np.concatenate(dst)
        self._set_distances(src_a, dst_a)
        live = self.distances < UNREACHABLE  # token sequences reach acceptance from these
        bad = ~live[dst_a]
        if bad.any():
            allowed = np.unpackbits(self.masks.view(np.uint8), axis=1, bitorder="little")
            allowed[src_a[bad], tok_a[bad]] = 0
            # duplicates follow their primary token
            for primary, dup in self.vocab.trie.duplicates:
                allowed[:, dup] = allowed[:, primary]
            self.masks[:] = np.packbits(allowed, axis=1, bitorder="little").view("<u4")


    def _set_distances(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Exact `distances` and `thresholds` from the (state, end state) pairs of every allowed token."""
        self.distances, self.thresholds = token_distances(self.dfa.num_states, src, dst, self.dfa.accepting)

    def _set_byte_distances(self) -> None:
        """Bounds for a lazy index: distances over single-byte tokens; every state is checked."""
        usable = self.vocab.single_byte_tokens
        self.distances = byte_distances(self.dfa, usable)
        finite = self.distances[self.distances < UNREACHABLE]
        self.thresholds = np.full(self.dfa.num_states, finite.max() + 1 if finite.size else 0, dtype=np.int32)


def _concat_pairs(pairs: list) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def _needs_token_fixpoint(dfa: ByteDFA, vocab: Vocabulary) -> bool:
    """Whether some live state can complete a match only through bytes that are no token on their own (then a
    token could lead into a dead end). Where single-byte tokens can finish from every live state, they can also
    finish after any allowed token, so byte-level liveness is enough."""
    s = dfa.num_states
    if s == 0:
        return False
    usable = np.nonzero(vocab.single_byte_tokens)[0]
    sub = dfa.transitions[:s][:, usable].astype(np.int64)
    src = np.repeat(np.arange(s, dtype=np.int64), usable.size)
    dst = sub.reshape(-1)
    keep = dst != dfa.dead
    pairs = np.unique(dst[keep] * s + src[keep])  # sorted by destination
    dst_u, src_u = pairs // s, pairs % s
    bounds = np.searchsorted(dst_u, np.arange(s + 1))
    live = dfa.accepting[:s].copy()
    stack = np.nonzero(live)[0].tolist()
    while stack:
        d = stack.pop()
        for p in src_u[bounds[d] : bounds[d + 1]].tolist():
            if not live[p]:
                live[p] = True
                stack.append(p)
    return not bool(live.all())
