"""Sampling parameters of a generation, as a program states them: every field optional.

``None`` means "not set here". A ``gen`` node's parameters are layered over the program's defaults (the sampling
keyword arguments of ``run``) with `SamplingParams.merged_over`; what is still unset after that is never sent, so
the backend's (the model's) own defaults apply. `SamplingParams.native_sampling` and
`SamplingParams.native_logprobs` spell the set fields the way SGLang's native ``/generate`` API does.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, fields, replace
from typing import Any

# ``dtype`` of a gen -> (regex the output must match, stop strings added), as SGLang maps them.
DTYPE_REGEX: dict[str, tuple[str, tuple[str, ...]]] = {
    "int": (r"[-+]?[0-9]+[ \n]*", (" ", "\n")),
    "float": (r"[-+]?[0-9]*\.?[0-9]+[ \n]*", (" ", "\n")),
    "str": (r"\"[\w\d\s]*\"", ()),
    "bool": (r"(True|False)", ()),
}

# Fields that go inside ``sampling_params`` (frontend name -> native name); the rest are request-level.
_NATIVE_SAMPLING = {
    "max_new_tokens": "max_new_tokens", "min_new_tokens": "min_new_tokens", "n": "n", "stop": "stop",
    "stop_token_ids": "stop_token_ids", "stop_regex": "stop_regex", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty", "ignore_eos": "ignore_eos", "regex": "regex",
    "json_schema": "json_schema", "grammar": "ebnf",
}
LOGPROB_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


@dataclass(frozen=True)
class SamplingParams:
    """How to continue the program's text at one ``gen``. Field names follow ``run()``'s keyword arguments
    (``gen(max_tokens=...)`` arrives here as ``max_new_tokens``). ``stop`` and ``stop_regex`` are tuples of
    strings, ``dtype`` one of ``int``/``float``/``str``/``bool``, ``json_schema`` JSON text, ``grammar`` a lark
    EBNF or llama.cpp GBNF grammar (natively ``ebnf``)."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    n: int | None = None
    stop: tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | None = None
    stop_regex: tuple[str, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    dtype: str | None = None
    regex: str | None = None
    json_schema: str | None = None
    grammar: str | None = None

    @classmethod
    def build(cls, **values: Any) -> "SamplingParams":
        """Normalize user-facing values: a single stop string becomes a tuple, ``dtype=int`` becomes ``"int"``, a
        dict or pydantic model class given as ``json_schema`` becomes JSON text, ``regex`` must compile and
        ``grammar`` must load. Raises ``ValueError``/``TypeError`` naming the argument."""
        out = dict(values)
        for key in ("stop", "stop_regex"):
            if isinstance(out.get(key), str):
                out[key] = (out[key],)
        for key in ("stop", "stop_regex", "stop_token_ids"):
            if out.get(key) is not None:
                out[key] = tuple(out[key])
        if out.get("dtype") is not None:
            out["dtype"] = normalize_dtype(out["dtype"])
        if out.get("regex") is not None:
            _check_regex(out["regex"])
        if out.get("json_schema") is not None:
            out["json_schema"] = normalize_json_schema(out["json_schema"])
        if out.get("grammar") is not None:
            _check_grammar(out["grammar"])
        return cls(**out)

    def merged_over(self, defaults: "SamplingParams") -> "SamplingParams":
        """These parameters, with every field left unset here taken from ``defaults``."""
        taken = {name: getattr(defaults, name) for name in _field_names() if getattr(self, name) is None}
        return replace(self, **taken)

    def given(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {name: value for name in _field_names() if (value := getattr(self, name)) is not None}

    def native_sampling(self) -> dict[str, Any]:
        """The native ``sampling_params`` dict: only set keys; ``dtype`` becomes ``regex`` plus stop strings."""
        out = {_NATIVE_SAMPLING[k]: (list(v) if isinstance(v, tuple) else v)
               for k, v in self.given().items() if k in _NATIVE_SAMPLING}
        if self.dtype is not None:
            regex, stops = DTYPE_REGEX[self.dtype]
            out["regex"] = regex
            if stops:
                out["stop"] = list(dict.fromkeys([*out.get("stop", []), *stops]))
        return out

    def native_logprobs(self) -> dict[str, Any]:
        """The request-level logprob options that are set (``return_logprob``, ``logprob_start_len``...)."""
        return {k: v for k, v in self.given().items() if k in LOGPROB_FIELDS}


@functools.cache
def _field_names() -> tuple[str, ...]:
    """`SamplingParams`' field names (``dataclasses.fields`` is slow enough to show in a batch's profile)."""
    return tuple(f.name for f in fields(SamplingParams))


def normalize_dtype(dtype: Any) -> str:
    """``int``/``float``/``str``/``bool`` (the type or its name) -> its name."""
    name = dtype.__name__ if isinstance(dtype, type) else dtype
    if name not in DTYPE_REGEX:
        raise ValueError(f"dtype must be one of int, float, str, bool; got {dtype!r}")
    return name


def normalize_json_schema(schema: Any) -> str:
    """JSON text, a dict, or a pydantic model class (its objects closed: `closed_objects`) -> JSON text (checked
    to parse)."""
    if hasattr(schema, "model_json_schema"):
        from sglang_dsl.compiler.json_schema import schema_to_dict

        schema = schema_to_dict(schema)
    if isinstance(schema, dict):
        return json.dumps(schema)
    if not isinstance(schema, str):
        raise TypeError(f"json_schema must be JSON text, a dict or a pydantic model, got {type(schema).__name__}")
    try:
        json.loads(schema)
    except json.JSONDecodeError as err:
        raise ValueError(f"json_schema is not valid JSON: {err}") from None
    return schema


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"regex {pattern!r} does not compile: {err}") from None


def _check_grammar(grammar: Any) -> None:
    if not isinstance(grammar, str):
        raise TypeError(f"grammar must be the text of a lark EBNF or GBNF grammar, got {type(grammar).__name__}")
    from sglang_dsl.compiler.lark_grammar import check_grammar

    check_grammar(grammar)  # a GrammarError is a ValueError, with lark's caret
