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


Rule = tuple[str, tuple[str, ...]]  # (nonterminal, the symbols it expands to)
Item = tuple[int, str | None, tuple[str, ...]]  # (symbols before the dot, rule's nonterminal, symbols after)


@dataclass(frozen=True, eq=False)
class Grammar:
    """A grammar's terminals (as DFAs), its LALR table in plain Python, and its ignored terminals; also its rules
    and, per LALR state, the kernel items (rules part-way read: how many symbols were read, what is left), which
    tell how an output can be completed from a parser stack (`grammar_budget.py`). The start state's item
    ``(0, None, ("start",))`` stands for the whole output."""

    source: str
    terminals: tuple[Terminal, ...]
    ignore: frozenset[int]
    actions: tuple[dict, ...]  # per LALR state: symbol -> (True, next state) | (False, (pop count, nonterminal))
    start_state: int
    end_state: int
    rules: tuple[Rule, ...]
    items: tuple[tuple[Item, ...], ...]

    def save(self, f: BinaryIO) -> None:
        """Write the grammar as .npy records: a JSON header, then each terminal's transitions and accepting states
        (no pickles: `load` runs no code from the file)."""
        header = {"source": self.source, "ignore": sorted(self.ignore), "start_state": self.start_state,
                  "end_state": self.end_state, "actions": [list(a.items()) for a in self.actions],
                  "rules": self.rules, "items": self.items,
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
        rules = tuple((origin, tuple(expansion)) for origin, expansion in header["rules"])
        items = tuple(tuple((pop, origin, tuple(rest)) for pop, origin, rest in state) for state in header["items"])
        return cls(header["source"], terminals, frozenset(header["ignore"]), actions, header["start_state"],
                   header["end_state"], rules, items)


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
    actions = tuple(states.get(i, {}) for i in range(n))
    rules = tuple((str(r.origin.name), tuple(str(x.name) for x in r.expansion)) for r in parser.rules)
    return Grammar(
        source=source,
        terminals=tuple(terminals),
        ignore=frozenset(names[name] for name in parser.ignore_tokens if name in names),
        actions=actions,
        start_state=table.start_states["start"],
        end_state=table.end_states["start"],
        rules=rules,
        items=kernel_items(rules, actions, table.start_states["start"]),
    )


def kernel_items(rules: tuple[Rule, ...], actions: tuple[dict, ...], start_state: int) -> tuple[tuple[Item, ...], ...]:
    """The LR(0) kernel items of every LALR state, recovered from the table's shifts and gotos: an item with
    symbol X after its dot, in state p, moves its dot past X in the state p shifts X to."""
    by_origin: dict[str, list[int]] = {}
    for index, (origin, _) in enumerate(rules):
        by_origin.setdefault(origin, []).append(index)
    root = (None, ("start",))
    every = (*rules, root)
    kernels: list[set[tuple[int, int]]] = [set() for _ in actions]
    kernels[start_state].add((len(rules), 0))
    pending = [start_state]
    while pending:
        state = pending.pop()
        for rule, dot in _closure(kernels[state], every, by_origin):
            expansion = every[rule][1]
            if dot == len(expansion):
                continue
            action = actions[state].get(expansion[dot])
            if action is not None and action[0] and (rule, dot + 1) not in kernels[action[1]]:
                kernels[action[1]].add((rule, dot + 1))
                pending.append(action[1])
    root_index = len(rules)  # read past "start" only in the end state, where the parser accepts
    return tuple(tuple(sorted(((dot, every[rule][0], every[rule][1][dot:]) for rule, dot in kernel
                               if (rule == root_index) == (dot == 0)), key=repr)) for kernel in kernels)


def _closure(kernel: set[tuple[int, int]], rules: tuple, by_origin: dict[str, list[int]]) -> set[tuple[int, int]]:
    items, pending = set(kernel), list(kernel)
    while pending:
        rule, dot = pending.pop()
        expansion = rules[rule][1]
        if dot < len(expansion):
            for index in by_origin.get(expansion[dot], ()):
                if (index, 0) not in items:
                    items.add((index, 0))
                    pending.append((index, 0))
    return items


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
