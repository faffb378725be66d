"""The tokenizer of a model: text <-> ids, special tokens, chat formatting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runtime.errors import ChatTemplateError
from runtime.model_files import ModelSource
from runtime.tokenizer.chat_template import ChatTemplate
from runtime.tokenizer.detokenizer import IncrementalDetokenizer
from runtime.tokenizer.gguf_vocab import read_gguf_tokenizer
from runtime.tokenizer.hf_files import read_hf_tokenizer
from runtime.tokenizer.parts import TokenizerParts


def load_tokenizer(source: ModelSource) -> Tokenizer:
    """Load the tokenizer of a model directory or GGUF file. Raises `ModelLoadError`."""
    if source.kind == "hf":
        return Tokenizer(read_hf_tokenizer(source.path))
    return Tokenizer(read_gguf_tokenizer(source.path))


class Tokenizer:
    """A model's tokenizer, backed by a `tokenizers.Tokenizer`.

    `eos_token_ids` holds every token that ends generation: the model's EOS,
    the ids its config files list, and the special token its chat template
    writes after an assistant turn (``<|im_end|>``, ``<|eot_id|>``...).
    """

    def __init__(self, parts: TokenizerParts) -> None:
        self._backend = parts.backend
        self._source = parts.source
        self.bos_token_id = parts.bos_token_id
        self.chat_template = parts.chat_template
        self._template_tokens = {
            name: self.id_to_token(token_id)
            for name, token_id in (("bos_token", parts.bos_token_id), ("eos_token", parts.eos_token_id))
            if token_id is not None
        }
        self._compiled_template: ChatTemplate | None = None
        end_ids = set(parts.extra_eos_token_ids) | ({parts.eos_token_id} - {None})
        self.eos_token_ids = frozenset(end_ids | self._turn_end_ids())

    @property
    def chat_template_variables(self) -> dict[str, str]:
        """The special-token variables the chat template is rendered with (``bos_token``, ``eos_token``)."""
        return dict(self._template_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. Special tokens spelled in `text` map to their ids;
        `add_special_tokens` adds what the model wants around a sequence (e.g. BOS)."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of `token_id` as stored (byte-level or ``▁`` spelling), or None."""
        return self._backend.id_to_token(token_id)

    def detokenizer(self, skip_special_tokens: bool = False) -> IncrementalDetokenizer:
        """A fresh streaming decoder whose pieces join up to `decode(ids, skip_special_tokens)`."""
        return IncrementalDetokenizer(self._backend, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Format a conversation as the model expects, like transformers' ``apply_chat_template(tokenize=False)``.

        Extra `kwargs` are passed to the template. Raises `ChatTemplateError` if
        the model has no template or the template rejects the conversation.
        """
        variables = {"documents": None, **self._template_tokens, **kwargs}
        return self._template().render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=tools, **variables
        )

    def _template(self) -> ChatTemplate:
        if self.chat_template is None:
            raise ChatTemplateError(f"{self._source}: model has no chat template")
        if self._compiled_template is None:
            self._compiled_template = ChatTemplate(self.chat_template)
        return self._compiled_template

    def _turn_end_ids(self) -> set[int]:
        try:
            template = self._template()
        except ChatTemplateError:
            return set()
        special = [token.content for token in self._backend.get_added_tokens_decoder().values() if token.special]
        end_token = template.turn_end_token(special, **self._template_tokens)
        return {self._backend.token_to_id(end_token)} if end_token is not None else set()
