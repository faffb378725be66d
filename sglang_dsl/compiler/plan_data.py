"""Plans are data: frozen dataclasses of scalars, tuples and nested plans, to and from JSON exactly.

`to_json` writes a plan (its class name under ``"plan"``, then its fields); `from_json` reads it back into the
class given, rebuilding nested dataclasses and tuples from the field types, so ``from_json(cls, to_json(p)) ==
p``. Malformed input raises `PlanFormatError` naming the field."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class PlanFormatError(ValueError):
    """JSON that is not a plan of the expected class; the message names the field."""


class PlanJson:
    """Mixin for plan dataclasses: ``plan.to_json()`` and ``Plan.from_json(text)``."""

    def to_json(self, indent: int | None = 2) -> str:
        return to_json(self, indent)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return from_json(cls, text)


def to_json(plan: Any, indent: int | None = 2) -> str:
    return json.dumps({"plan": type(plan).__name__, **_data(plan)}, indent=indent, ensure_ascii=False)


def from_json(cls: type[T], text: str) -> T:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanFormatError(f"not JSON: {err}") from None
    if not isinstance(data, dict) or data.pop("plan", None) != cls.__name__:
        raise PlanFormatError(f"not a {cls.__name__} (its JSON starts with \"plan\": \"{cls.__name__}\")")
    return _build(cls, data, cls.__name__)


def _data(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_data(v) for v in value]
    return value


def _build(kind: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return _build_dataclass(kind, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _build(option, value, where)
            except PlanFormatError:
                continue
        raise PlanFormatError(f"{where}: {value!r} is none of {', '.join(map(_name, options))}")
    if origin is tuple:
        if not isinstance(value, list):
            raise PlanFormatError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise PlanFormatError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is typing.Literal:
        if value not in args:
            raise PlanFormatError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Any or (isinstance(kind, type) and isinstance(value, kind) and
                       not (kind is int and isinstance(value, bool))):
        return value
    raise PlanFormatError(f"{where}: expected {_name(kind)}, got {value!r}")


def _build_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise PlanFormatError(f"{where}: expected an object, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise PlanFormatError(f"{where}: unknown fields {', '.join(unknown)}")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise PlanFormatError(f"{where}: missing field {name!r}")
    return cls(**kwargs)


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind)
