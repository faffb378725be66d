"""The ``meta_info`` of a streamed generation, chunk by chunk, as SGLang's frontend reads it.

In a chunk of a streamed native ``/generate`` answer from ``sglang-dsl serve``, ``text``, ``output_ids``,
``completion_tokens`` and ``output_token_logprobs_length`` are cumulative (SGLang's default streaming), while the
output logprob lists (`PER_CHUNK_KEYS`) hold only the entries of the tokens that chunk adds (as SGLang's
incremental streaming sends them, and as its frontend's ``text_async_iter(..., return_meta_data=True)`` merges
them). A chunk whose text is held back (a possible stop string, an incomplete UTF-8 character) still carries its
tokens' entries; a client that yields text pieces hands them on with the next piece.

`chunk_meta` cuts a cumulative meta into such a chunk; `accumulate` adds a chunk to a cumulative meta. Both keep
lists cumulative inside sglang-dsl: a backend's stream yields cumulative metas, ``get_meta_info`` returns all.
"""

from __future__ import annotations

from typing import Any, Mapping

PER_CHUNK_KEYS = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")


def chunk_meta(meta: Mapping[str, Any], sent: dict[str, int]) -> dict[str, Any]:
    """``meta`` (cumulative) with each `PER_CHUNK_KEYS` list cut to the entries after the ``sent`` ones (by key);
    ``sent`` is advanced to the lists' full lengths."""
    out = dict(meta)
    for key in PER_CHUNK_KEYS:
        entries = meta.get(key)
        if entries is not None:
            out[key] = list(entries[sent.get(key, 0):])
            sent[key] = len(entries)
    return out


def accumulate(total: Mapping[str, Any] | None, chunk: Mapping[str, Any]) -> dict[str, Any]:
    """The cumulative meta once ``chunk`` (the next streamed meta) is added to ``total`` (the one before it, None at
    first). ``chunk``'s `PER_CHUNK_KEYS` lists are appended; from a server that sends them cumulative (SGLang's
    default streaming: the list holds ``output_token_logprobs_length`` entries, or that field is missing) they
    replace those of ``total`` instead."""
    out = dict(chunk)
    if total is None:
        return out
    entries, length = chunk.get("output_token_logprobs"), chunk.get("output_token_logprobs_length")
    cumulative = length is None or (entries is not None and len(entries) == length)
    for key in PER_CHUNK_KEYS:
        if key in chunk and not cumulative:
            out[key] = [*total.get(key, ()), *chunk[key]]
    return out
