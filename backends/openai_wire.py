"""The OpenAI API's wire format: a gen's sampling parameters as request fields, and answers (plain, streamed,
echoed with logprobs) as the native API's meta.

Pure functions over dicts; `backends.openai` sends what they build. ``features`` are the server extensions the
backend found (see `backends.openai.FEATURES`)."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from sglang_dsl.lang.choices import LogprobEntry
from sglang_dsl.lang.params import SamplingParams

# Fields every OpenAI-compatible server takes (frontend name -> request field).
BASE_SAMPLING = {"n": "n", "temperature": "temperature", "top_p": "top_p",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
# Fields taken by servers with the ``sampling`` extension (ours, vLLM, SGLang: "extra_body" fields).
EXTENDED_SAMPLING = {"top_k": "top_k", "min_p": "min_p", "min_new_tokens": "min_tokens", "ignore_eos": "ignore_eos",
                     "stop_token_ids": "stop_token_ids"}


def sampling_fields(params: SamplingParams, features: frozenset[str], chat: bool,
                    max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The request fields for ``params`` (only those set). Constraints go as the ``regex`` / ``json_schema`` /
    ``ebnf`` extension fields when the server has them, a JSON schema otherwise as a chat ``response_format``.
    The caller has checked that every set field is supported."""
    given = params.given()
    native = params.native_sampling()  # dtype already turned into a regex and stop strings
    out: dict[str, Any] = {}
    if "max_new_tokens" in given:
        out[max_tokens_field] = given["max_new_tokens"]
    if native.get("stop"):
        out["stop"] = native["stop"]
    for table in (BASE_SAMPLING, EXTENDED_SAMPLING):
        out.update({field: _plain(given[key]) for key, field in table.items() if key in given})
    if "regex" in native:
        out["regex"] = native["regex"]
    if "ebnf" in native:
        out["ebnf"] = native["ebnf"]
    if "json_schema" in native:
        if "json_schema" in features:
            out["json_schema"] = native["json_schema"]
        else:
            out["response_format"] = response_format(json.loads(native["json_schema"]))
    if params.return_logprob:
        if chat:
            out["logprobs"] = True
            if params.top_logprobs_num:
                out["top_logprobs"] = params.top_logprobs_num
        else:
            out["logprobs"] = params.top_logprobs_num or 0
    return out


def response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": dict(schema)}}


def reply_text(choice: Mapping[str, Any], chat: bool) -> str:
    """The text of one choice of an answer (a chat message's content, or a completion's text)."""
    if chat:
        return (choice.get("message") or {}).get("content") or ""
    return choice.get("text") or ""


def delta_text(choice: Mapping[str, Any], chat: bool) -> str:
    """The new text of one choice of a streamed chunk."""
    if chat:
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


def meta_info(reply: Mapping[str, Any], choice: Mapping[str, Any], chat: bool,
              logprobs: tuple[list, list] | None) -> dict[str, Any]:
    """One choice's meta in the native API's shape; ``logprobs``: its ``(entries, top entries)`` when asked."""
    usage = reply.get("usage") or {}
    meta: dict[str, Any] = {
        "id": reply.get("id"),
        "finish_reason": {"type": choice["finish_reason"]} if choice.get("finish_reason") else None,
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
    }
    if logprobs is not None:
        entries, tops = logprobs
        meta["output_token_logprobs"] = entries
        meta["output_token_logprobs_length"] = len(entries)
        if any(tops):
            meta["output_top_logprobs"] = tops
    return meta


def choice_logprobs(choice: Mapping[str, Any], chat: bool) -> tuple[list[LogprobEntry], list[list[LogprobEntry]]]:
    """A choice's (or chunk's) output logprobs as native ``(logprob, token_id, text)`` entries (no token ids over
    this API) and per-position top entries."""
    data = choice.get("logprobs") or {}
    if chat:
        content = data.get("content") or []
        entries = [(item.get("logprob"), None, item.get("token")) for item in content]
        tops = [[(top.get("logprob"), None, top.get("token")) for top in item.get("top_logprobs") or []]
                for item in content]
        return entries, tops
    tokens = data.get("tokens") or []
    entries = list(zip(data.get("token_logprobs") or [None] * len(tokens), [None] * len(tokens), tokens))
    tops = [[(lp, None, token) for token, lp in (row or {}).items()] for row in data.get("top_logprobs") or []]
    return entries, tops


def echoed_entries(choice: Mapping[str, Any], prompt: str, start: int) -> list[LogprobEntry]:
    """From an echoed completion of ``prompt`` (``echo`` with ``logprobs``), the entries of the tokens that end
    after character ``start`` of the prompt: a token across the boundary counts with the choice, as it would be
    generated. Offsets are measured on the returned tokens (their text may start with a BOS the prompt lacks)."""
    entries, _ = choice_logprobs(choice, chat=False)
    texts = [entry[2] or "" for entry in entries]
    head = max(0, len("".join(texts)) - len(prompt))
    out, end = [], 0
    for entry, text in zip(entries, texts):
        end += len(text)
        if end > head + start:
            out.append(entry)
    return out


def by_index(reply: Mapping[str, Any], expected: int) -> list[Mapping[str, Any]]:
    """An answer's choices in index order; ValueError unless there are ``expected`` of them."""
    choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) != expected:
        raise ValueError(f"the server answered with {len(choices)} choices, expected {expected}")
    return choices


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def texts_or_one(texts: Sequence[str], n: int | None) -> str | list[str]:
    return texts[0] if (n or 1) == 1 and len(texts) == 1 else list(texts)
