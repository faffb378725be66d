"""The token budget rule for grammars: how few tokens complete an output from a `GrammarMatcher` state, and the
mask restricted to tokens after which an output can still be completed within a limit.

**Costs.** A terminal's lexeme is finished by the shortest text its DFA accepts from the lexeme's state, counted
in tokens by greedy tokenization (an upper bound on the fewest). Nonterminals cost the cheapest of their rules.
A parser stack is completed through its top state's kernel items: an item that has read ``pop`` symbols of a
rule costs what is left of the rule, then the rule reduces, which pops ``pop`` states and goes to the rule's
nonterminal; the cheapest such chain that reaches acceptance is the stack's cost (a shortest path over stacks that
only shrink or keep their size). A configuration costs the cheapest of finishing its lexeme as one of the
terminals it can still become and completing the stack after that terminal.

**Masks.** Within the budget a configuration keeps (1) the tokens that stay inside its lexeme and end in a lexer
state whose cost fits (a filtered walk of the lexer's token index), (2) where the lexeme may end, the budget masks
of the configurations that start the next lexeme, and (3) the tokens that end the lexeme inside themselves, each
advanced and its resulting state's cost checked (few tokens, cached per configuration).

**Horizon.** Masks are restricted once the tokens left come within `HORIZON` of the state's cost; before that
the plain mask is used. That is exact as long as no single token raises the cost by more than `HORIZON`
(a token that opens that many brackets at once, say); regexes need no horizon (`token_index.py`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from sglang_dsl.compiler.completion import UNREACHABLE, greedy_token_count, shortest_completion

if TYPE_CHECKING:
    from sglang_dsl.compiler.grammar import Config, GrammarMatcher

HORIZON = 32  # tokens left beyond a state's cost from which masks are restricted
CACHE_ITEMS = 4096


class GrammarBudget:
    """Costs and budget masks of one `GrammarMatcher` (which owns it and serializes calls with its lock)."""

    def __init__(self, matcher: "GrammarMatcher"):
        self.matcher = matcher
        self.grammar = grammar = matcher.grammar
        self.parser = matcher.parser
        self._longest = int(matcher.vocab.lengths.max())
        self._finish: dict[tuple[int, int], int] = {}
        symbols = _symbol_costs(grammar.rules, {t.name: self.finish(i, t.dfa.initial)
                                                for i, t in enumerate(grammar.terminals)})
        self._items = [[(pop, origin, _sum(symbols.get(x, UNREACHABLE) for x in rest)) for pop, origin, rest in state]
                       for state in grammar.items]
        self._caches: dict[str, OrderedDict] = {}
        self._state_costs: dict[frozenset, int] = {}
        self._lexer_members: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # ---- costs ----------------------------------------------------------------------------------------------

    def finish(self, terminal: int, state: int) -> int:
        """Tokens (at most) that finish a lexeme of ``terminal`` from its DFA ``state``."""
        key = (terminal, state)
        found = self._finish.get(key)
        if found is None:
            dfa = self.grammar.terminals[terminal].dfa
            rest = b"" if dfa.accepting[state] else shortest_completion(dfa, state)
            count = None if rest is None else greedy_token_count(self.matcher.vocab.by_bytes, rest, self._longest)
            found = self._finish[key] = UNREACHABLE if count is None else count
        return found

    def stack_cost(self, stack: tuple) -> int:
        """Tokens (at most) that complete the output from a fresh lexeme after ``stack``."""
        return self._cached("stack", stack, lambda: self._stack_cost(stack))

    def _stack_cost(self, stack: tuple) -> int:
        actions, tie = self.grammar.actions, itertools.count()
        heap: list = [(0, next(tie), stack)]
        seen = set()
        while heap:
            cost, _, top = heapq.heappop(heap)
            if top is None or top[-1] == self.grammar.end_state or self.parser.accepts_end(top):
                return cost
            if top in seen:
                continue
            seen.add(top)
            for pop, origin, rest in self._items[top[-1]]:
                if origin is None:  # the start state's item: the whole output
                    heapq.heappush(heap, (cost + rest, next(tie), None))
                    continue
                if pop >= len(top):
                    continue
                below = top[:-pop]
                goto = actions[below[-1]].get(origin)
                if goto is not None and goto[0]:
                    heapq.heappush(heap, (cost + rest, next(tie), below + (goto[1],)))
        return UNREACHABLE

    def after(self, stack: tuple, terminal: int) -> int:
        """The cost of the stack once a lexeme of ``terminal`` is complete (ignored terminals leave it)."""
        if terminal in self.grammar.ignore:
            return self.stack_cost(stack)
        fed = self.parser.feed(stack, terminal)
        return UNREACHABLE if fed is None else self.stack_cost(fed)

    def config_cost(self, config: "Config") -> int:
        stack, lexer_id, state = config
        members = self.matcher._lexers[lexer_id].members[state]
        return min((self.finish(t, s) + self.after(stack, t) for t, s in members), default=UNREACHABLE)

    def state_cost(self, state: frozenset) -> int:
        cost = self._state_costs.get(state)
        if cost is None:
            if len(self._state_costs) >= 16 * CACHE_ITEMS:
                self._state_costs.clear()
            cost = self._state_costs[state] = min((self.config_cost(c) for c in state), default=UNREACHABLE)
        return cost

    def known_cost(self, state: frozenset) -> int | None:
        """The state's cost if computed already (a dict read: safe without the matcher's lock)."""
        return self._state_costs.get(state)

    # ---- masks ----------------------------------------------------------------------------------------------

    def mask(self, state: frozenset, limit: int) -> np.ndarray:
        """The state's mask kept to tokens after which at most ``limit`` tokens complete the output; the whole
        mask where the limit is beyond the horizon or no completion fits at all."""
        cost = self.state_cost(state)
        if limit >= cost + HORIZON or cost > limit + 1:
            return self.matcher.mask(state)
        row = self._cached("mask", (state, limit), lambda: self._state_mask(state, limit))
        return row if row.any() else self.matcher.mask(state)

    def _state_mask(self, state: frozenset, limit: int) -> np.ndarray:
        row = np.zeros(self.matcher.words, dtype=np.uint32)
        for config in state:
            row |= self._config_mask(config, limit)
        if self.matcher.accepting(state):
            for eos in self.matcher._eos:
                row[eos >> 5] |= np.uint32(1 << (eos & 31))
        return row

    def _config_mask(self, config: "Config", limit: int) -> np.ndarray:
        return self._cached("config", (config, limit), lambda: self._compute_config_mask(config, limit))

    def _compute_config_mask(self, config: "Config", limit: int) -> np.ndarray:
        matcher = self.matcher
        stack, lexer_id, state = config
        lexer = matcher._lexers[lexer_id]
        row = lexer.index.row_where(state, self._lexer_costs(stack, lexer_id), limit).copy()
        if lexer.dfa.accepting[state]:  # tokens that start the next lexeme
            by_ending: dict[tuple, list[int]] = {}
            for byte, ending in enumerate(matcher._ending(lexer, state)):
                by_ending.setdefault(ending, []).append(byte)
            for ending, first_bytes in by_ending.items():
                for nxt in matcher._after_complete(stack, ending):
                    row |= self._config_mask(nxt, limit) & matcher._starting_with(first_bytes)
        tokens, costs = self._crossing_costs(config)
        fits = tokens[costs <= limit]
        np.bitwise_or.at(row, fits >> 5, np.uint32(1) << (fits & 31).astype(np.uint32))
        return row

    def _lexer_costs(self, stack: tuple, lexer_id: int) -> np.ndarray:
        """``[S + 1]``: the cost of each state of the lexer as the configuration's lexer state after ``stack``."""
        lexer = self.matcher._lexers[lexer_id]
        after = tuple(self.after(stack, t) for t in lexer.terms)
        return self._cached("lexer", (lexer_id, after), lambda: self._lexer_state_costs(lexer_id, after))

    def _lexer_state_costs(self, lexer_id: int, after: tuple[int, ...]) -> np.ndarray:
        lexer = self.matcher._lexers[lexer_id]
        owner, slot, finish = self._members(lexer_id)
        costs = np.full(lexer.dfa.num_states + 1, UNREACHABLE, dtype=np.int64)
        np.minimum.at(costs, owner, finish + np.asarray(after, dtype=np.int64)[slot])
        return costs

    def _members(self, lexer_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (lexer state, terminal, terminal state) member of the lexer, flattened: its lexer state, the
        terminal's place in ``lexer.terms`` and the tokens that finish the lexeme as that terminal."""
        found = self._lexer_members.get(lexer_id)
        if found is None:
            lexer = self.matcher._lexers[lexer_id]
            place = {t: i for i, t in enumerate(lexer.terms)}
            flat = np.array([(owner, place[t], self.finish(t, s)) for owner, members in enumerate(lexer.members)
                             for t, s in members], dtype=np.int64).reshape(-1, 3)
            found = self._lexer_members[lexer_id] = (flat[:, 0], flat[:, 1], flat[:, 2])
        return found

    def _crossing_costs(self, config: "Config") -> tuple[np.ndarray, np.ndarray]:
        """The allowed tokens that end the lexeme strictly inside themselves, and the cost of the state each
        leads to."""
        return self._cached("crossing", config, lambda: self._compute_crossing_costs(config))

    def _compute_crossing_costs(self, config: "Config") -> tuple[np.ndarray, np.ndarray]:
        matcher = self.matcher
        stack, lexer_id, state = config
        nodes, _ = matcher._lexers[lexer_id].index.accepting_nodes(state)
        if not nodes.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        below = np.unique(np.concatenate([matcher.vocab.rests(int(node))[0] for node in nodes]))
        start = frozenset({config})
        plain = matcher.mask(start)
        below = below[((plain[below >> 5] >> (below & 31).astype(np.uint32)) & 1).astype(bool)]
        costs = []
        for token in below.tolist():
            nxt = matcher.advance_bytes(start, matcher.vocab.token_bytes[token])
            costs.append(UNREACHABLE if nxt is None else self.state_cost(nxt))
        return below, np.array(costs, dtype=np.int64)

    def _cached(self, name: str, key, compute: Callable[[], Any]) -> Any:
        cache = self._caches.setdefault(name, OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = compute()
        if len(cache) > CACHE_ITEMS:
            cache.popitem(last=False)
        return value


def _symbol_costs(rules: tuple, terminals: dict[str, int]) -> dict[str, int]:
    """The cost of every symbol: terminals as given, nonterminals the cheapest of their rules (a fixpoint)."""
    costs = dict(terminals)
    for origin, _ in rules:
        costs.setdefault(origin, UNREACHABLE)
    changed = True
    while changed:
        changed = False
        for origin, expansion in rules:
            cost = _sum(costs.get(x, UNREACHABLE) for x in expansion)
            if cost < costs[origin]:
                costs[origin], changed = cost, True
    return costs


def _sum(costs) -> int:
    return min(sum(costs), UNREACHABLE)
