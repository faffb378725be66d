"""JSON strings as languages of their JSON text (`schema_ir` trees): free strings with length bounds, ``format``s
and ``pattern``s (searched, as JSON Schema reads them, and rewritten to read escaped text), intersected when a
schema has several (for `json_schema.py` and the ``str`` dtype).

Strings are written in one canonical way: no ``\\u`` escapes and no ``\\/`` (what ``json.dumps(...,
ensure_ascii=False)`` writes, control characters aside), so each string has exactly one text and a difference
of string languages (``not``, keys outside ``patternProperties``) is exact."""

from __future__ import annotations

import re

from sglang_dsl.compiler.errors import RegexError, SchemaError
from sglang_dsl.compiler.regex_syntax import class_end, normalize_regex, top_level_branches
from sglang_dsl.compiler.schema_automaton import is_empty
from sglang_dsl.compiler.schema_ir import NOTHING, Meet, Minus, Node, Re, Rep, alt, lit, seq

STRING_CHAR = r'([^"\\\x00-\x1f]|\\["\\bfnrt])'
STRING = f'"{STRING_CHAR}*"'
ANY_CONTENT = Rep(Re(STRING_CHAR), 0, None)

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
_SEGMENT = r"[a-zA-Z0-9._~!$&'()*+,;=@-]"  # a relative reference's first segment has no ":" (RFC 3986)
FORMATS["uri-reference"] = "(" + FORMATS["uri"] + f"|(/?{_SEGMENT}+)(/({_SEGMENT}|:)*)*)"
MAX_LENGTH_BOUND = 10_000  # a larger minLength/maxLength is refused: the automaton grows with the bound
# standard formats that validators may assert and that are not enforced here: refused (other names are annotations)
UNSUPPORTED_FORMATS = frozenset({"regex", "ipv6", "idn-email", "idn-hostname", "iri", "iri-reference", "uri-template",
                                 "json-pointer", "relative-json-pointer", "duration"})


def string_node(schema: dict, path: str) -> Node:
    """The language of a JSON string (quotes included) under the string keywords of ``schema`` at JSON path
    ``path``: ``minLength``/``maxLength`` (in characters), a known ``format`` (others are annotations, ignored),
    ``pattern`` (found anywhere in the string unless anchored), more patterns from ``allOf`` (``\\0patterns``)
    and excluded patterns from ``not`` (``\\0not``). Raises `SchemaError` naming the keyword's path."""
    return seq(lit('"'), content_node(schema, path), lit('"'))


def content_node(schema: dict, path: str) -> Node:
    """`string_node` without the quotes."""
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    for key, value in (("minLength", lo), ("maxLength", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SchemaError(f"{path}/{key}", f"must be a non-negative integer, got {value!r}")
    if hi is not None and hi < lo:
        return NOTHING
    for key, value in (("minLength", lo), ("maxLength", hi)):
        if value is not None and value > MAX_LENGTH_BOUND:
            raise SchemaError(f"{path}/{key}", f"{key} {value} is above {MAX_LENGTH_BOUND:,} (the automaton would "
                                               "grow with it)")
    parts: list[Node] = []
    fmt = schema.get("format")
    if fmt in UNSUPPORTED_FORMATS:
        raise SchemaError(f"{path}/format", f"format {fmt!r} is not supported (supported: {', '.join(FORMATS)}; "
                                            "other names are annotations)")
    if isinstance(fmt, str) and fmt in FORMATS:
        parts.append(Re(FORMATS[fmt]))
    patterns = [(schema["pattern"], f"{path}/pattern")] if "pattern" in schema else []
    patterns += [(p, f"{path}/allOf") for p in schema.get("\0patterns", ())]
    parts += [pattern_node(p, where) for p, where in patterns]
    if lo or hi is not None or not parts:
        parts.append(Rep(Re(STRING_CHAR), lo, hi))
    node = parts[0] if len(parts) == 1 else Meet(tuple(parts))
    excluded = [pattern_node(p, f"{path}/not/pattern", outer=True) for p in schema.get("\0not", ())]
    if excluded:
        node = Minus(node, alt(*excluded))
    if (len(parts) > 1 or excluded) and is_empty(node):
        return NOTHING
    return node


def pattern_node(pattern, path: str, outer: bool = False) -> Node:
    """The JSON texts (between the quotes) of strings in which ``pattern`` is found: a branch anchored with
    ``^`` / ``$`` matches from the start / to the end, otherwise anything may come before / after. The rewriting
    reads ``\\d``, ``\\w``, ``\\s``, ``.`` and negated sets narrowly (ASCII, nothing that needs an escape), so its
    texts all match; ``outer`` reads them as any character instead (and ``$`` as Python does, before a final
    newline too), so that every match is among its texts: what a pattern excludes must be read that way."""
    if not isinstance(pattern, str):
        raise SchemaError(path, f"must be a regex string, got {pattern!r}")
    branches = []
    for branch in top_level_branches(pattern):
        start = branch.startswith("^")
        end = branch.endswith("$") and not branch.endswith("\\$")
        body = branch[1 if start else 0: len(branch) - 1 if end else len(branch)]
        inner = Re(json_string_regex(body, path, outer)) if body else None
        tail = [ANY_CONTENT] if not end else ([Rep(lit("\\n"), 0, 1)] if outer else [])  # Python's $ allows a final \n
        branches.append(seq(*([] if start else [ANY_CONTENT]), *([inner] if inner else []), *tail))
    return alt(*branches)


# ---- a string pattern, over JSON-escaped text -----------------------------------------------------------------

_UNSAFE = ['"', "\\", *map(chr, range(0x20))]
_SAFE_EXCLUDED = r'"\\\x00-\x1f'
_JSON_ESCAPES = {'"': r'\\"', "\\": r"\\\\", "\n": r"\\n", "\t": r"\\t", "\r": r"\\r", "\f": r"\\f", "\b": r"\\b"}


def json_string_regex(pattern: str, path: str, outer: bool = False) -> str:
    """A JSON-Schema ``pattern`` (for the decoded string) as a regex over the string's JSON text (between the
    quotes): quotes, backslashes and control characters become their escapes, ``.`` and negated sets exclude
    what must be escaped (``outer``: shorthand classes, ``.`` and negated sets become any one character).
    Raises `SchemaError` (with the regex's caret message)."""
    try:
        normalized = normalize_regex(pattern)
    except RegexError as err:
        raise SchemaError(path, str(err)) from None
    out = []
    i, n = 0, len(normalized)
    while i < n:
        c = normalized[i]
        if c == "\\" and outer and normalized[i + 1] in "dDwWsS":
            out.append(STRING_CHAR)
            i += 2
        elif c == "\\":
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
            j = class_end(normalized, i)
            body = normalized[i: j + 1]
            if outer and (body.startswith("[^") or "\\" in body):
                out.append(STRING_CHAR)
            elif body.startswith("[^"):
                out.append(body[:-1] + _SAFE_EXCLUDED + "]")
            else:
                body = body.replace("\\s", " ")  # within a set, \s is read as the space alone (narrowly)
                members = [u for u in _UNSAFE if re.fullmatch(body, u)]
                if members:
                    raise SchemaError(path, f"character set {body} contains a quote, backslash or control character "
                                            "(which JSON escapes); this is not supported in a pattern")
                out.append(body)
            i = j + 1
        elif c == ".":
            out.append(STRING_CHAR if outer else f"[^{_SAFE_EXCLUDED}]")
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
