"""The expressions a program appends to its state: ``s += "Q: " + question + gen("answer")``.

Primitives (``gen``, ``select``, roles, ``image``...) build these immutable values; ``+`` joins them (and plain
strings) into one flat `ExprList`. They only describe what to do: the interpreter (`sglang_dsl.lang.executor`)
runs them against a backend, the tracer (`sglang_dsl.ir`) records them as IR nodes.

The set is closed; every class is a frozen dataclass whose fields are the whole description of the node:

- `Text`: constant text.
- `Gen`: generate text with `SamplingParams`; stored as variable ``name`` when it has one.
- `Select`: pick one of ``choices`` by likelihood; stored as variable ``name`` when it has one.
- `RoleBegin` / `RoleEnd`: open and close a chat turn (``system``, ``user`` or ``assistant``).
- `Image`: an image attached to the current turn.
- `VarScopeBegin` / `VarScopeEnd`: the text appended between them becomes variable ``name``.
- `ExprList`: a sequence of the above, run in order.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Literal, Union

from sglang_dsl.lang.params import SamplingParams

if TYPE_CHECKING:
    from sglang_dsl.lang.choices import ChoicesSamplingMethod

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Expr:
    """Base of every expression. ``a + b`` (with ``b`` an expression or a string) is ``ExprList``."""

    __slots__ = ()

    def __add__(self, other: "ExprLike") -> "ExprList":
        return ExprList.of(self, other)

    def __radd__(self, other: "ExprLike") -> "ExprList":
        return ExprList.of(other, self)

    @property
    def label(self) -> str:
        """A short name of the node for messages, e.g. ``gen('answer')``."""
        return type(self).__name__.lower()

    def flat(self) -> Iterator["Expr"]:
        """The leaf expressions in execution order (itself, unless it is a list)."""
        yield self


ExprLike = Union[Expr, str]


def as_expr(value: ExprLike) -> Expr:
    """``value`` as an expression: strings become `Text`; anything else but an `Expr` is a ``TypeError``."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(f"a program can only append strings and sglang_dsl expressions, not {type(value).__name__} "
                    f"({value!r:.60}); convert it with str() first")


@dataclass(frozen=True)
class Text(Expr):
    value: str

    @property
    def label(self) -> str:
        return f"text({self.value!r:.40})"


@dataclass(frozen=True)
class Gen(Expr):
    """Continue the text. ``params`` holds only what this node sets; the rest comes from ``run()``."""

    name: str | None
    params: SamplingParams = SamplingParams()

    @property
    def label(self) -> str:
        return f"gen({self.name!r})" if self.name else "gen()"


@dataclass(frozen=True)
class Select(Expr):
    """Append the most likely of ``choices`` (or one sampled at ``temperature`` > 0), scored by
    ``choices_method``."""

    name: str | None
    choices: tuple[str, ...]
    temperature: float
    choices_method: "ChoicesSamplingMethod"

    @property
    def label(self) -> str:
        return f"select({self.name!r})" if self.name else "select()"


@dataclass(frozen=True)
class RoleBegin(Expr):
    role: str

    @property
    def label(self) -> str:
        return f"{self.role}_begin()"


@dataclass(frozen=True)
class RoleEnd(Expr):
    role: str

    @property
    def label(self) -> str:
        return f"{self.role}_end()"


@dataclass(frozen=True)
class Image(Expr):
    """Encoded image bytes (``mime`` type) and where they came from (``source``: a path, ``<bytes>``...)."""

    data: bytes
    mime: str
    source: str

    @property
    def label(self) -> str:
        return f"image({self.source!r})"

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.base64()}"


@dataclass(frozen=True)
class VarScopeBegin(Expr):
    name: str

    @property
    def label(self) -> str:
        return f"var_scope({self.name!r})"


@dataclass(frozen=True)
class VarScopeEnd(Expr):
    name: str

    @property
    def label(self) -> str:
        return f"var_scope_end({self.name!r})"


@dataclass(frozen=True)
class ExprList(Expr):
    """Expressions run one after the other. Never nested: `ExprList.of` flattens."""

    items: tuple[Expr, ...]

    @classmethod
    def of(cls, *values: ExprLike) -> "ExprList":
        items: list[Expr] = []
        for value in values:
            items.extend(as_expr(value).flat())
        return cls(tuple(items))

    @property
    def label(self) -> str:
        return " + ".join(item.label for item in self.items) or "[]"

    def flat(self) -> Iterator[Expr]:
        yield from self.items


def written_variables(expr: Expr) -> list[str]:
    """Names of the variables running ``expr`` sets, in order (a name may repeat)."""
    names: list[str] = []
    for leaf in expr.flat():
        if isinstance(leaf, (Gen, Select)) and leaf.name is not None:
            names.append(leaf.name)
        elif isinstance(leaf, VarScopeBegin):
            names.append(leaf.name)
    return names
