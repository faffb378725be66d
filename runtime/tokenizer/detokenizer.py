"""Turning a stream of generated token ids into a stream of text."""

from __future__ import annotations

import tokenizers

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    """Decodes token ids one at a time without ever emitting half a character.

    Byte-level and byte-fallback vocabularies split multi-byte characters over
    several tokens; until the last byte arrives the decoded text ends in U+FFFD,
    so that text is held back. The pieces returned by `feed` and `flush`
    concatenate to ``decode(all_ids)``.

    Only the ids since the last emitted piece are decoded, together with the
    ids of that piece as context (decoders such as SentencePiece's treat the
    first token specially), so each step costs about the same however long
    the stream gets.
    """

    def __init__(self, backend: tokenizers.Tokenizer, skip_special_tokens: bool = False) -> None:
        self._backend = backend
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._context_start = 0  # first id decoded as context for the next piece
        self._emitted_end = 0  # ids before this index have been emitted

    def feed(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        return self._take(final=False)

    def flush(self) -> str:
        """Return whatever is still held back, even if it ends in an incomplete character."""
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        context = self._decode(self._ids[self._context_start:self._emitted_end])
        text = self._decode(self._ids[self._context_start:])
        if len(text) <= len(context) or (text.endswith(_INCOMPLETE) and not final):
            return ""
        self._context_start, self._emitted_end = self._emitted_end, len(self._ids)
        return text[len(context):]

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=self._skip_special_tokens)
