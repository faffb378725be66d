"""`schema_ir` trees without references as byte DFAs: regex fragments go through the Glushkov builder of
`automaton.py` (parsed by interegular); a ``Meet`` / ``Minus`` is determinized on its own (a subset construction
over one position set per operand, accepting where the operands' acceptance says so) and spliced into the
surrounding automaton as positions, one per transition; `SepList` and `Members` are built with one copy of
each part."""

from __future__ import annotations

from functools import lru_cache

import interegular
from interegular import patterns as ip

from sglang_dsl.compiler.automaton import MAX_DFA_STATES, ByteDFA, _CharDFA, _CharSet, _classes, _Glushkov
from sglang_dsl.compiler.errors import ConstraintError
from sglang_dsl.compiler.schema_ir import NOTHING, Alt, Meet, Members, Minus, Node, Re, Ref, Rep, SepList, Seq


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
