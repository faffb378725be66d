"""Context-free grammars (lark EBNF, or llama.cpp GBNF converted to it) as token-level matchers.

``lark`` parses the grammar and builds its LALR(1) table; terminals become byte DFAs through the regex
pipeline. Decoding then runs an incremental lexer + parser of our own:

* **Language.** A text matches when it splits into lexemes, each matching a terminal, whose terminal sequence
  (``%ignore`` terminals dropped) the grammar derives: the grammar read at the character level, as an Earley
  parser with a complete dynamic lexer reads it. Where several splits are possible (``a`` ``b`` or ``ab``) all
  are followed at once, so nothing valid is ruled out.
* **State.** A set of configurations (LALR state stack, lexer, lexer state). The lexer of a configuration is a
  DFA over the terminals the parser accepts next, plus the ignored ones (a contextual lexer); its state says
  which terminals the current partial lexeme can still become.
* **Masks.** The tokens allowed in a configuration are (1) those that stay inside the current lexeme: a row of
  the lexer DFA's token index, computed once per (lexer, state) and shared by every context; plus (2) tokens that
  cross a lexeme boundary: the trie nodes where the lexeme can end are found once per (lexer, state); at each the
  parser is advanced by the completed terminal (a few table lookups, cached per stack) and only the tokens below
  that node are checked further: the rest of the token after the node, when it is a token itself, is looked up
  in the next configuration's mask; rests that are no token are walked down the trie (bytes no lexeme can read
  skipped). A boundary at the very start of a token (the lexeme is already complete) reuses the next
  configuration's own mask. The parser is never copied per vocabulary token.
* **Caches.** Masks are cached per state, and per configuration under (lexer, lexer state, the top of the stack
  the mask read): the parser records the lowest stack position each answer read (`lalr_stack.py`), so the same
  place in a JSON object at another nesting depth finds the mask again, as long as no token can close a bracket
  below that top (``}}`` reads two levels, for instance).

Grammars must be LALR(1) at the terminal level (lark reports conflicts) and terminals must not match the empty
string. Recursion is fine: the parser stack is unbounded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sglang_dsl.compiler.grammar_budget import HORIZON as BUDGET_HORIZON
from sglang_dsl.compiler.grammar_budget import GrammarBudget
from sglang_dsl.compiler.grammar_lexer import ContextualLexer, build_lexer
from sglang_dsl.compiler.lark_grammar import Grammar, load_grammar
from sglang_dsl.compiler.lalr_stack import LalrStacks, StackTopCache
from sglang_dsl.compiler.token_index import packed_words
from sglang_dsl.compiler.vocabulary import Vocabulary

MAX_CONFIGURATIONS = 64  # parallel lexing/parsing hypotheses kept per state (each one completable)
CACHE_ITEMS = 2048  # masks kept per matcher (each V/8 bytes); other per-stack caches are cleared past 64x this
Config = tuple[tuple, int, int]  # one hypothesis: (LALR stack, lexer id, lexer state)
MAX_MASK_DEPTH = 4  # configurations whose masks are computed one inside the other; deeper, tokens are walked


def compile_grammar(text: str, vocab: Vocabulary) -> "GrammarMatcher":
    """A matcher for the grammar, with the mask of its start state computed (time to first mask = compile)."""
    return started_matcher(load_grammar(text), vocab)


def started_matcher(grammar: Grammar, vocab: Vocabulary) -> "GrammarMatcher":
    """A matcher for a loaded grammar, with the mask of its start state computed."""
    matcher = GrammarMatcher(grammar, vocab)
    matcher.mask(matcher.start())
    return matcher


# ---- the matcher ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Crossings:
    """Tokens that complete a lexeme (as the terminals ``complete``) strictly inside themselves: below the
    crossing trie ``nodes``. ``known``: those whose rest (the bytes after the node) is a token, with the packed
    word and bit of their own id and of that rest's id; the others lie below ``walked_nodes`` and are walked."""

    complete: tuple[int, ...]
    nodes: list[int]
    known: np.ndarray
    known_word: np.ndarray
    known_bit: np.ndarray
    rest_word: np.ndarray
    rest_bit: np.ndarray
    walked_nodes: list[int]

    @classmethod
    def of(cls, complete: tuple, nodes: list[int], tokens: list[np.ndarray], rests: list[np.ndarray]
           ) -> "_Crossings":
        walked = [node for node, r in zip(nodes, rests) if (r < 0).any()]
        tokens_a, rests_a = np.concatenate(tokens), np.concatenate(rests)
        known, rest = tokens_a[rests_a >= 0], rests_a[rests_a >= 0]
        return cls(complete, list(nodes), known, known >> 5, (known & 31).astype(np.uint32), rest >> 5,
                   (rest & 31).astype(np.uint32), walked)

    def rest_allowed(self, row: np.ndarray) -> np.ndarray:
        """``[len(known)]`` bool: whether each known token's rest is set in ``row``."""
        return ((row[self.rest_word] >> self.rest_bit) & 1).astype(bool)

    def allowed(self, row: np.ndarray) -> np.ndarray:
        """``[len(known)]`` bool: whether each known token is itself set in ``row``."""
        return ((row[self.known_word] >> self.known_bit) & 1).astype(bool)


class GrammarMatcher:
    """Matcher for a `Grammar`; a state is a frozenset of configurations."""

    def __init__(self, grammar: Grammar, vocab: Vocabulary):
        self.grammar = grammar
        self.vocab = vocab
        self.parser = LalrStacks(grammar.actions, [t.name for t in grammar.terminals], grammar.end_state)
        self.words = packed_words(vocab.size)
        self._lexers: list[ContextualLexer] = []
        self._lexer_ids: dict[frozenset[int], int] = {}
        self._lexer_after: dict[frozenset, int] = {}  # acceptable terminals -> lexer id
        self._lexer_moves: dict[tuple, tuple] = {}  # lexer-state members -> their moves, shared by all lexers
        self._config_masks = StackTopCache(self.parser, CACHE_ITEMS)  # (lexer, state) -> mask
        self._state_masks: OrderedDict[frozenset, np.ndarray] = OrderedDict()
        self._advances: OrderedDict[tuple[frozenset, int], frozenset | None] = OrderedDict()  # -> next state
        self._terminals: OrderedDict[frozenset, bool] = OrderedDict()
        self._forced: OrderedDict[tuple[frozenset, int], bytes] = OrderedDict()  # (state, limit) -> forced bytes
        self._rows: dict[tuple, np.ndarray] = {}  # lexer-state members -> tokens that stay inside the lexeme
        self._crossings: dict[tuple, list] = {}  # lexer-state members -> tokens that end the lexeme inside them
        self._after: dict[tuple, list] = {}
        self._endings: dict[tuple, list] = {}
        self._byte_masks: dict[frozenset, np.ndarray] = {}
        self._in_progress: set = set()
        self._subtree = StackTopCache(self.parser, CACHE_ITEMS)  # (trie node, lexer, state) -> token ids
        self._lock = threading.RLock()
        dups: dict[int, list[int]] = {}
        for primary, dup in vocab.trie.duplicates:
            dups.setdefault(primary, []).append(dup)
        self._duplicates = dups
        self._eos = [t for t in vocab.eos_token_ids if 0 <= t < vocab.size]
        self.start()  # builds the first lexer: fails early on an unusable grammar
        self._budget: GrammarBudget | None = None

    # ---- configurations ---------------------------------------------------------------------------------------

    def _lexer(self, terms: frozenset[int]) -> ContextualLexer:
        lexer_id = self._lexer_ids.get(terms)
        if lexer_id is None:
            lexer_id = len(self._lexers)
            self._lexers.append(build_lexer(lexer_id, tuple(sorted(terms)), self.grammar, self.vocab,
                                             self._lexer_moves))
            self._lexer_ids[terms] = lexer_id
        return self._lexers[lexer_id]

    def _fresh(self, stack: tuple) -> Config:
        """The configuration at the start of a lexeme after ``stack``."""
        acceptable = self.parser.acceptable(stack)
        lexer_id = self._lexer_after.get(acceptable)
        if lexer_id is None:
            lexer_id = self._lexer_after[acceptable] = self._lexer(acceptable | self.grammar.ignore).id
        return (stack, lexer_id, 0)

    def _after_lexeme(self, stack: tuple, lexer: ContextualLexer, state: int) -> list[Config]:
        """Configurations starting a new lexeme once the current one ends in lexer ``state``."""
        return self._after_complete(stack, lexer.complete[state])

    def _after_complete(self, stack: tuple, complete: tuple[int, ...]) -> list[Config]:
        key = (stack, complete)
        out = self._after.get(key)
        if out is not None:
            self.parser.note(out[1])
            return out[0]
        saved = self.parser.begin()
        found = []
        for term in complete:
            if term in self.grammar.ignore:
                found.append(self._fresh(stack))
                continue
            nxt = self.parser.feed(stack, term)
            if nxt is not None:
                found.append(self._fresh(nxt))
        configs = list(dict.fromkeys(found))
        self._after[key] = (configs, self.parser.end(saved))
        return configs

    def _ending(self, lexer: ContextualLexer, state: int) -> list[tuple[int, ...]]:
        """Per next byte, the terminals the lexeme may end as in ``state``. An ignored lexeme (whitespace) ends
        only where the next byte cannot extend it, as lark's lexer reads it: splitting a run of whitespace in two
        gives the same text, so this loses nothing and keeps the number of parses down."""
        key = (lexer.id, state)
        out = self._endings.get(key)
        if out is None:
            complete = lexer.complete[state]
            out = [complete] * 256
            extendable = [(t, s) for t, s in lexer.members[state]
                          if t in self.grammar.ignore and t in complete]
            if extendable:
                goes_on = np.zeros(256, dtype=bool)
                for t, s in extendable:
                    dfa = self.grammar.terminals[t].dfa
                    goes_on |= dfa.transitions[s] != dfa.dead
                shorter = tuple(t for t in complete if t not in {t for t, _ in extendable})
                out = [shorter if goes_on[b] else complete for b in range(256)]
            self._endings[key] = out
        return out

    def _step(self, configs, byte: int) -> set:
        out = set()
        for stack, lexer_id, state in configs:
            lexer = self._lexers[lexer_id]
            nxt = int(lexer.dfa.transitions[state, byte])
            if nxt != lexer.dfa.dead:
                out.add((stack, lexer_id, nxt))
            if lexer.dfa.accepting[state]:
                ending = self._ending(lexer, state)[byte]
                for fresh_stack, fresh_lexer, fresh_state in self._after_complete(stack, ending):
                    lex2 = self._lexers[fresh_lexer]
                    n2 = int(lex2.dfa.transitions[fresh_state, byte])
                    if n2 != lex2.dfa.dead:
                        out.add((fresh_stack, fresh_lexer, n2))
        if len(out) > MAX_CONFIGURATIONS:  # each one can still be completed, so keeping some stays sound
            out = set(sorted(out, key=lambda c: (len(c[0]), c))[:MAX_CONFIGURATIONS])
        return out

    def _can_end(self, config: Config) -> bool:
        stack, lexer_id, state = config
        lexer = self._lexers[lexer_id]
        if state == 0:
            return self.parser.accepts_end(stack)
        return any(self.parser.accepts_end(s) for s, _, _ in self._after_lexeme(stack, lexer, state))

    # ---- Matcher protocol -------------------------------------------------------------------------------------

    def start(self) -> frozenset:
        with self._lock:
            return frozenset({self._fresh((self.grammar.start_state,))})

    def advance(self, state: frozenset, token: int) -> frozenset | None:
        data = self.vocab.token_bytes[token] if 0 <= token < self.vocab.size else None
        if not data:
            return None
        return self._cached(self._advances, (state, token), lambda: self.advance_bytes(state, data))

    def advance_bytes(self, state: frozenset, data: bytes) -> frozenset | None:
        with self._lock:
            configs = set(state)
            for b in data:
                configs = self._step(configs, b)
                if not configs:
                    return None
            return frozenset(configs)

    def accepting(self, state: frozenset) -> bool:
        with self._lock:
            return any(self._can_end(c) for c in state)

    def terminal(self, state: frozenset) -> bool:
        return self._cached(self._terminals, state, lambda: self._terminal(state))

    def _terminal(self, state: frozenset) -> bool:
        row = self.mask(state).copy()
        for eos in self._eos:
            row[eos >> 5] &= ~np.uint32(1 << (eos & 31))
        return not row.any() and self.accepting(state)

    def mask(self, state: frozenset) -> np.ndarray:
        return self._cached(self._state_masks, state, lambda: self._state_mask(state))

    def _state_mask(self, state: frozenset) -> np.ndarray:
        row = np.zeros(self.words, dtype=np.uint32)
        for config in state:
            row |= self._config_mask(config)
        if any(self._can_end(c) for c in state):
            for eos in self._eos:
                row[eos >> 5] |= np.uint32(1 << (eos & 31))
        return row

    def completion(self, state: frozenset) -> int:
        with self._lock:
            return self.budget.state_cost(state)

    def budget_mask(self, state: frozenset, limit: int) -> np.ndarray:
        cost = self.budget.known_cost(state)
        if cost is not None and limit >= cost + BUDGET_HORIZON:  # ample: the plain mask, without the lock
            return self.mask(state)
        with self._lock:
            return self.budget.mask(state, limit)

    @property
    def budget(self) -> GrammarBudget:
        """Costs and budget masks (`grammar_budget.py`), set up on first use."""
        if self._budget is None:
            with self._lock:
                self._budget = self._budget or GrammarBudget(self)
        return self._budget

    def forced(self, state: frozenset, limit: int = 256) -> bytes:
        """Bytes every continuation starts with (none where the output may end)."""
        return self._cached(self._forced, (state, limit), lambda: self._forced_bytes(state, limit))

    def _forced_bytes(self, state: frozenset, limit: int) -> bytes:
        with self._lock:
            out = bytearray()
            configs = set(state)
            while len(out) < limit:
                if any(self._can_end(c) for c in configs):
                    break
                possible = np.zeros(256, dtype=bool)
                for stack, lexer_id, st in configs:
                    lexer = self._lexers[lexer_id]
                    possible |= lexer.dfa.transitions[st] != lexer.dfa.dead
                    if lexer.dfa.accepting[st]:
                        for _, l2, s2 in self._after_lexeme(stack, lexer, st):
                            lex2 = self._lexers[l2]
                            possible |= lex2.dfa.transitions[s2] != lex2.dfa.dead
                choices = np.nonzero(possible)[0]
                if choices.size != 1:
                    break
                b = int(choices[0])
                configs = self._step(configs, b)
                if not configs:
                    break
                out.append(b)
            return bytes(out)

    # ---- masks --------------------------------------------------------------------------------------------------

    def _cached(self, cache: OrderedDict, key, compute: Callable[[], Any]) -> Any:
        """``cache[key]``, computed and kept (the most recent `CACHE_ITEMS`) when missing."""
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            value = compute()
            self._remember(cache, key, value)
            return value

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        if len(cache) > CACHE_ITEMS:
            cache.popitem(last=False)
        if len(self._after) > 64 * CACHE_ITEMS:  # stacks of a long-running server: start afresh
            self._after.clear()
            self.parser.clear()

    def _config_mask(self, config: Config) -> np.ndarray | None:
        """Tokens allowed in one configuration (packed, no EOS). None while that very mask is being computed
        further up (a cycle through the grammar) or when masks already nest `MAX_MASK_DEPTH` deep (a grammar can
        have infinitely many configurations, e.g. stacks of unary minus signs): callers then check their few
        tokens directly. A mask is kept under the top of the stack it read (see `LalrStacks`), so that the same
        place at another nesting depth finds it."""
        stack, lexer_id, state = config
        row = self._config_masks.get((lexer_id, state), stack)
        if row is not None:
            return row
        if config in self._in_progress or len(self._in_progress) >= MAX_MASK_DEPTH:
            return None
        self._in_progress.add(config)
        saved = self.parser.begin()
        try:
            row = self._compute_mask(config)
        finally:
            self._in_progress.discard(config)
            low = self.parser.end(saved)
        self._config_masks.put((lexer_id, state), stack, low, row)
        return row

    def _compute_mask(self, config: Config) -> np.ndarray:
        stack, lexer_id, state = config
        lexer = self._lexers[lexer_id]
        row = self._inside_row(lexer, state).copy()
        if lexer.dfa.accepting[state]:  # the lexeme may end right here: tokens that start the next one
            by_ending: dict[tuple, list[int]] = {}
            for b, ending in enumerate(self._ending(lexer, state)):
                by_ending.setdefault(ending, []).append(b)
            for ending, first_bytes in by_ending.items():
                allowed_first = self._starting_with(first_bytes)
                for nxt in self._after_complete(stack, ending):
                    sub = self._config_mask(nxt)  # fresh configurations: never a cycle back to this one
                    row |= (sub if sub is not None else self._mask_by_walking(nxt)) & allowed_first
        found: list[np.ndarray] = []
        looping: list[_Crossings] = []  # crossings that lead back to this configuration
        for group in self._crossings_of(lexer, state):
            for nxt in self._after_complete(stack, group.complete):
                if nxt == config:  # e.g. an ignored space before anything: resolved below, shortest first
                    looping.append(group)
                    walked = group.walked_nodes  # rests that are no token: walked (that needs no mask)
                else:
                    sub = self._config_mask(nxt)
                    if sub is None:  # a cycle or too deep: walk the trie below each crossing node
                        walked = group.nodes
                    else:  # the rest of the token is (almost always) a token itself: look it up in nxt's mask
                        found.append(group.known[group.rest_allowed(sub)])
                        walked = group.walked_nodes
                for node in walked:
                    found.append(self._subtree_tokens(node, nxt))
        _set_bits(row, found)
        if looping:
            self._resolve_loops(row, looping)
        return row

    def _starting_with(self, first_bytes: list[int]) -> np.ndarray:
        key = frozenset(first_bytes)
        mask = self._byte_masks.get(key)
        if mask is None:
            mask = self._byte_masks[key] = np.bitwise_or.reduce(self.vocab.first_byte_masks[first_bytes], axis=0)
        return mask

    def _mask_by_walking(self, config: Config) -> np.ndarray:
        """The mask of ``config`` by checking every token (only reached through a cycle; never in practice)."""
        row = np.zeros(self.words, dtype=np.uint32)
        start = frozenset({config})
        for token, data in enumerate(self.vocab.token_bytes):
            if data and self.advance_bytes(start, data) is not None:
                row[token >> 5] |= np.uint32(1 << (token & 31))
        return row

    def _inside_row(self, lexer: ContextualLexer, state: int) -> np.ndarray:
        """Tokens whose bytes all continue the current lexeme (shared by all lexers with the same members)."""
        key = lexer.members[state]
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = lexer.index.row(state)
        return row

    def _crossings_of(self, lexer: ContextualLexer, state: int) -> list["_Crossings"]:
        """Tokens that complete the lexeme strictly inside themselves, grouped by the completed terminals."""
        key = lexer.members[state]
        found = self._crossings.get(key)
        if found is not None:
            return found
        groups: dict[tuple, tuple[list, list, list]] = {}
        nodes, ends = lexer.index.accepting_nodes(state)
        for node, end in zip(nodes.tolist(), ends.tolist()):
            tokens, suffixes, first = self.vocab.rests(node)
            for ending, by_first_byte in self._ending_groups(lexer, end):
                sel = slice(None) if by_first_byte is None else by_first_byte[first]
                t, sf = tokens[sel], suffixes[sel]
                if not t.size:
                    continue
                g_nodes, g_tokens, g_suffixes = groups.setdefault(ending, ([], [], []))
                g_nodes.append(node)
                g_tokens.append(t)
                g_suffixes.append(sf)
        found = self._crossings[key] = [_Crossings.of(complete, n, t, sf) for complete, (n, t, sf) in groups.items()]
        return found

    def _ending_groups(self, lexer: ContextualLexer, state: int) -> list[tuple[tuple, np.ndarray | None]]:
        """The distinct non-empty endings of ``state`` with, for each, a [256] bool table of the next bytes it
        applies to (None: all of them)."""
        key = ("groups", lexer.id, state)
        out = self._endings.get(key)
        if out is None:
            distinct: dict[tuple, list[int]] = {}
            for byte, ending in enumerate(self._ending(lexer, state)):
                if ending:
                    distinct.setdefault(ending, []).append(byte)
            out = []
            for ending, first_bytes in distinct.items():
                table = None
                if len(first_bytes) < 256:
                    table = np.zeros(256, dtype=bool)
                    table[first_bytes] = True
                out.append((ending, table))
            self._endings[key] = out
        return out

    @staticmethod
    def _resolve_loops(row: np.ndarray, looping: list[_Crossings]) -> None:
        """Tokens whose rest must be allowed by this very mask: added until none is left to add (each rest is
        shorter than its token, so this ends). (Rests that are no token were walked by the caller.)"""
        while True:
            added = [g.known[g.rest_allowed(row) & ~g.allowed(row)] for g in looping]
            if not any(a.size for a in added):
                return
            _set_bits(row, added)

    def _subtree_tokens(self, node: int, config: Config) -> np.ndarray:
        """Tokens strictly below trie ``node`` whose bytes after the node can be read from ``config``."""
        found = self._subtree.get((node, config[1], config[2]), config[0])
        if found is not None:
            return found
        saved = self.parser.begin()
        trie = self.vocab.trie
        out: list[int] = []
        stack = [(node, frozenset({config}))]
        while stack:
            parent, configs = stack.pop()
            first, count = int(trie.first_child[parent]), int(trie.num_children[parent])
            children = range(first, first + count)
            if count > 16:  # many children (a space, a quote ...): keep those whose byte can be read at all
                live = self._live_bytes(configs)
                if live is not None:
                    children = (np.flatnonzero(live[trie.node_byte[first:first + count]]) + first).tolist()
            for child in children:
                nxt = self._step(configs, int(trie.node_byte[child]))
                if not nxt:
                    continue
                token = int(trie.node_token[child])
                if token >= 0:
                    out.append(token)
                    out.extend(self._duplicates.get(token, ()))
                if trie.num_children[child]:
                    stack.append((child, frozenset(nxt)))
        found = np.array(out, dtype=np.int64)
        self._subtree.put((node, config[1], config[2]), config[0], self.parser.end(saved), found)
        return found

    def _live_bytes(self, configs) -> np.ndarray | None:
        """``[256]`` bool: the bytes that continue a lexeme of some configuration; None where a lexeme may end
        (then a new one starts, and any byte may do)."""
        live = None
        for _, lexer_id, state in configs:
            lexer = self._lexers[lexer_id]
            if lexer.dfa.accepting[state]:
                return None
            row = lexer.live_rows[state]
            live = row if live is None else live | row
        return live

    @property
    def num_lexers(self) -> int:
        return len(self._lexers)

    @property
    def num_config_masks(self) -> int:
        """Configuration masks computed and still cached."""
        return len(self._config_masks)


def _set_bits(row: np.ndarray, groups: list[np.ndarray]) -> None:
    groups = [g for g in groups if g.size]
    if groups:
        ids = np.concatenate(groups) if len(groups) > 1 else groups[0]
        np.bitwise_or.at(row, ids >> 5, np.uint32(1) << (ids & 31).astype(np.uint32))
