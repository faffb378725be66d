"""Regex -> byte-level DFA.

``interegular`` parses the regex into a pattern tree (after `normalize_regex` has checked and rewritten it). The
automaton is built here, in three steps, each linear in the size of its output:

1. **Character DFA.** The tree is turned into a Glushkov position automaton (one position per character-class
   occurrence, bounded repetitions unrolled) and determinized by subset construction. Characters are grouped
   into classes that every character set of the pattern treats alike (one class for "any character the pattern
   does not name"), so a state has one transition per class instead of one per character.
2. **Pruning.** States from which no accepting state can be reached are removed (a transition into one is no
   transition at all), so every state that remains can still be completed to a match.
3. **UTF-8 expansion.** Each character transition becomes byte transitions: ASCII characters are one byte; the
   others are laid out over UTF-8 lead and continuation bytes through intermediate states that are shared
   whenever they have the same transitions ("any continuation byte, then state s" exists once per s). Only
   well-formed UTF-8 is accepted: no overlong forms, no surrogates, nothing above U+10FFFF.

The result, `ByteDFA`, is a dense ``[S + 1, 256]`` table whose last row is the dead state.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property

import interegular
import numpy as np
from interegular import patterns as ip

from sglang_dsl.compiler.errors import ConstraintError, RegexError
from sglang_dsl.compiler.regex_syntax import normalize_regex

MAX_DFA_STATES = 200_000
_I, _S = ip.REFlags.CASE_INSENSITIVE, ip.REFlags.SINGLE_LINE
_DOT_TYPE, _EMPTY_TYPE = type(ip._DOT), type(ip._EMPTY)
_UTF8_LAYOUT = ((2, 0xC2, 0xDF, 0x1F, 6, 0x80), (3, 0xE0, 0xEF, 0x0F, 12, 0x800), (4, 0xF0, 0xF4, 0x07, 18, 0x10000))
_VALIDITY_BOUNDS = (0xD800, 0xE000, 0x110000)


@dataclass(frozen=True, eq=False)
class ByteDFA:
    """A deterministic automaton over bytes. ``transitions[s, b]`` is the state after byte ``b`` in state ``s``;
    the last row, ``dead``, is the state of no return (every live state can still reach an accepting one)."""

    transitions: np.ndarray  # int32 [S + 1, 256]
    accepting: np.ndarray  # bool [S + 1]
    initial: int

    @property
    def dead(self) -> int:
        return self.transitions.shape[0] - 1

    @property
    def num_states(self) -> int:
        """Live states (the dead state not counted)."""
        return self.transitions.shape[0] - 1

    def walk(self, state: int, data: bytes) -> int:
        t, dead = self.transitions, self.dead
        for b in data:
            state = int(t[state, b])
            if state == dead:
                return dead
        return state

    def matches(self, data: bytes | str) -> bool:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return bool(self.accepting[self.walk(self.initial, data)])

    @cached_property
    def live_bytes(self) -> np.ndarray:
        """``[S + 1]`` number of bytes that lead to a live state."""
        return (self.transitions != self.dead).sum(axis=1)

    @cached_property
    def terminal(self) -> np.ndarray:
        """``[S + 1]`` bool: accepting and nothing more can follow (the output is complete)."""
        return self.accepting & (self.live_bytes == 0)

    @cached_property
    def forced_byte(self) -> np.ndarray:
        """``[S + 1]`` int: the only byte a non-accepting state allows, or -1."""
        single = (self.live_bytes == 1) & ~self.accepting
        out = np.full(self.transitions.shape[0], -1, dtype=np.int64)
        rows = np.nonzero(single)[0]
        if rows.size:
            out[rows] = np.argmax(self.transitions[rows] != self.dead, axis=1)
        return out

    def forced_bytes(self, state: int, limit: int = 4096) -> bytes:
        """The bytes every match must continue with from ``state`` (empty if there is a choice or it may end)."""
        out = bytearray()
        forced = self.forced_byte
        while len(out) < limit:
            b = int(forced[state])
            if b < 0:
                break
            out.append(b)
            state = int(self.transitions[state, b])
        return bytes(out)


def regex_to_dfa(pattern: str) -> ByteDFA:
    """Compile ``pattern`` (full-match semantics). Raises `RegexError` for a malformed or unsupported regex and
    `ConstraintError` when it matches nothing or is too large."""
    normalized = normalize_regex(pattern)
    try:
        tree = interegular.parse_pattern(normalized)
    except (ip.Unsupported, ip.InvalidSyntax) as err:
        raise RegexError(pattern, 0, f"cannot be parsed: {err or type(err).__name__}") from None
    except RecursionError:
        raise RegexError(pattern, 0, "nested too deeply") from None
    chars = _CharDFA.from_tree(tree, pattern)
    dfa = chars.to_bytes()
    if dfa.initial == dfa.dead:
        raise ConstraintError(f"regex {pattern!r} matches no string")
    return dfa


# ---- step 1: pattern tree -> character DFA ------------------------------------------------------------------


@dataclass(frozen=True)
class _CharSet:
    chars: frozenset
    negated: bool

    def __contains__(self, char: str) -> bool:
        return (char in self.chars) != self.negated


class _Glushkov:
    """Positions (character-set occurrences), their follow sets, and the pattern's first/last/nullable."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.sets: list[_CharSet] = []
        self.follow: list[set[int]] = []

    def position(self, charset: _CharSet) -> tuple[bool, set[int], set[int]]:
        p = len(self.sets)
        self.sets.append(charset)
        self.follow.append(set())
        if len(self.sets) > MAX_DFA_STATES:
            raise ConstraintError(f"regex is too large (more than {MAX_DFA_STATES} character positions)")
        return False, {p}, {p}

    def link(self, last: set[int], first: set[int]) -> None:
        if first:
            for p in last:
                self.follow[p] |= first

    def build(self, node, flags) -> tuple[bool, set[int], set[int]]:
        if isinstance(node, ip.Pattern):
            flags = (flags | node.added_flags) & ~node.removed_flags
            nullable, first, last = False, set(), set()
            for option in node.options:
                n, f, l = self.build(option, flags)
                nullable, first, last = nullable or n, first | f, last | l
            return nullable, first, last
        if isinstance(node, ip._Concatenation):
            nullable, first, last = True, set(), set()
            for part in node.parts:
                if isinstance(part, ip._NonCapturing):
                    raise RegexError(self.pattern, 0, "look-around is not supported")
                n, f, l = self.build(part, flags)
                self.link(last, f)
                first = first | f if nullable else first
                last = last | l if n else l
                nullable = nullable and n
            return nullable, first, last
        if isinstance(node, ip._Repeated):
            return self.repeat(node.base, node.min, node.max, flags)
        if isinstance(node, ip._CharGroup):
            chars = node.chars
            if flags & _I:
                chars = frozenset({*(c.lower() for c in chars), *(c.upper() for c in chars)})
                chars = frozenset(c for c in chars if len(c) == 1)
            return self.position(_CharSet(chars, node.negated))
        if isinstance(node, _DOT_TYPE):
            return self.position(_CharSet(frozenset() if flags & _S else frozenset("\n"), True))
        if isinstance(node, _EMPTY_TYPE):
            return True, set(), set()
        raise RegexError(self.pattern, 0, f"unsupported construct {type(node).__name__}")

    def repeat(self, base, low: int, high: int | None, flags) -> tuple[bool, set[int], set[int]]:
        return self.repeat_copies(lambda: self.build(base, flags), low, high)

    def repeat_copies(self, copy, low: int, high: int | None) -> tuple[bool, set[int], set[int]]:
        """``low`` to ``high`` copies in a row, each from ``copy()`` (which builds one and returns its nullable,
        first and last). The optional copies nest, ``(x(x(x)?)?)?``: each is entered only from the one before,
        so the links stay linear in the number of copies (``x?x?x?`` would link every copy to all later ones)."""
        nullable, first, last = True, set(), set()
        for _ in range(low):  # mandatory copies
            n, f, l = copy()
            self.link(last, f)
            first = first | f if nullable else first
            last = last | l if n else l
            nullable = nullable and n
        if high is None:  # then a star
            n, f, l = copy()
            self.link(l, f)
            self.link(last, f)
            first = first | f if nullable else first
            return nullable, first, last | l
        entry, reach_start, out = last, nullable, set(last)  # entry: positions the next copy follows
        for _ in range(high - low):
            n, f, l = copy()
            self.link(entry, f)
            if reach_start:
                first = first | f
            reach_start = reach_start and n
            entry = l | entry if n else l
            out |= l
        return nullable, first, out


@dataclass
class _CharDFA:
    table: list[list[int]]  # [state][class] -> state, -1 for none
    accepting: list[bool]
    partition: "_Partition"  # code point -> class

    @classmethod
    def from_tree(cls, tree, pattern: str) -> "_CharDFA":
        g = _Glushkov(pattern)
        nullable, first, last = g.build(tree, ip.REFlags(0))
        return cls.from_positions(g, nullable, first, last)

    @classmethod
    def from_positions(cls, g: _Glushkov, nullable: bool, first: set[int], last: set[int]) -> "_CharDFA":
        """Determinize the position automaton ``g`` (with the whole pattern's nullable/first/last) and prune."""
        partition, masks = _classes(g.sets)
        num_classes = partition.num_classes
        bits = {m: _bits(m) for m in set(masks)}
        classes_of = [bits[m] for m in masks]  # per position: the character classes it matches
        start = frozenset({-1})
        follow = g.follow
        states: dict[frozenset, int] = {start: 0}
        order = [start]
        table: list[list[int]] = []
        accepting: list[bool] = []
        i = 0
        while i < len(order):
            current = order[i]
            i += 1
            if current is start:
                candidates = first
                accepting.append(nullable)
            else:
                candidates = set().union(*(follow[p] for p in current))
                accepting.append(not current.isdisjoint(last))
            row = [-1] * num_classes
            by_class: dict[int, list[int]] = {}
            for p in sorted(candidates):
                for c in classes_of[p]:
                    by_class.setdefault(c, []).append(p)
            for c in sorted(by_class):
                nxt = frozenset(by_class[c])
                target = states.get(nxt)
                if target is None:
                    target = states[nxt] = len(order)
                    order.append(nxt)
                    if len(order) > MAX_DFA_STATES:
                        raise ConstraintError(f"regex is too large (more than {MAX_DFA_STATES} automaton states)")
                row[c] = target
            table.append(row)
        return cls(table, accepting, partition)._pruned()

    def _pruned(self) -> "_CharDFA":
        """Drop states that cannot reach an accepting state (and those no longer reachable), renumbered in
        breadth-first order from the initial state 0."""
        n = len(self.table)
        reverse: list[list[int]] = [[] for _ in range(n)]
        for s, row in enumerate(self.table):
            for t in row:
                if t >= 0:
                    reverse[t].append(s)
        live = [False] * n
        stack = [s for s in range(n) if self.accepting[s]]
        for s in stack:
            live[s] = True
        while stack:
            for p in reverse[stack.pop()]:
                if not live[p]:
                    live[p] = True
                    stack.append(p)
        if not live[0]:
            return _CharDFA([], [], self.partition)
        renumber = {0: 0}
        order = [0]
        for s in order:
            for t in self.table[s]:
                if t >= 0 and live[t] and t not in renumber:
                    renumber[t] = len(order)
                    order.append(t)
        table = [[renumber[t] if t >= 0 and live[t] else -1 for t in self.table[s]] for s in order]
        return _CharDFA(table, [self.accepting[s] for s in order], self.partition)

    # ---- step 3: UTF-8 expansion ------------------------------------------------------------------------------

    def to_bytes(self) -> ByteDFA:
        n = len(self.table)
        if n == 0:
            return ByteDFA(np.zeros((1, 256), dtype=np.int32), np.zeros(1, dtype=bool), 0)
        rows: list[dict[int, int]] = []  # byte transitions of intermediate states (index n + i)
        interned: dict[tuple, int] = {}
        DEAD = -1

        def intern(children: tuple) -> int:
            if all(t == DEAD for t in children):
                return DEAD
            state = interned.get(children)
            if state is None:
                state = interned[children] = n + len(rows)
                rows.append({0x80 + c: t for c, t in enumerate(children) if t != DEAD})
            return state

        chains: dict[tuple[int, int], int] = {}

        def chain(target: int, remaining: int) -> int:
            if remaining == 0 or target == DEAD:
                return target
            key = (target, remaining)
            state = chains.get(key)
            if state is None:
                state = chains[key] = intern((chain(target, remaining - 1),) * 64)
            return state

        def lead_transitions(starts: list[int], targets: list[int]) -> dict[int, int]:
            """UTF-8 lead byte -> state for the piecewise-constant code point -> target map given by
            (starts, targets)."""

            def constant(lo: int, hi: int) -> int | None:
                i = bisect_right(starts, lo) - 1
                if i + 1 < len(starts) and starts[i + 1] <= hi:
                    return None
                return targets[i]

            def node(lo: int, remaining: int, minimum: int) -> int:
                hi = lo + (1 << (6 * remaining)) - 1
                if hi < minimum or lo >= 0x110000 or (lo >= 0xD800 and hi < 0xE000):
                    return DEAD
                straddles = lo < minimum <= hi or any(lo < b <= hi for b in _VALIDITY_BOUNDS)
                if not straddles:
                    t = constant(lo, hi)
                    if t is not None:
                        return chain(t, remaining)
                step = 1 << (6 * (remaining - 1))
                return intern(tuple(node(lo + c * step, remaining - 1, minimum) for c in range(64)))

            out = {}
            for _, first_lead, last_lead, payload_mask, shift, minimum in _UTF8_LAYOUT:
                for lead in range(first_lead, last_lead + 1):
                    t = node((lead & payload_mask) << shift, shift // 6, minimum)
                    if t != DEAD:
                        out[lead] = t
            return out

        leads_of: dict[tuple, dict[int, int]] = {}  # code point map -> lead transitions (states share them)
        part = self.partition
        table = np.full((n, 256), -1, dtype=np.int64)  # -1: no transition
        table[:, :128] = np.array(self.table, dtype=np.int64)[:, part.classes_of(np.arange(128))]
        wide_starts, wide_classes = part.above(0x80)
        for s in range(n):
            row = self.table[s]
            starts, targets = [0], [DEAD]  # the ASCII range is done above
            for start, k in zip(wide_starts, wide_classes):
                if targets[-1] != row[k]:
                    starts.append(start)
                    targets.append(row[k])
            if len(targets) == 1:
                continue
            key = (tuple(starts), tuple(targets))
            leads = leads_of.get(key)
            if leads is None:
                leads = leads_of[key] = lead_transitions(starts, targets)
            out = table[s]
            for lead, t in leads.items():
                out[lead] = t
        total = n + len(rows)
        full = np.full((total + 1, 256), total, dtype=np.int32)
        full[:n] = np.where(table < 0, total, table)
        for i, r in enumerate(rows):
            for b, t in r.items():
                full[n + i, b] = t
        acc = np.zeros(total + 1, dtype=bool)
        acc[:n] = self.accepting
        return ByteDFA(full, acc, 0)


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of ``mask``, ascending."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


@dataclass(frozen=True)
class _Partition:
    """Code points in classes that every character set of a pattern treats alike, as intervals: interval ``i``
    is ``[starts[i], starts[i + 1])`` (the last one ends at 0x110000) and its class is ``classes[i]``."""

    starts: np.ndarray  # int64, ascending, starts[0] == 0
    classes: np.ndarray  # int64
    num_classes: int

    def classes_of(self, code_points: np.ndarray) -> np.ndarray:
        return self.classes[np.searchsorted(self.starts, code_points, side="right") - 1]

    def above(self, low: int) -> tuple[list[int], list[int]]:
        """The intervals from ``low`` up: (starts, classes), the first one clipped to start at ``low``."""
        i = int(np.searchsorted(self.starts, low, side="right")) - 1
        starts = [low, *self.starts[i + 1:].tolist()]
        return starts, self.classes[i:].tolist()


def _runs(chars: frozenset) -> list[tuple[int, int]]:
    """The characters as maximal runs of consecutive code points ``[low, high)``, ascending."""
    if len(chars) > 4096:  # a large range: numpy
        points = np.sort(np.fromiter(map(ord, chars), dtype=np.int64, count=len(chars)))
        breaks = np.flatnonzero(np.diff(points) != 1) + 1
        lows = points[np.concatenate(([0], breaks))]
        highs = points[np.concatenate((breaks - 1, [points.size - 1]))] + 1
        return list(zip(lows.tolist(), highs.tolist()))
    runs: list[list[int]] = []
    for cp in sorted(map(ord, chars)):
        if runs and runs[-1][1] == cp:
            runs[-1][1] = cp + 1
        else:
            runs.append([cp, cp + 1])
    return [(low, high) for low, high in runs]


def _classes(sets: list[_CharSet]) -> tuple[_Partition, list[int]]:
    """Group code points that every set treats alike: the partition into classes, and per set (position) a
    bitmask of the classes it contains. Sets arrive as (possibly huge) character sets; classes are intervals, so
    a range such as ``[一-龥]`` costs its ends, not its 20,000 characters."""
    distinct: dict[_CharSet, int] = {}
    for charset in sets:
        distinct.setdefault(charset, len(distinct))
    runs = {charset: _runs(charset.chars) for charset in distinct}
    bounds = sorted({0, 0x110000, *(b for rs in runs.values() for r in rs for b in r)})
    index = {b: i for i, b in enumerate(bounds)}
    signature = [0] * (len(bounds) - 1)  # per elementary interval: the sets containing it, as bits
    for charset, j in distinct.items():
        for low, high in runs[charset]:
            for i in range(index[low], index[high]):
                signature[i] |= 1 << j
    class_ids: dict[int, int] = {}
    starts, classes = [], []
    for i, sig in enumerate(signature):
        if i == 0 or sig != signature[i - 1]:  # neighbours with the same signature merge
            starts.append(bounds[i])
            classes.append(class_ids.setdefault(sig, len(class_ids)))
    masks = {charset: sum(1 << k for sig, k in class_ids.items() if ((sig >> j) & 1) != charset.negated)
             for charset, j in distinct.items()}
    partition = _Partition(np.array(starts, dtype=np.int64), np.array(classes, dtype=np.int64), len(class_ids))
    return partition, [masks[charset] for charset in sets]
