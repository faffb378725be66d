"""LALR(1) parser stacks for the grammar matcher, and a cache keyed by the part of a stack a value read.

A stack is a tuple of LALR states; feeding a terminal gives a new tuple. Every answer also records the lowest
stack position it read, so that a value computed from a stack (a token mask) can be kept under just the top of
the stack it depends on and found again at any nesting depth below (`StackTopCache`).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

_UNREAD = sys.maxsize  # lowest stack position read, when none was


class LalrStacks:
    """LALR stacks as tuples; feeding a terminal gives a new tuple (or None), cached.

    Every answer also records the lowest stack position it read: an answer found for one stack holds for every
    stack with the same entries from that position up. ``low`` gathers that position over a larger computation
    (`begin` / `end`), so that the matcher can key a mask by the part of the stack it depends on."""

    def __init__(self, actions: tuple[dict, ...], names: list[str], end_state: int):
        self.actions = actions  # per LALR state: symbol -> (True, next state) | (False, (pop count, nonterminal))
        self.names = names  # terminal names by index
        self.end_state = end_state
        self.low = _UNREAD
        self._feed: dict[tuple, tuple] = {}
        self._acceptable: dict[tuple, tuple] = {}
        self._end: dict[tuple, tuple] = {}

    def clear(self) -> None:
        self._feed.clear()
        self._acceptable.clear()
        self._end.clear()

    def begin(self) -> int:
        """Start measuring the lowest position read; returns what to hand to `end`."""
        saved, self.low = self.low, _UNREAD
        return saved

    def end(self, saved: int) -> int:
        """The lowest position read since the matching `begin` (which the enclosing measurement also gets)."""
        low = self.low
        self.low = min(saved, low)
        return low

    def note(self, low: int) -> None:
        if low < self.low:
            self.low = low

    def feed(self, stack: tuple, terminal: int) -> tuple | None:
        key = (stack, terminal)
        found = self._feed.get(key)
        if found is None:
            found = self._feed[key] = self._run(stack, self.names[terminal])
        self.note(found[1])
        return found[0]

    def _run(self, stack: tuple, symbol: str, end: bool = False) -> tuple[tuple | None, int]:
        """The stack after ``symbol`` (or None), and the lowest position read."""
        actions = self.actions
        low = len(stack) - 1
        while True:
            action = actions[stack[-1]].get(symbol)
            if action is None:
                return None, low
            shift, arg = action
            if shift:
                return stack + (arg,), low
            size, origin = arg
            if size:
                stack = stack[:-size]
                low = min(low, len(stack) - 1)
            goto = actions[stack[-1]].get(origin)
            if goto is None:
                return None, low
            stack = stack + (goto[1],)
            if end and stack[-1] == self.end_state:
                return stack, low

    def acceptable(self, stack: tuple) -> frozenset[int]:
        found = self._acceptable.get(stack)
        if found is None:
            saved = self.begin()
            terms = frozenset(i for i in range(len(self.names)) if self.feed(stack, i) is not None)
            found = self._acceptable[stack] = (terms, self.end(saved))
        else:
            self.note(found[1])
        return found[0]

    def accepts_end(self, stack: tuple) -> bool:
        found = self._end.get(stack)
        if found is None:
            result, low = self._run(stack, "$END", end=True)
            found = self._end[stack] = (result is not None, low)
        self.note(found[1])
        return found[0]


class StackTopCache:
    """Values computed from a parser stack, each kept under the top of the stack it read (from the lowest
    position read up): a stack with the same top finds it, at any depth below. LRU, ``limit`` entries."""

    def __init__(self, parser: LalrStacks, limit: int):
        self.parser = parser
        self.limit = limit
        self._values: OrderedDict[tuple, Any] = OrderedDict()
        self._depths: dict[Any, set[int]] = {}  # key -> sizes of the tops kept under it

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key, stack: tuple) -> Any:
        """The value kept for ``key`` and a top of ``stack``, or None; its read is noted on the parser."""
        for depth in self._depths.get(key, ()):
            if depth <= len(stack):
                full = (key, stack[len(stack) - depth:])
                value = self._values.get(full)
                if value is not None:
                    self._values.move_to_end(full)
                    self.parser.note(len(stack) - depth)
                    return value
        return None

    def put(self, key, stack: tuple, low: int, value) -> None:
        """Keep ``value``, computed for ``key`` and ``stack`` reading positions ``low`` and up."""
        depth = len(stack) - min(low, len(stack))
        self._depths.setdefault(key, set()).add(depth)
        self._values[(key, stack[len(stack) - depth:])] = value
        if len(self._values) > self.limit:
            self._values.popitem(last=False)
