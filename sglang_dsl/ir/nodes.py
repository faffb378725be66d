"""The node kinds of the IR: one frozen dataclass per kind, each with a short contract.

A program is a sequence of *nodes* placed on *streams*. The main stream is ``"main"``; a `Fork` named ``f`` with
``n`` branches opens the streams ``"f.0"`` ... ``"f.{n-1}"``, each starting with a copy of its parent's text and
variables at the fork. Every node has a graph-unique ``name`` (printed ``%name``) and the ``stream`` it appends to.

Data flow is explicit: a node that *reads* a value holds a `Ref` to the node that produced it, and the variable
it read. Producers are `Placeholder` (a program argument), `Gen` and `Select` (a generated variable), `ScopeEnd`
(the text captured by a variable scope) and `Join` (variables gathered from fork branches, as lists).

The kinds, by ``op``: ``placeholder``, ``text``, ``gen``, ``select``, ``role_begin``, ``role_end``, ``image``,
``fork``, ``join``, ``scope_begin``, ``scope_end``, ``boundary``. A `Boundary` ends the static part: the program's
Python control flow read a value that is only known at run time, so eager execution takes over from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Union

MAIN = "main"

# A constant the IR keeps: JSON scalars and tuples of them (tuples, not lists, so nodes stay hashable).
Value = Union[str, int, float, bool, None, tuple["Value", ...]]

JoinMode = Literal["gather_variable", "concate_and_append"]
JOIN_MODES: tuple[str, ...] = ("gather_variable", "concate_and_append")
ConstraintKind = Literal["regex", "json_schema", "dtype", "grammar"]
CONSTRAINT_KINDS: tuple[str, ...] = ("regex", "json_schema", "dtype", "grammar")


@dataclass(frozen=True)
class Ref:
    """A read of variable ``var`` (for a `Placeholder`: argument ``var``) as produced by the node named ``node``."""

    node: str
    var: str


@dataclass(frozen=True)
class Constraint:
    """What a `Gen`'s output must match: ``regex`` (a pattern), ``json_schema`` (JSON text), ``dtype``
    (``"int"``, ``"float"``, ``"str"`` or ``"bool"``, each standing for SGLang's regex for that type) or
    ``grammar`` (lark EBNF or GBNF text)."""

    kind: ConstraintKind
    value: str


@dataclass(frozen=True, kw_only=True)
class Node:
    """Base of all kinds. ``op`` names the kind; `reads` are the values it consumes; `writes` the variables it
    sets on its stream."""

    op: ClassVar[str]
    name: str
    stream: str = MAIN

    @property
    def reads(self) -> tuple[Ref, ...]:
        return ()

    @property
    def writes(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, kw_only=True)
class Placeholder(Node):
    """Program argument ``arg``, not given at trace time; its value is supplied when the graph runs. Placeholders
    come first, on the main stream, and produce the value read by ``Ref(name, arg)``."""

    op: ClassVar[str] = "placeholder"
    arg: str


@dataclass(frozen=True, kw_only=True)
class Text(Node):
    """Append text: the concatenation of ``parts``, where a `Ref` part stands for ``str()`` of the value read.
    Parts are never empty strings and two strings are never adjacent."""

    op: ClassVar[str] = "text"
    parts: tuple[str | Ref, ...]

    @property
    def reads(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))


@dataclass(frozen=True, kw_only=True)
class Gen(Node):
    """Generate text, append it, and store it as variable ``var`` (unless ``None``). ``params`` are only the
    sampling keys the program set, as ``(key, value)`` pairs sorted by key (names and normalized values as in
    `sglang_dsl.lang.params.SamplingParams`); unset keys inherit the run's defaults. ``constraint``, if any,
    restricts the output. (``gen(choices=...)`` is a select in the language, so it becomes a `Select`.)"""

    op: ClassVar[str] = "gen"
    var: str | None
    params: tuple[tuple[str, Value], ...] = ()
    constraint: Constraint | None = None

    @property
    def writes(self) -> tuple[str, ...]:
        return () if self.var is None else (self.var,)


@dataclass(frozen=True, kw_only=True)
class Select(Node):
    """Choose one of ``choices`` by scoring each continuation with ``method`` (a choices-method name) at
    ``temperature``; append the choice and store it as variable ``var`` (unless ``None``)."""

    op: ClassVar[str] = "select"
    var: str | None
    choices: tuple[str, ...]
    method: str
    temperature: float

    @property
    def writes(self) -> tuple[str, ...]:
        return () if self.var is None else (self.var,)


@dataclass(frozen=True, kw_only=True)
class RoleBegin(Node):
    """Open a chat turn of ``role`` (``system``, ``user``, ``assistant``); its template prefix is the backend's."""

    op: ClassVar[str] = "role_begin"
    role: str


@dataclass(frozen=True, kw_only=True)
class RoleEnd(Node):
    """Close the open chat turn of ``role``."""

    op: ClassVar[str] = "role_end"
    role: str


@dataclass(frozen=True, kw_only=True)
class Image(Node):
    """Attach the image read from the file at path ``source`` to the current turn."""

    op: ClassVar[str] = "image"
    source: str


@dataclass(frozen=True, kw_only=True)
class Fork(Node):
    """Open ``n`` branch streams ``"{name}.0"`` ... ``"{name}.{n-1}"``, each a copy of this stream here."""

    op: ClassVar[str] = "fork"
    n: int

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(f"{self.name}.{i}" for i in range(self.n))


@dataclass(frozen=True, kw_only=True)
class Join(Node):
    """Close the branches of the fork named ``fork`` (on this stream). ``gather_variable``: each of ``vars`` (the
    variables the branches set and this stream lacks) becomes a list, in branch order. ``concate_and_append``:
    the text each branch added is appended here, in branch order; ``vars`` is empty. No branch node follows."""

    op: ClassVar[str] = "join"
    fork: str
    mode: JoinMode
    vars: tuple[str, ...] = ()

    @property
    def writes(self) -> tuple[str, ...]:
        return self.vars


@dataclass(frozen=True, kw_only=True)
class ScopeBegin(Node):
    """Start capturing the text appended to this stream, for variable ``var``."""

    op: ClassVar[str] = "scope_begin"
    var: str


@dataclass(frozen=True, kw_only=True)
class ScopeEnd(Node):
    """Stop capturing, and store the text appended since the matching `ScopeBegin` as variable ``var``."""

    op: ClassVar[str] = "scope_end"
    var: str

    @property
    def writes(self) -> tuple[str, ...]:
        return (self.var,)


@dataclass(frozen=True, kw_only=True)
class Boundary(Node):
    """The end of the static part: here the program's Python code needed a run-time value (``needs``, empty when
    the cause is not a traced value), or did something the IR does not model. ``reason`` says what happened;
    ``line`` is the line offset in the program function's source (``0``: the first line of its definition), if
    known. Always the last node, on the main stream; eager execution of the program takes over from here."""

    op: ClassVar[str] = "boundary"
    reason: str
    needs: tuple[Ref, ...] = ()
    line: int | None = None

    @property
    def reads(self) -> tuple[Ref, ...]:
        return self.needs


NODE_KINDS: dict[str, type[Node]] = {
    kind.op: kind
    for kind in (Placeholder, Text, Gen, Select, RoleBegin, RoleEnd, Image, Fork, Join, ScopeBegin, ScopeEnd,
                 Boundary)
}
