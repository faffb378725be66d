"""A grammar text (lark EBNF, or llama.cpp GBNF converted to it) read by ``lark``: its terminals as byte DFAs
(through the regex pipeline) and its LALR(1) table in plain Python, for `grammar.GrammarMatcher`."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO

import numpy as np

from sglang_dsl.compiler.automaton import ByteDFA, regex_to_dfa
from sglang_dsl.compiler.errors import ConstraintError, GrammarError
from sglang_dsl.compiler.gbnf import gbnf_to_lark, is_gbnf

# lark's common.lark spells these with a look-behind, which no automaton supports: equivalent plain regexes
_COMMON_REPLACEMENTS = {
    "ESCAPED_STRING": r'"([^"\\\n]|\\[^\n])*"',
    "_STRING_ESC_INNER": r'([^"\\\n]|\\[^\n])*',
}


@dataclass(frozen=True)
class Terminal:
    """A terminal: its lark name, its regex, and that regex as a byte DFA."""

    name: str
    regex: str
    dfa: ByteDFA


@dataclass(frozen=True, eq=False)
class Grammar:
    """A grammar's terminals (as DFAs), its LALR table in plain Python, and its ignored terminals."""

    source: str
    terminals: tuple[Terminal, ...]
    ignore: frozenset[int]
    actions: tuple[dict, ...]  # per LALR state: symbol -> (True, next state) | (False, (pop count, nonterminal))
    start_state: int
    end_state: int

    def save(self, f: BinaryIO) -> None:
        """Write the grammar as .npy records: a JSON header, then each terminal's transitions and accepting states
        (no pickles: `load` runs no code from the file)."""
        header = {"source": self.source, "ignore": sorted(self.ignore), "start_state": self.start_state,
                  "end_state": self.end_state, "actions": [list(a.items()) for a in self.actions],
                  "terminals": [[t.name, t.regex, t.dfa.initial] for t in self.terminals]}
        np.save(f, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), allow_pickle=False)
        for t in self.terminals:
            np.save(f, t.dfa.transitions, allow_pickle=False)
            np.save(f, t.dfa.accepting, allow_pickle=False)

    @classmethod
    def load(cls, f: BinaryIO) -> "Grammar":
        """The grammar `save` wrote (raises on a damaged file)."""
        header = json.loads(np.load(f, allow_pickle=False).tobytes())
        terminals = tuple(
            Terminal(name, regex, ByteDFA(np.load(f, allow_pickle=False), np.load(f, allow_pickle=False), initial))
            for name, regex, initial in header["terminals"])
        actions = tuple({symbol: (shift, arg if shift else tuple(arg)) for symbol, (shift, arg) in items}
                        for items in header["actions"])
        return cls(header["source"], terminals, frozenset(header["ignore"]), actions, header["start_state"],
                   header["end_state"])


def check_grammar(text: str) -> None:
    """Parse the grammar and compile its terminals (fast; cached). Raises `GrammarError`."""
    load_grammar(text)


@lru_cache(maxsize=64)
def load_grammar(text: str) -> Grammar:
    if not isinstance(text, str) or not text.strip():
        raise GrammarError("a grammar must be non-empty text")
    source = gbnf_to_lark(text) if is_gbnf(text) else text
    parser = _lark_parser(source)
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
        terminals.append(Terminal(term.name, regex, dfa))
    return _with_table(source, parser, terminals)


def grammar_with_terminals(source: str, dfas: dict[str, ByteDFA]) -> Grammar:
    """The grammar ``source`` (lark EBNF) whose terminals' automata are given (``source`` names each terminal
    with a placeholder pattern; ``dfas`` maps terminal names to their real automata). Raises `GrammarError`."""
    parser = _lark_parser(source)
    return _with_table(source, parser, [Terminal(t.name, t.pattern.to_regexp(), dfas[t.name])
                                        for t in parser.terminals])


def _lark_parser(source: str):
    import lark
    from lark.exceptions import GrammarError as LarkGrammarError
    from lark.exceptions import LarkError

    try:
        with _no_lark_collision_checks():
            parser = lark.Lark(source, parser="lalr", lexer="basic", start="start")
    except LarkGrammarError as err:
        message = str(err).strip()
        if "conflict" in message.lower() or "collision" in message.lower():
            raise GrammarError(f"grammar is not LALR(1): {message}") from None
        raise GrammarError(f"grammar: {message}") from None
    except LarkError as err:
        raise GrammarError(f"grammar does not parse: {str(err).strip()}") from None
    return parser


def _with_table(source: str, parser, terminals: list[Terminal]) -> Grammar:
    for t in terminals:
        if t.dfa.accepting[t.dfa.initial]:
            raise GrammarError(f"terminal {t.name} matches the empty string")
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


_LARK_LOCK = threading.Lock()


@contextmanager
def _no_lark_collision_checks():
    """lark checks every pair of regex terminals for overlaps with interegular when it builds a lexer, its own
    grammar-of-grammars' lexer included (once per process): 0.3 s of warnings that change nothing (our lexers
    follow every split). lark reads the switch from a module global, so it is turned off while lark builds."""
    import lark.lexer

    with _LARK_LOCK:
        saved = lark.lexer.has_interegular
        lark.lexer.has_interegular = False
        try:
            yield
        finally:
            lark.lexer.has_interegular = saved
