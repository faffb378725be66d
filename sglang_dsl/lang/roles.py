"""Chat turns rendered through the model's own chat template.

A template renders whole conversations, while a program writes a turn's opening, its content, and its closing at
different times. The opening of a turn is what rendering the conversation with one more message (whose content is
a marker) adds before the marker; the closing is what it writes after the marker. So whatever the template does
(a default system prompt before the first user turn, BOS, per-role prefixes) shows up in the program's text."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from sglang_dsl.lang.errors import ProgramError

_MARKER = "SGLANGDSLTURNCONTENTMARKER"

Message = Mapping[str, Any]


def turn_opening(template: Any, history: Sequence[Message], role: str) -> str:
    """The text that opens a ``role`` turn after the completed turns ``history``."""
    head, _ = _split(template, history, role)
    if not history:
        return head
    before = template.render(list(history), add_generation_prompt=False)
    return head[len(os.path.commonprefix([head, before])):]


def turn_closing(template: Any, history: Sequence[Message], role: str) -> str:
    """The text that closes a ``role`` turn after the completed turns ``history``."""
    return _split(template, history, role)[1]


def _split(template: Any, history: Sequence[Message], role: str) -> tuple[str, str]:
    rendered = template.render([*history, {"role": role, "content": _MARKER}], add_generation_prompt=False)
    head, found, tail = rendered.partition(_MARKER)
    if not found:
        raise ProgramError(f"the model's chat template does not render a {role!r} turn here")
    return head, tail
