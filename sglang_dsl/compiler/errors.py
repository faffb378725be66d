"""Errors of the constraint compiler: each names what is wrong and where (a caret under a regex position, a JSON
path into a schema, a line and column of a grammar)."""

from __future__ import annotations


class ConstraintError(ValueError):
    """A constraint (regex, JSON schema, choices, grammar) that cannot be compiled. The message is meant to be
    shown to the user as is."""


def caret_display(text: str, position: int) -> str:
    """``text`` on one line with a caret under ``position``. Characters that would break the alignment (newlines,
    tabs, other control characters) are shown as ``·``."""
    shown = "".join(c if c.isprintable() else "·" for c in text)
    position = max(0, min(position, len(text)))
    return f"  {shown}\n  {' ' * position}^"


class RegexError(ConstraintError):
    """A regex that is malformed or uses a feature a finite automaton cannot express (look-around,
    back-references, word boundaries, anchors inside the pattern)."""

    def __init__(self, pattern: str, position: int, reason: str):
        self.pattern, self.position, self.reason = pattern, position, reason
        super().__init__(f"regex: {reason} (at position {position})\n{caret_display(pattern, position)}")


class SchemaError(ConstraintError):
    """A JSON schema that is malformed or uses a keyword the compiler does not support; ``path`` is the JSON
    pointer of the offending place (``#/properties/tags/items``)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"json_schema at {path}: {reason}")


class GrammarError(ConstraintError):
    """An EBNF/GBNF grammar that does not parse or that the compiler cannot use."""


class VocabularyError(ConstraintError):
    """A tokenizer whose vocabulary cannot be mapped to bytes (so its tokens cannot be checked against an
    automaton), or a constraint that no sequence of its tokens can satisfy."""
