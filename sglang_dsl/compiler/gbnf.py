"""llama.cpp's GBNF grammars, converted to lark EBNF (`gbnf_to_lark`), which `sglang_dsl.compiler.grammar`
compiles: rules ``name ::= ...``, strings, character classes, ``.``, grouping, alternatives, ``* + ?`` and
``{m,n}`` repetition; escapes as llama.cpp reads them."""

from __future__ import annotations

import re

from sglang_dsl.compiler.errors import GrammarError


def is_gbnf(text: str) -> bool:
    return "::=" in text


_GBNF_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*) |
    (?P<define>::=) |
    (?P<name>[a-zA-Z_][a-zA-Z0-9_-]*) |
    (?P<string>"(?:[^"\\]|\\.)*") |
    (?P<charclass>\[(?:[^\]\\]|\\.)*\]) |
    (?P<dot>\.) |
    (?P<repeat>\{\s*\d*\s*(?:,\s*\d*\s*)?\}) |
    (?P<op>[()|*+?])
""", re.VERBOSE | re.DOTALL)


def _gbnf_unescape(body: str, where: str) -> str:
    """GBNF escapes resolved: for a string, the characters; for a character class, regex text."""
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^",
              "/": "/"}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c if where == "string" or c not in "/" else "\\/")
            i += 1
            continue
        e = body[i + 1] if i + 1 < len(body) else ""
        if e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2: i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise GrammarError(f"GBNF: bad escape \\{e}{digits}")
            ch = chr(int(digits, 16))
            out.append(ch if where == "string" else f"\\U{ord(ch):08x}" if ord(ch) > 0xFFFF else f"\\u{ord(ch):04x}")
            i += 2 + width
        elif e in simple:
            if where == "string":
                out.append(simple[e])
            else:
                out.append("\\" + e)
            i += 2
        else:
            raise GrammarError(f"GBNF: unknown escape \\{e}")
    return "".join(out)


def gbnf_to_lark(text: str) -> str:
    """A llama.cpp GBNF grammar as lark EBNF: rule names lower-cased with ``-`` -> ``_``, ``root`` -> ``start``,
    literals as lark strings, character classes and ``.`` as inline regexes, ``{m,n}`` as ``~ m..n``."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = _GBNF_TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise GrammarError(f"GBNF: unexpected {text[pos:pos + 10]!r} at line {line}")
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))

    def rule_name(name: str) -> str:
        return "start" if name == "root" else "r_" + name.lower().replace("-", "_")

    rules: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(tokens):
        if tokens[i][0] != "name" or i + 1 >= len(tokens) or tokens[i + 1][0] != "define":
            raise GrammarError(f"GBNF: expected `name ::=`, got {tokens[i][1]!r}")
        name = rule_name(tokens[i][1])
        i += 2
        body: list[str] = []
        while i < len(tokens) and not (tokens[i][0] == "name" and i + 1 < len(tokens) and tokens[i + 1][0] == "define"):
            kind, value = tokens[i]
            if kind == "name":
                body.append(rule_name(value))
            elif kind == "string":
                literal = _gbnf_unescape(value[1:-1], "string")
                body.append(_lark_string(literal) if literal else '""')
            elif kind == "charclass":
                inner = value[1:-1]
                negate = inner.startswith("^")
                inner = _gbnf_unescape(inner[1:] if negate else inner, "class")
                body.append("/[" + ("^" if negate else "") + inner + "]/")
            elif kind == "dot":
                body.append("/(?s:.)/")
            elif kind == "repeat":
                m = re.fullmatch(r"\{\s*(\d*)\s*(,\s*(\d*)\s*)?\}", value)
                low = int(m.group(1) or 0)
                high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                atom = _last_atom(body)
                if high is None:  # {m,}: m copies, then any number more
                    body.append(f"({atom}) ~ {low} ({atom})*" if low else f"({atom})*")
                elif high == 0:
                    pass
                else:
                    body.append(f"({atom}) ~ {low}..{high}" if low != high else f"({atom}) ~ {low}")
            else:
                body.append(value)
            i += 1
        if '""' in body:
            body = [b for b in body if b != '""']
        rules.append((name, body))
    if not any(name == "start" for name, _ in rules):
        raise GrammarError("GBNF: the grammar has no `root` rule")
    return "\n".join(f"{name}: {' '.join(body) if body else ''}" for name, body in rules) + "\n"


def _lark_string(literal: str) -> str:
    escaped = "".join(
        "\\\\" if c == "\\" else '\\"' if c == '"' else c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
        else f"\\u{ord(c):04x}" for c in literal)
    return f'"{escaped}"'


def _last_atom(body: list[str]) -> str:
    """The last atom of ``body`` (a group from its ``(`` on, or one element), removed from ``body``."""
    if body and body[-1] == ")":
        depth = 0
        for k in range(len(body) - 1, -1, -1):
            depth += body[k] == ")"
            depth -= body[k] == "("
            if depth == 0:
                atom = " ".join(body[k:])
                del body[k:]
                return atom
    atom = body.pop()
    return atom
