"""Languages of JSON texts as a small tree, for the JSON-schema compiler: regex fragments, sequences,
alternatives, repetitions, intersections and differences (``Meet``, ``Minus``: what ``pattern`` with
``maxLength``, ``not`` or keys outside ``patternProperties`` need), and references to rules (recursive
``$ref``).

A tree without references compiles to one byte DFA (`to_dfa`): regex fragments go through the Glushkov builder
of `automaton.py`; a ``Meet`` / ``Minus`` is determinized on its own (a subset construction over one state set
per operand) and then spliced into the surrounding automaton as positions, one per transition. A tree with
references compiles to an LALR(1) grammar instead (`schema_grammar.py`). `to_regex` writes a tree back as regex
text where it can (no ``Meet``, ``Minus`` or ``Ref``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import interegular
from interegular import patterns as ip

from sglang_dsl.compiler.automaton import MAX_DFA_STATES, ByteDFA, _CharDFA, _CharSet, _classes, _Glushkov
from sglang_dsl.compiler.errors import ConstraintError


class Node:
    """A language of texts (immutable, hashable)."""


@dataclass(frozen=True)
class Re(Node):
    text: str  # a regex fragment (interegular syntax, already normalized)


@dataclass(frozen=True)
class Seq(Node):
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Alt(Node):
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Rep(Node):
    item: Node
    low: int
    high: int | None


@dataclass(frozen=True)
class Meet(Node):
    """Texts in every part (parts without references)."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Minus(Node):
    """Texts of ``base`` that are not in ``removed`` (neither with references)."""

    base: Node
    removed: Node


@dataclass(frozen=True)
class SepList(Node):
    """One or more ``item``s with ``sep`` between them; built with one copy of each (linear in size)."""

    item: Node
    sep: Node


@dataclass(frozen=True)
class Members(Node):
    """Object members in order, each ``(member, required)``, optional ones left out or not, commas only between
    members written, then any number of ``other`` members (NOTHING: none). Built with one copy of each member
    (a regex of the same language repeats the later members once per optional member before them)."""

    members: tuple[tuple[Node, bool], ...]
    other: Node
    comma: Node

    def expanded(self) -> Node:
        """The same language from sequences and alternatives."""
        n = len(self.members)
        more = EMPTY if self.other == NOTHING else Rep(seq(self.comma, self.other), 0, None)
        after = more
        first = EMPTY if self.other == NOTHING else opt(SepList(self.other, self.comma))
        for member, required in reversed(self.members):
            step = seq(self.comma, member)
            written = seq(member, after)
            after = seq(step if required else opt(step), after)
            first = written if required else alt(written, first)
        return first


@dataclass(frozen=True)
class Ref(Node):
    """The rule ``name`` (only grammars have rules)."""

    name: str


EMPTY = Seq(())
NOTHING = Alt(())


def seq(*parts: Node) -> Node:
    flat: list[Node] = []
    for p in parts:
        if p == NOTHING:
            return NOTHING
        flat.extend(p.parts if isinstance(p, Seq) else (p,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(*options: Node) -> Node:
    flat: list[Node] = []
    for o in options:
        flat.extend(o.options if isinstance(o, Alt) else (o,))
    flat = list(dict.fromkeys(flat))
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def opt(node: Node) -> Node:
    return node if node == EMPTY else (EMPTY if node == NOTHING else Rep(node, 0, 1))


def lit(text: str) -> Node:
    """The literal ``text``."""
    return Re(_escape(text)) if text else EMPTY


def refs(node: Node) -> frozenset[str]:
    """Names of the rules ``node`` refers to."""
    if isinstance(node, Ref):
        return frozenset({node.name})
    children = _children(node)
    return frozenset().union(*map(refs, children)) if children else frozenset()


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, SepList):
        return (node.item, node.sep)
    if isinstance(node, Members):
        return (node.expanded(),)
    if isinstance(node, (Seq,)):
        return node.parts
    if isinstance(node, (Alt,)):
        return node.options
    if isinstance(node, Meet):
        return node.parts
    if isinstance(node, Rep):
        return (node.item,)
    if isinstance(node, Minus):
        return (node.base, node.removed)
    return ()


# ---- regex text -------------------------------------------------------------------------------------------------


def to_regex(node: Node) -> str | None:
    """The tree as regex text, or None when it has a ``Meet``, ``Minus`` or ``Ref``."""
    if isinstance(node, Re):
        return node.text
    if isinstance(node, SepList):
        return to_regex(seq(node.item, Rep(seq(node.sep, node.item), 0, None)))
    if isinstance(node, Members):
        return to_regex(node.expanded())
    if isinstance(node, Seq):
        parts = [to_regex(p) for p in node.parts]
        return None if None in parts else "".join(f"({p})" if _top_level_bar(p) else p for p in parts)
    if isinstance(node, Alt):
        options = [to_regex(o) for o in node.options]
        if None in options:
            return None
        return "(" + "|".join(options) + ")" if options else "[^\\x00-\\U0010ffff]"
    if isinstance(node, Rep):
        item = to_regex(node.item)
        if item is None:
            return None
        count = {(0, 1): "?", (0, None): "*", (1, None): "+"}.get((node.low, node.high))
        if count is None:
            count = f"{{{node.low},}}" if node.high is None else (
                f"{{{node.low}}}" if node.low == node.high else f"{{{node.low},{node.high}}}")
        return f"({item}){count}"
    return None


def _top_level_bar(text: str) -> bool:
    depth, i = 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(text, i)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


def _class_end(text: str, start: int) -> int:
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text) and text[i] != "]":
        i += 2 if text[i] == "\\" else 1
    return i


def _escape(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?{}[]\|()/" else c for c in text)


# ---- automata ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _parsed(text: str):
    try:
        return interegular.parse_pattern(text)
    except (ip.Unsupported, ip.InvalidSyntax) as err:
        raise ConstraintError(f"regex {text!r} cannot be parsed: {err or type(err).__name__}") from None


class _TreeGlushkov(_Glushkov):
    """The Glushkov builder over trees: fragments parsed by interegular, ``Meet``/``Minus`` determinized apart
    and spliced in."""

    def node(self, node: Node) -> tuple[bool, set[int], set[int]]:
        if isinstance(node, Re):
            return self.build(_parsed(node.text), ip.REFlags(0))
        if isinstance(node, Seq):
            nullable, first, last = True, set(), set()
            for part in node.parts:
                n, f, l = self.node(part)
                self.link(last, f)
                first = first | f if nullable else first
                last = last | l if n else l
                nullable = nullable and n
            return nullable, first, last
        if isinstance(node, Alt):
            nullable, first, last = False, set(), set()
            for option in node.options:
                n, f, l = self.node(option)
                nullable, first, last = nullable or n, first | f, last | l
            return nullable, first, last
        if isinstance(node, Rep):
            return self.repeat_node(node)
        if isinstance(node, SepList):
            n, f, l = self.node(node.item)
            sn, sf, sl = self.node(node.sep)
            self.link(l, sf)
            self.link(sl, f)
            if sn:
                self.link(l, f)
            return n, f, l
        if isinstance(node, Members):
            return self.members(node)
        if isinstance(node, (Meet, Minus)):
            return self.splice(_combined(node))
        raise ConstraintError(f"a reference ({node}) cannot be part of an automaton")

    def repeat_node(self, node: Rep) -> tuple[bool, set[int], set[int]]:
        return self.repeat_copies(lambda: self.node(node.item), node.low, node.high)

    def members(self, node: Members) -> tuple[bool, set[int], set[int]]:
        """`Members` with one copy of each member and of the comma before it: after member j come the commas of
        the members up to the next required one (and of the other members), at the start the members up to the
        first required one."""
        built = [(self.node(m), self.node(node.comma), required) for m, required in node.members]
        items = list(built)
        if node.other != NOTHING:
            items.append((self.node(node.other), self.node(node.comma), False))
        other_at = len(built) if node.other != NOTHING else None
        first: set[int] = set()
        nullable = True
        for k, ((_, f, _), _, required) in enumerate(items):  # what may be written first
            if nullable:
                first |= f
            nullable = nullable and not required
        last: set[int] = set()
        for j, ((_, _, l), _, _) in enumerate(items):
            reachable_end = True
            for k in range(j + 1, len(items)):
                (_, f, _), (_, cf, cl), required = items[k]
                self.link(l, cf)
                self.link(cl, f)
                if required:
                    reachable_end = False
                    break
            if other_at is not None and j == other_at:  # another other member
                (_, f, _), (_, cf, cl), _ = items[j]
                self.link(l, cf)
                self.link(cl, f)
            if reachable_end:
                last |= l
        return nullable, first, last

    def splice(self, dfa: _CharDFA) -> tuple[bool, set[int], set[int]]:
        """A character DFA as positions: one per (state, next state) pair, labelled with the characters that
        lead there; a position follows another when the first's target is the second's source."""
        if not dfa.table:
            return False, set(), set()
        sets = _class_sets(dfa)
        positions: dict[tuple[int, int], int] = {}
        out_of: dict[int, list[int]] = {}
        for s, row in enumerate(dfa.table):
            targets: dict[int, list[int]] = {}
            for c, t in enumerate(row):
                if t >= 0:
                    targets.setdefault(t, []).append(c)
            for t, classes in targets.items():
                _, (p,), _ = self.position(_union(sets, classes))
                positions[s, t] = p
                out_of.setdefault(s, []).append(p)
        for (s, t), p in positions.items():
            self.link({p}, set(out_of.get(t, ())))
        first = set(out_of.get(0, ()))
        last = {p for (s, t), p in positions.items() if dfa.accepting[t]}
        return dfa.accepting[0], first, last


def _class_sets(dfa: _CharDFA) -> list[tuple[list[tuple[int, int]], int]]:
    """Per character class of ``dfa``: its code-point intervals and their total size."""
    part = dfa.partition
    starts = part.starts.tolist() + [0x110000]
    out: list[tuple[list, int]] = [([], 0) for _ in range(part.num_classes)]
    for i, k in enumerate(part.classes.tolist()):
        runs, size = out[k]
        runs.append((starts[i], starts[i + 1]))
        out[k] = (runs, size + starts[i + 1] - starts[i])
    return out


def _union(sets: list, classes: list[int]) -> _CharSet:
    runs = [r for c in classes for r in sets[c][0]]
    size = sum(sets[c][1] for c in classes)
    if size <= 0x110000 // 2:
        return _CharSet(frozenset(chr(cp) for lo, hi in runs for cp in range(lo, hi)), False)
    covered = sorted(runs)
    missing, at = [], 0
    for lo, hi in covered:
        missing.extend(chr(cp) for cp in range(at, lo))
        at = hi
    missing.extend(chr(cp) for cp in range(at, 0x110000))
    return _CharSet(frozenset(missing), True)


@lru_cache(maxsize=1024)
def _combined(node: Node) -> _CharDFA:
    """A ``Meet`` or ``Minus`` as a pruned character DFA: subset construction over one position set per operand,
    accepting where the operands' acceptance says so."""
    operands = node.parts if isinstance(node, Meet) else (node.base, node.removed)
    g = _TreeGlushkov(repr(node)[:80])
    built = [g.node(o) for o in operands]
    partition, masks = _classes(g.sets)
    classes_of = [_bits_of(m) for m in masks]
    wanted = (lambda acc: all(acc)) if isinstance(node, Meet) else (lambda acc: acc[0] and not acc[1])
    start = tuple(frozenset({-1}) for _ in operands)
    states, order, table, accepting = {start: 0}, [start], [], []
    for current in order:
        accepts, candidates = [], []
        for (nullable, first, last), members in zip(built, current):
            if members == frozenset({-1}):
                accepts.append(nullable)
                candidates.append(first)
            else:
                accepts.append(not members.isdisjoint(last))
                candidates.append(set().union(*(g.follow[p] for p in members)))
        accepting.append(wanted(accepts))
        by_class: dict[int, list[set[int]]] = {}
        for i, cands in enumerate(candidates):
            for p in cands:
                for c in classes_of[p]:
                    by_class.setdefault(c, [set() for _ in operands])[i].add(p)
        row = [-1] * partition.num_classes
        for c, members in by_class.items():
            if isinstance(node, Meet) and not all(members):
                continue
            if isinstance(node, Minus) and not members[0]:
                continue
            nxt = tuple(frozenset(m) for m in members)
            target = states.get(nxt)
            if target is None:
                target = states[nxt] = len(order)
                order.append(nxt)
                if len(order) > MAX_DFA_STATES:
                    raise ConstraintError(f"automaton too large (more than {MAX_DFA_STATES} states)")
            row[c] = target
        table.append(row)
    return _CharDFA(table, accepting, partition)._pruned()


def _bits_of(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def to_dfa(node: Node) -> ByteDFA:
    """The byte DFA of a tree without references (the dead-only DFA when the language is empty)."""
    g = _TreeGlushkov(repr(node)[:80])
    nullable, first, last = g.node(node)
    return _CharDFA.from_positions(g, nullable, first, last).to_bytes()


def is_empty(node: Node) -> bool:
    """Whether the language of a tree without references is empty."""
    dfa = to_dfa(node)
    return dfa.initial == dfa.dead


def nullable(node: Node) -> bool:
    """Whether the tree matches the empty text (rules are taken as not nullable: callers never ask)."""
    if isinstance(node, Re):
        return _TreeGlushkov(node.text).node(node)[0]
    if isinstance(node, Seq):
        return all(map(nullable, node.parts))
    if isinstance(node, Alt):
        return any(map(nullable, node.options))
    if isinstance(node, Rep):
        return node.low == 0 or nullable(node.item)
    if isinstance(node, SepList):
        return nullable(node.item)
    if isinstance(node, Members):
        return nullable(node.expanded())
    if isinstance(node, Ref):
        return False
    return bool(_combined(node).accepting[:1] == [True])
