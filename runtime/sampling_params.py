"""Validating a native-API ``sampling_params`` dict into a `SamplingParams`.

The accepted keys, defaults and ranges follow SGLang's ``SamplingParams.verify``; every error is an
`InvalidRequestError` whose message names the parameter and the rule it broke. ``null`` for any key means "not
given" (its default). A few SGLang keys the engine does not implement are accepted only with values that change
nothing (``stop_regex: []``, ``logit_bias: {}``...); anything else is refused as not supported rather than ignored.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any

from runtime.requests import InvalidRequestError, SamplingParams

MAX_STOP_STRINGS = 32
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1

_INT_FIELDS = ("max_new_tokens", "min_new_tokens", "n", "top_k", "seed")
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
_BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
_GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf")
# Every SamplingParams field must be in here (tests/test_sampling_params.py checks): others would be ignored.
CHECKED_FIELDS = frozenset(_INT_FIELDS + _FLOAT_FIELDS + _BOOL_FIELDS + _GRAMMAR_FIELDS + ("stop", "stop_token_ids"))

# SGLang keys that are accepted only with a value that changes nothing, and the values allowed.
_NO_OP_KEYS = {
    "stop_regex": "an empty list",
    "stream_interval": "any positive integer",  # a streaming cadence hint; the engine streams every step
    "logit_bias": "an empty object",
    "custom_params": "null or an empty object",
    "structural_tag": "an empty string",
    "beam_width": "null",
    "watermark": "null",
}


def parse_sampling_params(cls: type[SamplingParams], values: dict[str, Any]) -> SamplingParams:
    """Check ``values`` key by key and build ``cls(**checked)``; raise `InvalidRequestError` on the first problem."""
    if not isinstance(values, dict):
        raise InvalidRequestError(f"sampling_params must be an object, got {type(values).__name__}")
    fields = cls.field_names()
    known = fields | {"sampling_seed"} | _NO_OP_KEYS.keys()
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise InvalidRequestError(f"unknown sampling parameter {key!r}{hint}")
    given = {k: v for k, v in values.items() if v is not None}
    for key in _NO_OP_KEYS.keys() & given.keys():
        _check_no_op(key, given.pop(key))

    seed_key = "seed"
    if "sampling_seed" in given:
        alias = given.pop("sampling_seed")
        if "seed" in given and given["seed"] != alias:
            raise InvalidRequestError(f"seed and sampling_seed disagree ({given['seed']!r} vs {alias!r}); give one")
        given["seed"], seed_key = alias, "sampling_seed"

    out: dict[str, Any] = {}
    for key in _INT_FIELDS:
        if key in given:
            out[key] = _int(seed_key if key == "seed" else key, given[key])
    for key in _FLOAT_FIELDS:
        if key in given:
            out[key] = _float(key, given[key])
    for key in _BOOL_FIELDS:
        if key in given:
            if not isinstance(given[key], bool):
                raise InvalidRequestError(f"{key} must be a boolean, got {_show(given[key])}")
            out[key] = given[key]
    if "stop" in given:
        out["stop"] = _stop_strings(given["stop"])
    if "stop_token_ids" in given:
        out["stop_token_ids"] = _token_ids("stop_token_ids", given["stop_token_ids"])
    for key in _GRAMMAR_FIELDS:
        if key in given:
            out[key] = _grammar(key, given[key])

    _check_ranges(out, cls, seed_key)
    grammars = [k for k in ("regex", "json_schema", "ebnf") if out.get(k) is not None]
    if len(grammars) > 1:
        raise InvalidRequestError(f"at most one of regex, json_schema and ebnf may be set, got {', '.join(grammars)}")
    return cls(**out)


def _check_ranges(out: dict[str, Any], cls: type[SamplingParams], seed_key: str) -> None:
    default = cls()
    max_new = out.get("max_new_tokens", default.max_new_tokens)
    if max_new < 0:
        raise InvalidRequestError(f"max_new_tokens must be >= 0, got {max_new}")
    min_new = out.get("min_new_tokens", default.min_new_tokens)
    if not 0 <= min_new <= max_new:
        raise InvalidRequestError(f"min_new_tokens must be in [0, max_new_tokens={max_new}], got {min_new}")
    if out.get("n", 1) < 1:
        raise InvalidRequestError(f"n must be >= 1, got {out['n']}")
    if "top_k" in out:
        if out["top_k"] == 0:
            out["top_k"] = -1  # 0 means "no top-k", as in OpenAI-style clients
        if out["top_k"] < -1:
            raise InvalidRequestError(f"top_k must be -1 (disabled) or >= 1, got {out['top_k']}")
    seed = out.get("seed")
    if seed is not None and not _SEED_MIN <= seed <= _SEED_MAX:
        raise InvalidRequestError(f"{seed_key} must fit in 64 bits, got {seed}")
    checks = [
        ("temperature", lambda v: v >= 0, ">= 0"),
        ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
        ("min_p", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("frequency_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]"),
        ("presence_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]"),
        ("repetition_penalty", lambda v: 0 < v <= 2, "in (0, 2]"),
    ]
    for key, ok, rule in checks:
        if key in out and not ok(out[key]):
            raise InvalidRequestError(f"{key} must be {rule}, got {out[key]}")


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{key} must be an integer, got {_show(value)}")
    return value


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{key} must be a number, got {_show(value)}")
    if not math.isfinite(value):
        raise InvalidRequestError(f"{key} must be a finite number, got {value}")
    return float(value)


def _stop_strings(value: Any) -> tuple[str, ...]:
    """A string or a list of strings; empty strings (which could never end anything sensibly) are dropped."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise InvalidRequestError(f"stop must be a string or a list of strings, got {_show(value)}")
    if len(items) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"stop may hold at most {MAX_STOP_STRINGS} strings, got {len(items)}")
    return tuple(dict.fromkeys(s for s in items if s))


def _token_ids(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise InvalidRequestError(f"{key} must be a list of integers, got {_show(value)}")
    if any(t < 0 for t in value):
        raise InvalidRequestError(f"{key} must hold token ids >= 0, got {min(value)}")
    return tuple(value)


def _grammar(key: str, value: Any) -> str | None:
    """A grammar as text; an empty string means unset. ``json_schema`` may also be given as a JSON object."""
    if key == "json_schema" and isinstance(value, dict):
        return json.dumps(value)
    if not isinstance(value, str):
        kinds = "a string or an object" if key == "json_schema" else "a string"
        raise InvalidRequestError(f"{key} must be {kinds}, got {_show(value)}")
    if not value:
        return None
    if key == "json_schema":
        try:
            json.loads(value)
        except ValueError as e:
            raise InvalidRequestError(f"json_schema must be valid JSON: {e}") from None
    return value


def _check_no_op(key: str, value: Any) -> None:
    if key == "stream_interval":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError(f"stream_interval must be a positive integer, got {_show(value)}")
        return
    if key == "logit_bias" and not isinstance(value, dict):
        raise InvalidRequestError(f"logit_bias must be an object mapping token ids to biases, got {_show(value)}")
    if key == "stop_regex" and not isinstance(value, (str, list, tuple)):
        raise InvalidRequestError(f"stop_regex must be a string or a list of strings, got {_show(value)}")
    if value in ("", [], (), {}) and key not in ("beam_width", "watermark"):
        return
    raise InvalidRequestError(f"{key} is not supported yet (only {_NO_OP_KEYS[key]} is accepted), got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
