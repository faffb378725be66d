"""The pieces a model's files contribute to its `Tokenizer`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tokenizers


@dataclass(frozen=True)
class TokenizerParts:
    """A model's tokenizer as its files describe it.

    `eos_token_id` is the model's primary end-of-sequence token (the one chat
    templates see as ``eos_token``); `extra_eos_token_ids` are other tokens the
    files say also end generation.
    """

    source: Path
    backend: tokenizers.Tokenizer
    bos_token_id: int | None
    eos_token_id: int | None
    extra_eos_token_ids: frozenset[int]
    chat_template: str | None
