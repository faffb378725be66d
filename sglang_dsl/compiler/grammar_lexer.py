"""Contextual lexers of a grammar: the union of the terminals a parser state accepts (plus the ignored ones) as
one byte DFA, indexed lazily against the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sglang_dsl.compiler.automaton import ByteDFA
from sglang_dsl.compiler.errors import GrammarError
from sglang_dsl.compiler.lark_grammar import Grammar
from sglang_dsl.compiler.token_index import TokenIndex
from sglang_dsl.compiler.vocabulary import Vocabulary

MAX_LEXER_STATES = 50_000


@dataclass(eq=False)
class ContextualLexer:
    """The union of some terminals as one byte DFA; a state is the set of (terminal, terminal state) pairs the
    partial lexeme is in. ``complete[s]``: terminals the lexeme matches in full at ``s``."""

    id: int
    terms: tuple[int, ...]
    dfa: ByteDFA
    complete: list[tuple[int, ...]]
    members: list[tuple]  # per state: ((terminal, terminal state), ...), which alone decides what can follow
    index: TokenIndex

    @cached_property
    def live_rows(self) -> np.ndarray:
        """``[S + 1, 256]`` bool: the bytes that lead each state to a live one."""
        return self.dfa.transitions != self.dfa.dead


def build_lexer(lexer_id: int, terms: tuple[int, ...], grammar: Grammar, vocab: Vocabulary, moves: dict
                ) -> ContextualLexer:
    """The lexer over ``terms`` (ascending); ``moves`` caches `_moves` across the lexers of one grammar."""
    start = tuple((t, grammar.terminals[t].dfa.initial) for t in terms)
    states = {start: 0}
    order = [start]
    rows: list[np.ndarray] = []
    i = 0
    while i < len(order):
        members = order[i]
        i += 1
        found = moves.get(members)
        if found is None:
            found = moves[members] = _moves(members, grammar)
        live, which, targets = found
        ids = []
        for target in targets:
            state = states.get(target)
            if state is None:
                state = states[target] = len(order)
                order.append(target)
                if len(order) > MAX_LEXER_STATES:
                    raise GrammarError(f"the terminals {', '.join(grammar.terminals[t].name for t in terms)} "
                                       f"make a lexer of more than {MAX_LEXER_STATES} states")
            ids.append(state)
        row = np.full(256, -1, dtype=np.int64)
        row[live] = np.array(ids, dtype=np.int64)[which]
        rows.append(row)
    n = len(order)
    complete = [tuple(t for t, s in members if grammar.terminals[t].dfa.accepting[s]) for members in order]
    transitions = np.full((n + 1, 256), n, dtype=np.int32)
    transitions[:n] = np.where(np.stack(rows) < 0, n, np.stack(rows))
    accepting = np.zeros(n + 1, dtype=bool)
    accepting[:n] = [bool(c) for c in complete]
    dfa = ByteDFA(transitions, accepting, 0)
    index = TokenIndex.build(dfa, vocab, lazy=True, eos=False, check=False)
    return ContextualLexer(lexer_id, terms, dfa, complete, order, index)


def _moves(members: tuple, grammar: Grammar) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Where a lexer state with these (terminal, terminal state) members goes: the bytes that lead somewhere,
    for each of them an index into the list of target members (bytes leading to the same members share one)."""
    if not members:  # a lexer over no terminal (nothing may follow)
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), []
    dfas = [grammar.terminals[t].dfa for t, _ in members]
    nexts = np.stack([d.transitions[s] for d, (_, s) in zip(dfas, members)])
    alive = nexts != np.array([d.dead for d in dfas])[:, None]
    live = np.flatnonzero(alive.any(axis=0))
    table = np.ascontiguousarray(np.where(alive, nexts, -1)[:, live].T)
    rows_as_bytes = table.view(np.dtype((np.void, table.shape[1] * table.itemsize))).reshape(-1)
    _, first, which = np.unique(rows_as_bytes, return_index=True, return_inverse=True)
    targets = [tuple((members[j][0], c) for j, c in enumerate(column) if c >= 0) for column in table[first].tolist()]
    return live, which.reshape(-1), targets
