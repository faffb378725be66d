"""Integers and numbers under ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` (exact
digit-range regexes from `numeric_ranges.py`; bounded numbers are written without exponent) and ``multipleOf``
(1 on integers; a power of ten such as 0.01 on numbers: at most that many decimals). Other ``multipleOf`` values
are refused."""

from __future__ import annotations

import math
from decimal import Decimal

from sglang_dsl.compiler.errors import SchemaError
from sglang_dsl.compiler.numeric_ranges import decimal_range_regex, integer_range_regex
from sglang_dsl.compiler.schema_ir import NOTHING, Meet, Node, Re

INTEGER = r"-?(0|[1-9][0-9]*)"
NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"


def integer_node(schema: dict, path: str) -> Node:
    lo, lo_strict, hi, hi_strict = bounds(schema, path)
    step = _multiple_of(schema, path)
    if step is not None and step != 1 and not (step == step.to_integral_value() and step in (2, 5, 10)):
        if step < 1 and (1 / step) == (1 / step).to_integral_value():
            step = None  # every integer is a multiple of 1/n
        else:
            raise SchemaError(f"{path}/multipleOf", f"multipleOf {step} is not supported on integers (only 1, 2, "
                                                    "5, 10 and unit fractions)")
    node = Re(INTEGER)
    if lo is not None or hi is not None:
        low = None if lo is None else (math.floor(lo) + 1 if lo_strict and lo == math.floor(lo) else math.ceil(lo))
        high = None if hi is None else (math.ceil(hi) - 1 if hi_strict and hi == math.ceil(hi) else math.floor(hi))
        if low is not None and high is not None and low > high:
            return NOTHING
        node = Re(integer_range_regex(low, high))
    if step is not None and step > 1:
        digits = {2: "[02468]", 5: "[05]", 10: "0"}[int(step)]
        node = Meet((node, Re(f"-?(0|[0-9]*{digits})")))
    return node


def number_node(schema: dict, path: str) -> Node:
    lo, lo_strict, hi, hi_strict = bounds(schema, path)
    step = _multiple_of(schema, path)
    node = Re(NUMBER)
    if lo is not None or hi is not None:
        try:
            node = Re(decimal_range_regex(lo, hi, lo_strict, hi_strict))
        except ValueError:  # an empty range
            return NOTHING
    if step is None:
        return node
    exponent = step.normalize().as_tuple().exponent
    if step.normalize() != Decimal(1).scaleb(exponent) or exponent > 0:
        raise SchemaError(f"{path}/multipleOf", f"multipleOf {step} is not supported on numbers (only powers of "
                                                "ten up to 1: 1, 0.1, 0.01, ...)")
    decimals = rf"(\.[0-9]{{1,{-exponent}}})?" if exponent < 0 else ""
    return Meet((node, Re(r"-?(0|[1-9][0-9]*)" + decimals)))


def _multiple_of(schema: dict, path: str) -> Decimal | None:
    value = schema.get("multipleOf")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SchemaError(f"{path}/multipleOf", f"must be a positive number, got {value!r}")
    return Decimal(str(value))


def bounds(schema: dict, path: str) -> tuple[Decimal | None, bool, Decimal | None, bool]:
    """(low, low exclusive, high, high exclusive), drafts 4 (boolean exclusive flags) and 6+ (numbers) alike."""

    def number(key):
        value = schema.get(key)
        if value is None or isinstance(value, bool):
            return None
        if not isinstance(value, (int, float)):
            raise SchemaError(f"{path}/{key}", f"must be a number, got {value!r}")
        return Decimal(str(value))

    lo, hi = number("minimum"), number("maximum")
    lo_strict = hi_strict = False
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_lo is True:  # draft 4: a flag on minimum
        lo_strict = lo is not None
    elif number("exclusiveMinimum") is not None and (lo is None or number("exclusiveMinimum") >= lo):
        lo, lo_strict = number("exclusiveMinimum"), True
    if ex_hi is True:
        hi_strict = hi is not None
    elif number("exclusiveMaximum") is not None and (hi is None or number("exclusiveMaximum") <= hi):
        hi, hi_strict = number("exclusiveMaximum"), True
    return lo, lo_strict, hi, hi_strict
