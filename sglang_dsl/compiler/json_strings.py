"""JSON strings as regexes over their JSON text: free strings with length bounds, ``format``s, and ``pattern``s
rewritten to read escaped text (for `json_schema.py` and the ``str`` dtype)."""

from __future__ import annotations

import re

from sglang_dsl.compiler.errors import RegexError, SchemaError
from sglang_dsl.compiler.regex_syntax import normalize_regex

STRING_CHAR = r'([^"\\\x00-\x1f]|\\["\\/bfnrt])'
STRING = f'"{STRING_CHAR}*"'

_DAY_OF_MONTH = r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
_DATE = r"[0-9]{4}-" + _DAY_OF_MONTH
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?"
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + "T" + _TIME,
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "email": r"[a-zA-Z0-9_%+-]+(\.[a-zA-Z0-9_%+-]+)*@" + _LABEL + r"(\." + _LABEL + r")*\.[a-zA-Z]{2,6}",
    "uri": r"(https?|ftp)://" + _LABEL + r"(\." + _LABEL + r")*(:[0-9]{1,5})?"
           r"(/([a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9A-F]{2})*)*(\?([a-zA-Z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-F]{2})*)?",
    "ipv4": r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "hostname": _LABEL + r"(\." + _LABEL + r")*",
}
# shortest and longest match of each format (None: unbounded)
_FORMAT_LENGTHS = {"date": (10, 10), "time": (9, 21), "date-time": (20, 32), "uuid": (36, 36), "ipv4": (7, 15),
                   "email": (6, None), "uri": (7, None), "hostname": (1, None)}
UNBOUNDED_FORMAT_MAX_LENGTH = 1000  # a maxLength at least this long is not enforced on an unbounded format


def string_regex(schema: dict, path: str) -> str:
    """The regex of a JSON string under a ``type: string`` schema at JSON path ``path``: ``minLength``/
    ``maxLength``, ``format`` or ``pattern``. Raises `SchemaError` naming the keyword's path."""
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    for key, value in (("minLength", lo), ("maxLength", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SchemaError(f"{path}/{key}", f"must be a non-negative integer, got {value!r}")
    if hi is not None and hi < lo:
        raise SchemaError(path, f"maxLength {hi} is below minLength {lo}")
    fmt, pattern = schema.get("format"), schema.get("pattern")
    if fmt is not None and pattern is not None:
        raise SchemaError(path, "format and pattern together are not supported")
    if fmt is not None:
        if fmt not in FORMATS:
            raise SchemaError(f"{path}/format", f"format {fmt!r} is not supported (supported: "
                                                f"{', '.join(FORMATS)})")
        shortest, longest = _FORMAT_LENGTHS[fmt]
        if lo > shortest:
            raise SchemaError(f"{path}/minLength", f"minLength {lo} with format {fmt!r} is not supported")
        limit = UNBOUNDED_FORMAT_MAX_LENGTH if longest is None else longest
        if hi is not None and hi < limit:
            raise SchemaError(f"{path}/maxLength", f"maxLength {hi} with format {fmt!r} is not supported")
        return f'"{FORMATS[fmt]}"'
    if pattern is not None:
        if lo or hi is not None:
            raise SchemaError(path, "pattern together with minLength/maxLength is not supported")
        return '"' + json_string_regex(pattern, f"{path}/pattern") + '"'
    if hi is None:
        count = "*" if lo == 0 else ("+" if lo == 1 else f"{{{lo},}}")
    else:
        count = f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"
    return f'"{STRING_CHAR}{count}"'


# ---- a string pattern, over JSON-escaped text -----------------------------------------------------------------

_UNSAFE = ['"', "\\", *map(chr, range(0x20))]
_SAFE_EXCLUDED = r'"\\\x00-\x1f'
_JSON_ESCAPES = {'"': r'\\"', "\\": r"\\\\", "\n": r"\\n", "\t": r"\\t", "\r": r"\\r", "\f": r"\\f", "\b": r"\\b"}


def json_string_regex(pattern: str, path: str) -> str:
    """A JSON-Schema ``pattern`` (for the decoded string) as a regex over the string's JSON text (between the
    quotes): quotes, backslashes and control characters become their escapes, ``.`` and negated sets exclude
    what must be escaped. Raises `SchemaError` (with the regex's caret message)."""
    try:
        normalized = normalize_regex(pattern)
    except RegexError as err:
        raise SchemaError(path, str(err)) from None
    out = []
    i, n = 0, len(normalized)
    while i < n:
        c = normalized[i]
        if c == "\\":
            e = normalized[i + 1]
            if e == "s":
                out.append(r"( |\\[tnrf])")
            elif e in "DWS":
                base = {"D": "0-9", "W": "a-zA-Z0-9_", "S": r" \t\n\r\f\v"}[e]
                out.append(f"[^{base}{_SAFE_EXCLUDED}]")
            elif e in "dw":
                out.append("\\" + e)
            elif e in "ntrfvab":
                char = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "b": "\b"}[e]
                out.append(_json_escaped(char))
            elif e in "\"\\":
                out.append(_json_escaped(e))
            else:
                out.append(normalized[i: i + 2])
            i += 2
        elif c == "[":
            j = _class_end(normalized, i)
            body = normalized[i: j + 1]
            if body.startswith("[^"):
                out.append(body[:-1] + _SAFE_EXCLUDED + "]")
            else:
                members = [u for u in _UNSAFE if re.fullmatch(body, u)]
                if members:
                    raise SchemaError(path, f"character set {body} contains a quote, backslash or control character "
                                            "(which JSON escapes); this is not supported in a pattern")
                out.append(body)
            i = j + 1
        elif c == ".":
            out.append(f"[^{_SAFE_EXCLUDED}]")
            i += 1
        elif c == '"' or ord(c) < 0x20:
            out.append(_json_escaped(c))
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _json_escaped(char: str) -> str:
    if char in _JSON_ESCAPES:
        return _JSON_ESCAPES[char]
    return r"\\u" + f"{ord(char):04x}"


def _class_end(text: str, start: int) -> int:
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "]":
            return i
        i += 1
    return len(text) - 1
