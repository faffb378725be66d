"""How plans count tokens: a `PromptCodec` encodes prompt text as the backend does, and decodes token ids.

Plans share prefixes at token granularity when the backend gives its codec (the local runtime does) and at
character granularity otherwise (`CHARACTERS`: one "token" per character, so counts are characters)."""

from __future__ import annotations

from typing import Protocol, Sequence


class PromptCodec(Protocol):
    """``encode``: a prompt's token ids exactly as the backend tokenizes a request's text; ``decode``: the text
    of ids (any special tokens spelled out, so that ``encode(decode(ids))`` gives ``ids`` back where it can)."""

    granularity: str

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class CharacterCodec:
    """One id per character (its code point)."""

    granularity = "char"

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(map(chr, ids))


CHARACTERS = CharacterCodec()


class TokenizerCodec:
    """A codec over an ``encode`` function and a tokenizer with ``decode(ids, skip_special_tokens=...)``."""

    granularity = "token"

    def __init__(self, encode, tokenizer) -> None:
        self._encode = encode
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


def stable_prefix(codec: PromptCodec, ids: Sequence[int]) -> tuple[str, int]:
    """The longest start of ``ids`` whose text re-encodes to exactly those ids, as ``(text, length)``: prefilling
    that text caches tokens a prompt starting with ``ids`` really has. ``("", 0)`` when no start does."""
    for length in range(len(ids), 0, -1):
        text = codec.decode(ids[:length])
        if list(codec.encode(text)) == list(ids[:length]):
            return text, length
    return "", 0
