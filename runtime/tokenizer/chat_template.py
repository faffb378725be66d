"""Rendering a model's Jinja chat template the way transformers does.

Templates come from model files, so they run in Jinja's immutable sandbox,
with the helpers transformers offers them: ``raise_exception``,
``strftime_now`` and a ``tojson`` filter that does not HTML-escape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runtime.errors import ChatTemplateError

# Content put in a probe assistant message to find what the template writes after it.
_REPLY_MARKER = "sglang-dsl-probe-reply"


class ChatTemplate:
    """A compiled chat template. Raises `ChatTemplateError` if it does not compile."""

    def __init__(self, source: str) -> None:
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(f"chat template is invalid: {error.message} (line {error.lineno})") from None

    def render(self, **variables: Any) -> str:
        """Render with `variables` (``messages``, ``add_generation_prompt``, ``bos_token``...)."""
        try:
            return self._template.render(**variables)
        except ChatTemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as error:
            raise ChatTemplateError(f"chat template failed to render: {error}") from None

    def turn_end_token(self, special_tokens: Iterable[str], **variables: Any) -> str | None:
        """The special token the template writes right after an assistant message, if any.

        That token (``<|im_end|>``, ``<|eot_id|>``...) is how the model ends its
        turn, so generation should stop at it. None if the template cannot render
        a plain user/assistant exchange or writes no special token there.
        """
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY_MARKER}]
        try:
            rendered = self.render(messages=probe, add_generation_prompt=False, **variables)
        except ChatTemplateError:
            return None
        _, found, after = rendered.partition(_REPLY_MARKER)
        after = after.lstrip()
        candidates = [token for token in special_tokens if token and after.startswith(token)]
        return max(candidates, key=len) if found and candidates else None


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template refused the conversation: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment
