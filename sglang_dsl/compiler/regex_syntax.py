"""Checking a user's regex and rewriting it into the dialect ``interegular`` parses.

A constraint regex must match the *whole* output, so it describes a regular language: features that look at
context (look-around, back-references, word boundaries, anchors in the middle) have no place in a finite
automaton and are refused with a caret under them. What the rewrite does:

* a leading ``^``/``\\A`` and a trailing ``$``/``\\Z`` are dropped (matching is always full);
* ``\\uXXXX``, ``\\UXXXXXXXX`` and ``\\N{NAME}`` become the character itself (escaped where it is special);
* a ``{`` that does not start a repetition becomes ``\\{`` (Python reads it as a literal, interegular would not);
* lazy quantifiers (``*?``) are accepted: for a full match they mean the same language.

Flags: ``(?i)`` and ``(?s)`` (global or scoped) are supported; other flags are refused.
"""

from __future__ import annotations

import re
import unicodedata
import warnings

from sglang_dsl.compiler.errors import RegexError

_SPECIAL_OUTSIDE = set(".^$*+?{}[]\\|()")
_SPECIAL_INSIDE = set("\\]^-[")
_QUANTIFIER = re.compile(r"\{(\d*)(,(\d*))?\}")
_SUPPORTED_FLAGS = set("is")


def normalize_regex(pattern: str) -> str:
    """``pattern`` checked and rewritten for interegular; raises `RegexError` with the position of the problem."""
    if not isinstance(pattern, str):
        raise TypeError(f"a regex must be a string, got {type(pattern).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FutureWarning about nested sets and the like
        try:
            re.compile(pattern)
        except re.error as err:
            raise RegexError(pattern, err.pos or 0, err.msg) from None
        except (OverflowError, RecursionError, ValueError) as err:
            raise RegexError(pattern, 0, str(err)) from None
    return _Scanner(pattern).run()


class _Scanner:
    def __init__(self, pattern: str):
        self.p = pattern
        self.out: list[str] = []

    def fail(self, position: int, reason: str) -> None:
        raise RegexError(self.p, position, reason)

    def run(self) -> str:
        p, i, n = self.p, 0, len(self.p)
        if p.startswith("^"):
            i = 1
        elif p.startswith("\\A"):
            i = 2
        end = n
        if end > i and p.endswith("$") and not _escaped(p, n - 1):
            end = n - 1
        elif end > i + 1 and p.endswith("\\Z") and not _escaped(p, n - 2):
            end = n - 2
        after_quantifier = False
        while i < end:
            c = p[i]
            if c == "\\":
                i = self.escape(i, end, in_class=False)
                after_quantifier = False
            elif c == "[":
                i = self.char_class(i, end)
                after_quantifier = False
            elif c == "(":
                i = self.group_open(i, end)
                after_quantifier = False
            elif c in "*+?":
                if after_quantifier and c == "+":
                    self.fail(i, "possessive quantifiers are not supported")
                if after_quantifier and c == "?":  # lazy: same language
                    after_quantifier = False
                    i += 1
                    continue
                self.out.append(c)
                after_quantifier = True
                i += 1
            elif c == "{":
                m = _QUANTIFIER.match(p, i, end)
                if m and (m.group(1) or m.group(3) is not None):
                    low = int(m.group(1) or 0)
                    high = m.group(3)
                    if high:
                        if int(high) < low:
                            self.fail(i, "repetition range has min > max")
                        self.out.append(f"{{{low},{int(high)}}}")
                    elif m.group(2):
                        self.out.append(f"{{{low},}}")
                    else:
                        self.out.append(f"{{{low}}}")
                    after_quantifier = True
                    i = m.end()
                else:
                    self.out.append("\\{")
                    after_quantifier = False
                    i += 1
            elif c == "}":
                self.out.append("\\}")
                after_quantifier = False
                i += 1
            elif c == "^":
                self.fail(i, "anchors inside the pattern are not supported (the whole output is matched)")
            elif c == "$":
                self.fail(i, "anchors inside the pattern are not supported (the whole output is matched)")
            else:
                self.out.append(c)
                after_quantifier = False
                i += 1
        return "".join(self.out)

    def group_open(self, i: int, end: int) -> int:
        p = self.p
        if not p.startswith("(?", i):
            self.out.append("(")
            return i + 1
        rest = p[i + 2 : end]
        if rest.startswith(("=", "!")):
            self.fail(i, "look-ahead is not supported")
        if rest.startswith(("<=", "<!")):
            self.fail(i, "look-behind is not supported")
        if rest.startswith("P="):
            self.fail(i, "back-references are not supported")
        if rest.startswith("("):
            self.fail(i, "conditional groups are not supported")
        if rest.startswith(">"):
            self.fail(i, "atomic groups are not supported")
        if rest.startswith(("P<", "<")):
            close = p.find(">", i)
            self.out.append("(?:")  # the name does not matter for matching
            return close + 1
        if rest.startswith("#"):
            close = p.find(")", i)
            return close + 1
        if rest.startswith(":"):
            self.out.append("(?:")
            return i + 3
        m = re.match(r"([a-zA-Z]*)(-([a-zA-Z]*))?([:)])", rest)
        if m:
            for offset, flag in enumerate(m.group(1) + (m.group(3) or "")):
                if flag not in _SUPPORTED_FLAGS:
                    self.fail(i + 2 + offset + (1 if offset >= len(m.group(1)) else 0),
                              f"flag {flag!r} is not supported (supported: i, s)")
            self.out.append(p[i : i + 2 + m.end()])
            return i + 2 + m.end()
        self.fail(i, "unknown group extension")
        return i  # unreachable

    def escape(self, i: int, end: int, in_class: bool) -> int:
        p = self.p
        if i + 1 >= end:
            self.fail(i, "dangling backslash")
        c = p[i + 1]
        if not in_class:
            if c in "bB":
                self.fail(i, "word boundaries (\\b, \\B) are not supported")
            if c in "AZzG":
                self.fail(i, f"anchor \\{c} inside the pattern is not supported (the whole output is matched)")
            if c in "123456789":
                self.fail(i, "back-references are not supported")
        if c == "u" or c == "U":
            width = 4 if c == "u" else 8
            digits = p[i + 2 : i + 2 + width]
            self.literal(chr(int(digits, 16)), in_class)
            return i + 2 + width
        if c == "N":
            close = p.find("}", i)
            self.literal(unicodedata.lookup(p[i + 3 : close]), in_class)
            return close + 1
        if c == "x":
            self.literal(chr(int(p[i + 2 : i + 4], 16)), in_class)
            return i + 4
        if c == "0" or (in_class and c in "1234567"):
            m = re.match(r"[0-7]{1,3}", p[i + 1 : i + 4])
            self.literal(chr(int(m.group(0), 8)), in_class)
            return i + 1 + m.end()
        if c == "b" and in_class:
            self.literal("\b", in_class)
            return i + 2
        self.out.append(p[i : i + 2])
        return i + 2

    def literal(self, char: str, in_class: bool) -> None:
        special = _SPECIAL_INSIDE if in_class else _SPECIAL_OUTSIDE
        if char in special:
            self.out.append("\\" + char)
        elif char == "\n":
            self.out.append("\\n")
        else:
            self.out.append(char)

    def char_class(self, i: int, end: int) -> int:
        p = self.p
        self.out.append("[")
        i += 1
        if i < end and p[i] == "^":
            self.out.append("^")
            i += 1
        first = True
        while i < end:
            c = p[i]
            if c == "]" and not first:
                self.out.append("]")
                return i + 1
            if c == "\\":
                i = self.escape(i, end, in_class=True)
            elif c == "[":
                self.out.append("\\[")
                i += 1
            elif c == "]":  # a ']' right after '[' or '[^' is a literal
                self.out.append("\\]")
                i += 1
            else:
                self.out.append(c)
                i += 1
            first = False
        self.fail(i, "unterminated character set")
        return i  # unreachable


def _escaped(p: str, index: int) -> bool:
    """Whether the character at ``index`` is preceded by an odd number of backslashes."""
    count = 0
    while index - 1 - count >= 0 and p[index - 1 - count] == "\\":
        count += 1
    return count % 2 == 1


def class_end(text: str, start: int) -> int:
    """The index of the ``]`` that closes the character class opening at ``start`` (a ``]`` first in the class,
    after an optional ``^``, is a member); ``len(text) - 1`` when none does."""
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


def top_level_branches(pattern: str) -> list[str]:
    """``pattern`` split at the ``|`` outside groups and character classes."""
    out, depth, i, begin = [], 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = class_end(pattern, i)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            out.append(pattern[begin:i])
            begin = i + 1
        i += 1
    return out + [pattern[begin:]]
