r"""``gen(choices=...)`` and ``gen(dtype=...)`` as constraints: the regex the language sends as the ``regex``
sampling parameter.

    choices_regex(["yes", "no", "n/a"])   -> (yes|no|n/a)              the output is exactly one of the choices
    dtype_regex(int)                      -> [-+]?[0-9]+[ \n]*         int(output) works
    dtype_regex(float)                    -> [-+]?[0-9]*\.?[0-9]+[ \n]* float(output) works
    dtype_regex(str)                      -> \"[\w\d\s]*\"              a double-quoted string
    dtype_regex(bool)                     -> (True|False)
    gen_constraint(choices=..., dtype=..., regex=..., json_schema=...) -> {"regex": ...} or {"json_schema": ...}

The dtype regexes are SGLang's (`sglang_dsl.lang.params.DTYPE_REGEX`, where the stop strings sent with int and
float are too), so a typed gen constrains the same way whichever path runs it.

Every regex returned here is checked (`normalize_regex`), so a mistake surfaces where the program wrote it.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from sglang_dsl.compiler.errors import ConstraintError
from sglang_dsl.compiler.json_schema import schema_to_json_text
from sglang_dsl.compiler.regex_syntax import normalize_regex
from sglang_dsl.lang.params import DTYPE_REGEX, normalize_dtype


def choices_regex(choices: Sequence[str]) -> str:
    """A regex matching exactly the given strings (duplicates ignored). Longer choices come first only for
    readability: the automaton accepts every choice whatever the order."""
    if isinstance(choices, str) or not choices:
        raise ConstraintError("choices must be a non-empty list of strings")
    if not all(isinstance(c, str) for c in choices):
        raise ConstraintError(f"every choice must be a string, got {list(choices)!r}")
    unique = sorted(dict.fromkeys(choices), key=lambda c: (-len(c), c))
    if "" in unique:
        rest = [c for c in unique if c]
        return f"({'|'.join(map(re.escape, rest))})?" if rest else ""
    return "(" + "|".join(map(re.escape, unique)) + ")"


def dtype_regex(dtype: type | str) -> str:
    """SGLang's regex of ``int``, ``float``, ``str`` or ``bool`` (the type or its name)."""
    try:
        return DTYPE_REGEX[normalize_dtype(dtype)][0]
    except ValueError as err:
        raise ConstraintError(str(err)) from None


def gen_constraint(*, choices: Sequence[str] | None = None, dtype: type | str | None = None,
                   regex: str | None = None, json_schema: Any = None) -> dict[str, str]:
    """The sampling parameter that constrains a ``gen``: ``{"regex": ...}``, ``{"json_schema": ...}`` or ``{}``.
    At most one of the arguments may be given; the result is checked (`ConstraintError` on a bad regex or
    schema)."""
    given = [k for k, v in (("choices", choices), ("dtype", dtype), ("regex", regex), ("json_schema", json_schema))
             if v is not None]
    if len(given) > 1:
        raise ConstraintError(f"give at most one of choices, dtype, regex and json_schema, got {', '.join(given)}")
    if choices is not None:
        out = {"regex": choices_regex(choices)}
    elif dtype is not None:
        out = {"regex": dtype_regex(dtype)}
    elif regex is not None:
        out = {"regex": regex}
    elif json_schema is not None:
        from sglang_dsl.compiler.json_schema import schema_language

        text = schema_to_json_text(json_schema)
        schema_language(text)  # raises SchemaError with the path of a problem
        return {"json_schema": text}
    else:
        return {}
    normalize_regex(out["regex"])
    return out
