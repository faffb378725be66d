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
  that node are checked further. A boundary at the very start of a token (the lexeme is already complete) reuses
  the next configuration's own mask. The parser is never copied per vocabulary token. Masks are cached per
  configuration and per state.

Grammars must be LALR(1) at the terminal level (lark reports conflicts) and terminals must not match the empty
string. Recursion is fine: the parser stack is unbounded.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from sglang_dsl.compiler.automaton import ByteDFA, regex_to_dfa
from sglang_dsl.compiler.errors import ConstraintError, GrammarError
from sglang_dsl.compiler.token_index import TokenIndex, packed_words
from sglang_dsl.compiler.vocabulary import Vocabulary

MAX_CONFIGURATIONS = 64  # parallel lexing/parsing hypotheses kept per state (each one completable)
MAX_LEXER_STATES = 50_000
CACHE_ITEMS = 2048  # masks kept per matcher (each V/8 bytes); other per-stack caches are cleared past 64x this
MAX_MASK_DEPTH = 4  # configurations whose masks are computed one inside the other; deeper, tokens are walked

# lark's common.lark spells these with a look-behind, which no automaton supports: equivalent plain regexes
_COMMON_REPLACEMENTS = {
    "ESCAPED_STRING": r'"([^"\\\n]|\\[^\n])*"',
    "_STRING_ESC_INNER": r'([^"\\\n]|\\[^\n])*',
}


# ---- loading ------------------------------------------------------------------------------------------------


def is_gbnf(text: str) -> bool:
    return "::=" in text


@dataclass(frozen=True)
class _Terminal:
    name: str
    regex: str
    dfa: ByteDFA


@dataclass(frozen=True, eq=False)
class Grammar:
    """A grammar's terminals (as DFAs), its LALR table in plain Python, and its ignored terminals."""

    source: str
    terminals: tuple[_Terminal, ...]
    ignore: frozenset[int]
    actions: tuple[dict, ...]  # per LALR state: symbol -> (True, next state) | (False, (pop count, nonterminal))
    start_state: int
    end_state: int

    @property
    def terminal_index(self) -> dict[str, int]:
        return {t.name: i for i, t in enumerate(self.terminals)}


def check_grammar(text: str) -> None:
    """Parse the grammar and compile its terminals (fast; cached). Raises `GrammarError`."""
    load_grammar(text)


@lru_cache(maxsize=64)
def load_grammar(text: str) -> Grammar:
    if not isinstance(text, str) or not text.strip():
        raise GrammarError("a grammar must be non-empty text")
    source = gbnf_to_lark(text) if is_gbnf(text) else text
    import lark
    from lark.exceptions import GrammarError as LarkGrammarError
    from lark.exceptions import LarkError

    try:
        parser = lark.Lark(source, parser="lalr", lexer="basic", start="start")
    except LarkGrammarError as err:
        message = str(err).strip()
        if "conflict" in message.lower() or "collision" in message.lower():
            raise GrammarError(f"grammar is not LALR(1): {message}") from None
        raise GrammarError(f"grammar: {message}") from None
    except LarkError as err:
        raise GrammarError(f"grammar does not parse: {str(err).strip()}") from None
    terminals = []
    for term in parser.terminals:
        regex = _COMMON_REPLACEMENTS.get(term.name) or term.pattern.to_regexp()
        flags = "".join(sorted(term.pattern.flags))
        if flags:
            regex = f"(?{flags}:{regex})"
        try:
            dfa = regex_to_dfa(regex)
        except ConstraintError as err:
            raise GrammarError(f"terminal {term.name}: {err}") from None
        if dfa.accepting[dfa.initial]:
            raise GrammarError(f"terminal {term.name} matches the empty string")
        terminals.append(_Terminal(term.name, regex, dfa))
    table = parser.parser.parser.parser.parse_table
    states = {}
    for state, row in table.states.items():
        actions = {}
        for symbol, (action, arg) in row.items():
            if action.name == "Shift":
                actions[symbol] = (True, arg)
            else:
                actions[symbol] = (False, (len(arg.expansion), arg.origin.name))
        states[state] = actions
    n = max(states) + 1
    names = {t.name: i for i, t in enumerate(terminals)}
    return Grammar(
        source=source,
        terminals=tuple(terminals),
        ignore=frozenset(names[name] for name in parser.ignore_tokens if name in names),
        actions=tuple(states.get(i, {}) for i in range(n)),
        start_state=table.start_states["start"],
        end_state=table.end_states["start"],
    )


def compile_grammar(text: str, vocab: Vocabulary) -> "GrammarMatcher":
    """A matcher for the grammar, with the mask of its start state computed (time to first mask = compile)."""
    matcher = GrammarMatcher(load_grammar(text), vocab)
    matcher.mask(matcher.start())
    return matcher


# ---- the parser -------------------------------------------------------------------------------------------------


class _Parser:
    """LALR stacks as tuples; feeding a terminal gives a new tuple (or None), cached."""

    def __init__(self, grammar: Grammar):
        self.g = grammar
        self.names = [t.name for t in grammar.terminals]
        self._feed: dict[tuple, tuple | None] = {}
        self._acceptable: dict[tuple, frozenset[int]] = {}
        self._end: dict[tuple, bool] = {}

    def clear(self) -> None:
        self._feed.clear()
        self._acceptable.clear()
        self._end.clear()

    def feed(self, stack: tuple, terminal: int) -> tuple | None:
        key = (stack, terminal)
        if key not in self._feed:
            self._feed[key] = self._run(stack, self.names[terminal])
        return self._feed[key]

    def _run(self, stack: tuple, symbol: str, end: bool = False):
        actions = self.g.actions
        while True:
            action = actions[stack[-1]].get(symbol)
            if action is None:
                return None
            shift, arg = action
            if shift:
                return stack + (arg,)
            size, origin = arg
            if size:
                stack = stack[:-size]
            goto = actions[stack[-1]].get(origin)
            if goto is None:
                return None
            stack = stack + (goto[1],)
            if end and stack[-1] == self.g.end_state:
                return stack

    def acceptable(self, stack: tuple) -> frozenset[int]:
        out = self._acceptable.get(stack)
        if out is None:
            candidates = [i for i, name in enumerate(self.names) if name in self._reachable_symbols(stack)]
            out = self._acceptable[stack] = frozenset(i for i in candidates if self.feed(stack, i) is not None)
        return out

    def _reachable_symbols(self, stack: tuple):
        # terminals with any action in the top state, or (after reductions) further down: try them all, cheaply
        return self.names

    def accepts_end(self, stack: tuple) -> bool:
        out = self._end.get(stack)
        if out is None:
            out = self._end[stack] = self._run(stack, "$END", end=True) is not None
        return out


# ---- lexers -----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Lexer:
    """The union of some terminals as one byte DFA; a state is the set of (terminal, terminal state) pairs the
    partial lexeme is in. ``complete[s]``: terminals the lexeme matches in full at ``s``."""

    id: int
    terms: tuple[int, ...]
    dfa: ByteDFA
    complete: list[tuple[int, ...]]
    members: list[tuple]  # per state: ((terminal, terminal state), ...), which alone decides what can follow
    index: TokenIndex


def _build_lexer(lexer_id: int, terms: tuple[int, ...], grammar: Grammar, vocab: Vocabulary) -> _Lexer:
    dfas = [grammar.terminals[t].dfa for t in terms]
    start = tuple((i, d.initial) for i, d in enumerate(dfas))
    states = {start: 0}
    order = [start]
    rows: list[np.ndarray] = []
    complete: list[tuple[int, ...]] = []
    i = 0
    while i < len(order):
        members = order[i]
        i += 1
        complete.append(tuple(sorted(terms[k] for k, s in members if dfas[k].accepting[s])))
        row = np.full(256, -1, dtype=np.int64)
        nexts = np.stack([dfas[k].transitions[s] for k, s in members]) if members else np.zeros((0, 256), np.int64)
        alive = nexts != np.array([dfas[k].dead for k, _ in members])[:, None] if members else nexts.astype(bool)
        for b in np.nonzero(alive.any(axis=0))[0].tolist():
            target = tuple((members[j][0], int(nexts[j, b])) for j in np.nonzero(alive[:, b])[0].tolist())
            state = states.get(target)
            if state is None:
                state = states[target] = len(order)
                order.append(target)
                if len(order) > MAX_LEXER_STATES:
                    raise GrammarError(f"the terminals {', '.join(grammar.terminals[t].name for t in terms)} "
                                       f"make a lexer of more than {MAX_LEXER_STATES} states")
            row[b] = state
        rows.append(row)
    n = len(order)
    table = np.stack(rows) if rows else np.zeros((0, 256), np.int64)
    transitions = np.full((n + 1, 256), n, dtype=np.int32)
    transitions[:n] = np.where(table < 0, n, table)
    accepting = np.zeros(n + 1, dtype=bool)
    accepting[:n] = [bool(c) for c in complete]
    dfa = ByteDFA(transitions, accepting, 0)
    index = TokenIndex.build(dfa, vocab, lazy=True, eos=False, check=False)
    members = [tuple(sorted((terms[k], s) for k, s in m)) for m in order]
    return _Lexer(lexer_id, terms, dfa, complete, members, index)


# ---- the matcher ------------------------------------------------------------------------------------------------

Config = tuple  # (stack: tuple[int, ...], lexer id: int, lexer state: int)


class GrammarMatcher:
    """Matcher for a `Grammar`; a state is a frozenset of configurations."""

    def __init__(self, grammar: Grammar, vocab: Vocabulary):
        self.grammar = grammar
        self.vocab = vocab
        self.parser = _Parser(grammar)
        self.words = packed_words(vocab.size)
        self._lexers: list[_Lexer] = []
        self._lexer_ids: dict[frozenset[int], int] = {}
        self._context: dict[tuple, int] = {}
        self._config_masks: OrderedDict[Config, np.ndarray] = OrderedDict()
        self._state_masks: OrderedDict[frozenset, np.ndarray] = OrderedDict()
        self._rows: dict[tuple, np.ndarray] = {}  # lexer-state members -> tokens that stay inside the lexeme
        self._crossings: dict[tuple, list] = {}  # lexer-state members -> tokens that end the lexeme inside them
        self._after: dict[tuple, list] = {}
        self._endings: dict[tuple, list] = {}
        self._byte_masks: dict[frozenset, np.ndarray] = {}
        self._in_progress: set = set()
        self._subtree: dict[tuple, tuple[int, ...]] = {}
        self._lock = threading.RLock()
        dups: dict[int, list[int]] = {}
        for primary, dup in vocab.trie.duplicates:
            dups.setdefault(primary, []).append(dup)
        self._duplicates = dups
        self._eos = [t for t in vocab.eos_token_ids if 0 <= t < vocab.size]
        self.start()  # builds the first lexer: fails early on an unusable grammar

    # ---- configurations ---------------------------------------------------------------------------------------

    def _lexer(self, terms: frozenset[int]) -> _Lexer:
        lexer_id = self._lexer_ids.get(terms)
        if lexer_id is None:
            lexer_id = len(self._lexers)
            self._lexers.append(_build_lexer(lexer_id, tuple(sorted(terms)), self.grammar, self.vocab))
            self._lexer_ids[terms] = lexer_id
        return self._lexers[lexer_id]

    def _fresh(self, stack: tuple) -> Config:
        """The configuration at the start of a lexeme after ``stack``."""
        lexer_id = self._context.get(stack)
        if lexer_id is None:
            terms = self.parser.acceptable(stack) | self.grammar.ignore
            lexer_id = self._context[stack] = self._lexer(terms).id
        return (stack, lexer_id, 0)

    def _after_lexeme(self, stack: tuple, lexer: _Lexer, state: int) -> list[Config]:
        """Configurations starting a new lexeme once the current one ends in lexer ``state``."""
        return self._after_complete(stack, lexer.complete[state])

    def _after_complete(self, stack: tuple, complete: tuple[int, ...]) -> list[Config]:
        key = (stack, complete)
        out = self._after.get(key)
        if out is None:
            found = []
            for term in complete:
                if term in self.grammar.ignore:
                    found.append(self._fresh(stack))
                    continue
                nxt = self.parser.feed(stack, term)
                if nxt is not None:
                    found.append(self._fresh(nxt))
            out = self._after[key] = list(dict.fromkeys(found))
        return out

    def _ending(self, lexer: _Lexer, state: int) -> list[tuple[int, ...]]:
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
        return self.advance_bytes(state, data)

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
        row = self.mask(state).copy()
        for eos in self._eos:
            row[eos >> 5] &= ~np.uint32(1 << (eos & 31))
        return not row.any() and self.accepting(state)

    def mask(self, state: frozenset) -> np.ndarray:
        with self._lock:
            row = self._state_masks.get(state)
            if row is not None:
                self._state_masks.move_to_end(state)
                return row
            row = np.zeros(self.words, dtype=np.uint32)
            for config in state:
                row |= self._config_mask(config)
            if any(self._can_end(c) for c in state):
                for eos in self._eos:
                    row[eos >> 5] |= np.uint32(1 << (eos & 31))
            self._remember(self._state_masks, state, row)
            return row

    def forced(self, state: frozenset, limit: int = 256) -> bytes:
        """Bytes every continuation starts with (none where the output may end)."""
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

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        if len(cache) > CACHE_ITEMS:
            cache.popitem(last=False)
        if len(self._after) > 64 * CACHE_ITEMS:  # stacks of a long-running server: start afresh
            self._after.clear()
            self._context.clear()
            self.parser.clear()

    def _config_mask(self, config: Config) -> np.ndarray | None:
        """Tokens allowed in one configuration (packed, no EOS). None while that very mask is being computed
        further up (a cycle through the grammar) or when masks already nest `MAX_MASK_DEPTH` deep (a grammar can
        have infinitely many configurations, e.g. stacks of unary minus signs): callers then check their few
        tokens directly."""
        row = self._config_masks.get(config)
        if row is not None:
            return row
        if config in self._in_progress or len(self._in_progress) >= MAX_MASK_DEPTH:
            return None
        self._in_progress.add(config)
        try:
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
            looping: list[tuple[np.ndarray, np.ndarray]] = []  # crossings that lead back to this configuration
            for complete, nodes, starts, tokens, suffixes, by_length in self._crossings_of(lexer, state):
                for nxt in self._after_complete(stack, complete):
                    if nxt == config:  # e.g. an ignored space before anything: resolved below, shortest first
                        looping.append(by_length)
                        unknown = suffixes < 0
                        if unknown.any():  # rests that are no token: walked (that needs no mask)
                            for node in self._nodes_of(nodes, starts, unknown):
                                found.append(np.asarray(self._subtree_tokens(node, nxt), dtype=np.int64))
                        continue
                    sub = self._config_mask(nxt)
                    if sub is None:  # a cycle or too deep: walk the trie below each crossing node
                        for node in nodes.tolist():
                            found.append(np.asarray(self._subtree_tokens(node, nxt), dtype=np.int64))
                        continue
                    # the rest of the token is (almost always) a token itself: look it up in nxt's mask
                    known = suffixes >= 0
                    found.append(tokens[known & _bits(sub, suffixes)])
                    unknown = ~known
                    if unknown.any():
                        for node in self._nodes_of(nodes, starts, unknown):
                            found.append(np.asarray(self._subtree_tokens(node, nxt), dtype=np.int64))
            _set_bits(row, found)
            if looping:
                self._resolve_loops(row, looping)
        finally:
            self._in_progress.discard(config)
        self._remember(self._config_masks, config, row)
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

    def _inside_row(self, lexer: _Lexer, state: int) -> np.ndarray:
        """Tokens whose bytes all continue the current lexeme (shared by all lexers with the same members)."""
        key = lexer.members[state]
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = lexer.index.row(state)
        return row

    def _crossings_of(self, lexer: _Lexer, state: int) -> list:
        """Tokens that complete the lexeme strictly inside themselves, grouped by the completed terminals: for
        each group (completed terminals, crossing trie nodes, where each node's tokens start in the arrays, token
        ids, ids of the rest of each token or -1)."""
        key = lexer.members[state]
        found = self._crossings.get(key)
        if found is not None:
            return found
        groups: dict[tuple, tuple[list, list, list, list]] = {}
        nodes, ends = lexer.index.accepting_nodes(state)
        for node, end in zip(nodes.tolist(), ends.tolist()):
            tokens, suffixes, first = self.vocab.rests(node)
            for ending, by_first_byte in self._ending_groups(lexer, end):
                sel = slice(None) if by_first_byte is None else by_first_byte[first]
                t, sf = tokens[sel], suffixes[sel]
                if not t.size:
                    continue
                g_nodes, g_starts, g_tokens, g_suffixes = groups.setdefault(ending, ([], [], [], []))
                g_nodes.append(node)
                g_starts.append(sum(x.size for x in g_tokens))
                g_tokens.append(t)
                g_suffixes.append(sf)
        found = []
        for complete, (n, st, t, sf) in groups.items():
            tokens, suffixes = np.concatenate(t), np.concatenate(sf)
            order = np.argsort(self.vocab.lengths[tokens], kind="stable")  # for `_resolve_loops`
            lengths = self.vocab.lengths[tokens[order]]
            runs = np.flatnonzero(np.diff(lengths)) + 1
            by_length = (tokens[order], suffixes[order], np.concatenate([[0], runs, [lengths.size]]))
            found.append((complete, np.array(n, dtype=np.int64), np.array(st, dtype=np.int64), tokens, suffixes,
                          by_length))
        self._crossings[key] = found
        return found

    def _ending_groups(self, lexer: _Lexer, state: int) -> list[tuple[tuple, np.ndarray | None]]:
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
    def _nodes_of(nodes: np.ndarray, starts: np.ndarray, selected: np.ndarray) -> list[int]:
        """The crossing nodes of the selected entries of a group."""
        return np.unique(nodes[np.searchsorted(starts, np.nonzero(selected)[0], "right") - 1]).tolist()

    def _resolve_loops(self, row: np.ndarray, looping: list) -> None:
        """Tokens whose rest must be allowed by this very mask: decided shortest first, each by its rest (a
        shorter token, already decided). (Rests that are no token were walked by the caller.)"""
        if len(looping) > 1:  # several groups loop back: merge them by length
            tokens = np.concatenate([g[0] for g in looping])
            suffixes = np.concatenate([g[1] for g in looping])
            order = np.argsort(self.vocab.lengths[tokens], kind="stable")
            tokens, suffixes = tokens[order], suffixes[order]
            lengths = self.vocab.lengths[tokens]
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(lengths)) + 1, [lengths.size]])
        else:
            tokens, suffixes, bounds = looping[0]
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            t, sf = tokens[lo:hi], suffixes[lo:hi]
            ok = _bits(row, sf)
            if ok.any():
                _set_bits(row, [t[ok]])

    def _subtree_tokens(self, node: int, config: Config) -> tuple[int, ...]:
        """Tokens strictly below trie ``node`` whose bytes after the node can be read from ``config``."""
        key = (node, config)
        found = self._subtree.get(key)
        if found is not None:
            return found
        trie = self.vocab.trie
        out: list[int] = []
        stack = [(node, frozenset({config}))]
        while stack:
            parent, configs = stack.pop()
            first, count = int(trie.first_child[parent]), int(trie.num_children[parent])
            for child in range(first, first + count):
                nxt = self._step(configs, int(trie.node_byte[child]))
                if not nxt:
                    continue
                token = int(trie.node_token[child])
                if token >= 0:
                    out.append(token)
                    out.extend(self._duplicates.get(token, ()))
                if trie.num_children[child]:
                    stack.append((child, frozenset(nxt)))
        found = self._subtree[key] = tuple(out)
        if len(self._subtree) > CACHE_ITEMS:
            self._subtree.clear()
        return found

    @property
    def num_lexers(self) -> int:
        return len(self._lexers)


def _bits(row: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each token id (>= 0; negative ids read as False) is set in a packed row."""
    safe = np.where(ids >= 0, ids, 0)
    return (ids >= 0) & (((row[safe >> 5] >> (safe & 31).astype(np.uint32)) & 1) == 1)


def _set_bits(row: np.ndarray, groups: list[np.ndarray]) -> None:
    groups = [g for g in groups if g.size]
    if groups:
        ids = np.concatenate(groups) if len(groups) > 1 else groups[0]
        np.bitwise_or.at(row, ids >> 5, np.uint32(1) << (ids & 31).astype(np.uint32))


# ---- GBNF -> lark -----------------------------------------------------------------------------------------------

_GBNF_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*) |
    (?P<define>::=) |
    (?P<name>[a-zA-Z_][a-zA-Z0-9_-]*) |
    (?P<string>"(?:[^"\\]|\\.)*") |
    (?P<charclass>\[(?:[^\]\\]|\\.)*\]) |
    (?P<dot>\.) |
    (?P<repeat>\{\s*\d*\s*(?:,\s*\d*\s*)?\}) |
    (?P<op>[()|*+?])
""", re.VERBOSE | re.DOTALL)


def _gbnf_unescape(body: str, where: str) -> str:
    """GBNF escapes resolved: for a string, the characters; for a character class, regex text."""
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^",
              "/": "/"}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c if where == "string" or c not in "/" else "\\/")
            i += 1
            continue
        e = body[i + 1] if i + 1 < len(body) else ""
        if e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2: i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise GrammarError(f"GBNF: bad escape \\{e}{digits}")
            ch = chr(int(digits, 16))
            out.append(ch if where == "string" else f"\\U{ord(ch):08x}" if ord(ch) > 0xFFFF else f"\\u{ord(ch):04x}")
            i += 2 + width
        elif e in simple:
            if where == "string":
                out.append(simple[e])
            else:
                out.append("\\" + e)
            i += 2
        else:
            raise GrammarError(f"GBNF: unknown escape \\{e}")
    return "".join(out)


def gbnf_to_lark(text: str) -> str:
    """A llama.cpp GBNF grammar as lark EBNF: rule names lower-cased with ``-`` -> ``_``, ``root`` -> ``start``,
    literals as lark strings, character classes and ``.`` as inline regexes, ``{m,n}`` as ``~ m..n``."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = _GBNF_TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise GrammarError(f"GBNF: unexpected {text[pos:pos + 10]!r} at line {line}")
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))

    def rule_name(name: str) -> str:
        return "start" if name == "root" else "r_" + name.lower().replace("-", "_")

    rules: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(tokens):
        if tokens[i][0] != "name" or i + 1 >= len(tokens) or tokens[i + 1][0] != "define":
            raise GrammarError(f"GBNF: expected `name ::=`, got {tokens[i][1]!r}")
        name = rule_name(tokens[i][1])
        i += 2
        body: list[str] = []
        while i < len(tokens) and not (tokens[i][0] == "name" and i + 1 < len(tokens) and tokens[i + 1][0] == "define"):
            kind, value = tokens[i]
            if kind == "name":
                body.append(rule_name(value))
            elif kind == "string":
                literal = _gbnf_unescape(value[1:-1], "string")
                body.append(_lark_string(literal) if literal else '""')
            elif kind == "charclass":
                inner = value[1:-1]
                negate = inner.startswith("^")
                inner = _gbnf_unescape(inner[1:] if negate else inner, "class")
                body.append("/[" + ("^" if negate else "") + inner + "]/")
            elif kind == "dot":
                body.append("/(?s:.)/")
            elif kind == "repeat":
                m = re.fullmatch(r"\{\s*(\d*)\s*(,\s*(\d*)\s*)?\}", value)
                low = int(m.group(1) or 0)
                high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                atom = _last_atom(body)
                if high is None:  # {m,}: m copies, then any number more
                    body.append(f"({atom}) ~ {low} ({atom})*" if low else f"({atom})*")
                elif high == 0:
                    pass
                else:
                    body.append(f"({atom}) ~ {low}..{high}" if low != high else f"({atom}) ~ {low}")
            else:
                body.append(value)
            i += 1
        if '""' in body:
            body = [b for b in body if b != '""']
        rules.append((name, body))
    if not any(name == "start" for name, _ in rules):
        raise GrammarError("GBNF: the grammar has no `root` rule")
    return "\n".join(f"{name}: {' '.join(body) if body else ''}" for name, body in rules) + "\n"


def _lark_string(literal: str) -> str:
    escaped = "".join(
        "\\\\" if c == "\\" else '\\"' if c == '"' else c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
        else f"\\u{ord(c):04x}" for c in literal)
    return f'"{escaped}"'


def _last_atom(body: list[str]) -> str:
    """The last atom of ``body`` (a group from its ``(`` on, or one element), removed from ``body``."""
    if body and body[-1] == ")":
        depth = 0
        for k in range(len(body) - 1, -1, -1):
            depth += body[k] == ")"
            depth -= body[k] == "("
            if depth == 0:
                atom = " ".join(body[k:])
                del body[k:]
                return atom
    atom = body.pop()
    return atom
