"""Chat templates for backends whose model renders chat itself (hosted chat APIs): the program's text then only
needs a readable rendering of the turns, while the API receives the turns as messages (`answer_messages`).

`RoleTemplate` wraps each message in its role's prefix and suffix. ``DEFAULT`` is SGLang's ``default`` template
(``SYSTEM:``/``USER:``/``ASSISTANT:`` lines), ``CLAUDE`` its ``claude`` template (``Human:``/``Assistant:``),
``CHATML`` the ``<|im_start|>role`` format (Qwen, SmolLM2...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from backends.base import Backend, Prompt
from sglang_dsl.compiler.capabilities import missing_for_chat_position, refusal
from sglang_dsl.lang.executor import _text_content


@dataclass(frozen=True)
class RoleTemplate:
    """``roles`` maps a role to its ``(prefix, suffix)``; ``image_token`` marks an image in the text."""

    roles: Mapping[str, tuple[str, str]]
    image_token: str | None = "<image>"

    def render(self, messages: Sequence[Mapping[str, object]], add_generation_prompt: bool = False) -> str:
        parts = []
        for message in messages:
            prefix, suffix = self._affixes(message["role"])
            parts.append(prefix + _text_content(message["content"]) + suffix)
        if add_generation_prompt:
            parts.append(self._affixes("assistant")[0])
        return "".join(parts)

    def _affixes(self, role: str) -> tuple[str, str]:
        if role not in self.roles:
            raise ValueError(f"the chat template has no {role!r} role (roles: {', '.join(self.roles)})")
        return self.roles[role]


CHATML = RoleTemplate({role: (f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ("system", "user", "assistant")})
DEFAULT = RoleTemplate({"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"), "assistant": ("ASSISTANT:", "\n")})
CLAUDE = RoleTemplate({"system": ("", ""), "user": ("\n\nHuman: ", ""), "assistant": ("\n\nAssistant:", "")},
                      image_token=None)


def answer_messages(prompt: Prompt, node: str, backend: Backend, image_token: str | None = None) -> list[dict]:
    """The turns a chat API answers, for a node at ``prompt``: the completed ones, then (for a backend that can
    ``continue_assistant``) the open assistant turn's text so far. A chat API writes assistant answers only, so
    anything else is refused, naming ``node``. The ``image_token`` marking images in the program's text is left
    out of the text parts (the images travel as parts of their own)."""
    role, content = prompt.turn or (None, "")
    problems = missing_for_chat_position(backend.capabilities, role, not content.strip())
    if problems:
        raise refusal(node, problems, backend.name)
    messages = [_without_image_token(m, image_token) for m in prompt.messages]
    if content.strip():
        messages.append({"role": "assistant", "content": content})
    return messages


def _without_image_token(message: Mapping[str, object], token: str | None) -> dict:
    content = message["content"]
    if not token or isinstance(content, str):
        return dict(message)
    parts = [{**p, "text": p["text"].replace(token, "")} if p.get("type") == "text" else p for p in content]
    return {**message, "content": parts}
