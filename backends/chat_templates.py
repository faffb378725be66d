"""Chat templates for remote backends: a server's own Jinja template, or one picked by name.

``JinjaTemplate`` renders a model's template with the runtime's sandboxed renderer (`runtime.tokenizer.
chat_template`, Jinja only), so roles render over HTTP exactly as they do on the local runtime. For servers that do
not send their template (an SGLang deployment), ``RuntimeEndpoint(chat_template_name=...)`` picks one of the
common formats below by the names SGLang's frontend uses."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_QWEN = (
    "{% if not messages or messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}" + _CHATML
)
_LLAMA3 = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_DEFAULT = (
    "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)

# name -> (Jinja source, image token)
NAMED_TEMPLATES: dict[str, tuple[str, str | None]] = {
    "default": (_DEFAULT, "<image>"),
    "chatml": (_CHATML, "<image>"),
    "qwen": (_QWEN, None),
    "llama-3-instruct": (_LLAMA3, "<|image|>"),
}


class JinjaTemplate:
    """A Jinja chat template with its special-token ``variables`` (``bos_token``, ``eos_token``)."""

    def __init__(self, source: str, variables: Mapping[str, str] | None = None, image_token: str | None = None):
        from runtime.tokenizer.chat_template import ChatTemplate

        self._template = ChatTemplate(source)
        self._variables = {"documents": None, "tools": None, **(variables or {})}
        self.image_token = image_token

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **self._variables)


def named_template(name: str) -> JinjaTemplate:
    """The template called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in NAMED_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(NAMED_TEMPLATES))}")
    source, image_token = NAMED_TEMPLATES[name]
    return JinjaTemplate(source, image_token=image_token)
