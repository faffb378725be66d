"""Languages of JSON texts as a small tree, for the JSON-schema compiler: regex fragments, sequences,
alternatives, repetitions, intersections and differences (``Meet``, ``Minus``: what ``pattern`` with
``maxLength``, ``not`` or keys outside ``patternProperties`` need), and references to rules (recursive
``$ref``).

A tree without references compiles to one byte DFA (`schema_automaton.py`); a tree with references to an
LALR(1) grammar (`schema_grammar.py`). `to_regex` writes a tree back as regex text where it can (no ``Meet``,
``Minus`` or ``Ref``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_dsl.compiler.regex_syntax import top_level_branches


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
        return None if None in parts else "".join(f"({p})" if len(top_level_branches(p)) > 1 else p for p in parts)
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


def _escape(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?{}[]\|()/" else c for c in text)
