"""Validation of native-API sampling_params dicts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.requests import InvalidRequestError, SamplingParams

parse = SamplingParams.from_dict


def rejects(values, *fragments):
    with pytest.raises(InvalidRequestError) as info:
        parse(values)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_empty_or_none_gives_the_defaults():
    assert parse({}) == SamplingParams()
    assert parse(None) == SamplingParams()


def test_what_the_frontend_sends_is_accepted():
    body = {"skip_special_tokens": True, "spaces_between_special_tokens": True, "max_new_tokens": 128,
            "min_new_tokens": 0, "n": 1, "stop": ["\n", "<|eot_id|>"], "stop_token_ids": [], "stop_regex": [],
            "temperature": 0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
            "presence_penalty": 0.0, "ignore_eos": False, "regex": None, "json_schema": None}
    params = parse(body)
    assert params.stop == ("\n", "<|eot_id|>")
    assert params.temperature == 0.0 and isinstance(params.temperature, float)
    assert params.regex is None and params.json_schema is None
    assert parse({"max_new_tokens": 0}).max_new_tokens == 0


def test_every_field_round_trips():
    values = dict(max_new_tokens=7, min_new_tokens=2, temperature=0.5, top_p=0.9, top_k=40, min_p=0.05,
                  frequency_penalty=-1.5, presence_penalty=2, repetition_penalty=1.3, stop="###",
                  stop_token_ids=[5, 6], ignore_eos=True, skip_special_tokens=False,
                  spaces_between_special_tokens=False, no_stop_trim=True, n=3, seed=2**64 - 1, regex="[a-z]+")
    params = parse(values)
    assert params.stop == ("###",) and params.stop_token_ids == (5, 6)
    assert params.presence_penalty == 2.0 and isinstance(params.presence_penalty, float)
    assert (params.max_new_tokens, params.min_new_tokens, params.top_k, params.n) == (7, 2, 40, 3)
    assert params.seed == 2**64 - 1 and params.regex == "[a-z]+" and params.no_stop_trim


def test_unknown_keys_are_rejected_with_suggestions():
    assert rejects({"foo": 1}) == "unknown sampling parameter 'foo'"
    message = rejects({"max_tokens": 5}, "unknown sampling parameter 'max_tokens'", "did you mean")
    assert "'max_new_tokens'" in message
    rejects({"temprature": 0.5}, "'temperature'")


@pytest.mark.parametrize(
    "values, fragments",
    [
        ({"top_p": 1.5}, ["top_p must be in (0, 1], got 1.5"]),
        ({"top_p": 0}, ["top_p must be in (0, 1], got 0.0"]),
        ({"temperature": -0.1}, ["temperature must be >= 0"]),
        ({"top_k": -2}, ["top_k must be -1 (disabled) or >= 1, got -2"]),
        ({"min_p": 1.01}, ["min_p must be in [0, 1]"]),
        ({"frequency_penalty": 2.5}, ["frequency_penalty must be in [-2, 2]"]),
        ({"presence_penalty": -3}, ["presence_penalty must be in [-2, 2]"]),
        ({"repetition_penalty": 0}, ["repetition_penalty must be in (0, 2]"]),
        ({"repetition_penalty": 2.1}, ["repetition_penalty must be in (0, 2]"]),
        ({"max_new_tokens": -1}, ["max_new_tokens must be >= 0, got -1"]),
        ({"min_new_tokens": -1}, ["min_new_tokens must be in [0, max_new_tokens=128], got -1"]),
        ({"min_new_tokens": 10, "max_new_tokens": 5}, ["min_new_tokens", "max_new_tokens=5", "got 10"]),
        ({"n": 0}, ["n must be >= 1, got 0"]),
        ({"seed": 2**64}, ["seed must fit in 64 bits"]),
        ({"sampling_seed": -(2**63) - 1}, ["sampling_seed must fit in 64 bits"]),
        ({"temperature": float("nan")}, ["temperature must be a finite number"]),
        ({"top_p": float("inf")}, ["top_p must be a finite number"]),
    ],
)
def test_out_of_range_values_name_the_rule(values, fragments):
    rejects(values, *fragments)


@pytest.mark.parametrize(
    "values, fragments",
    [
        ({"max_new_tokens": True}, ["max_new_tokens must be an integer", "(bool)"]),
        ({"max_new_tokens": 16.0}, ["max_new_tokens must be an integer", "(float)"]),
        ({"top_k": "5"}, ["top_k must be an integer", "(str)"]),
        ({"temperature": "0.5"}, ["temperature must be a number", "(str)"]),
        ({"temperature": False}, ["temperature must be a number", "(bool)"]),
        ({"ignore_eos": 1}, ["ignore_eos must be a boolean", "(int)"]),
        ({"seed": 1.5}, ["seed must be an integer"]),
        ({"stop": 5}, ["stop must be a string or a list of strings"]),
        ({"stop": ["a", 3]}, ["stop must be a string or a list of strings"]),
        ({"stop": ["x"] * 33}, ["stop may hold at most 32 strings, got 33"]),
        ({"stop_token_ids": [1, True]}, ["stop_token_ids must be a list of integers"]),
        ({"stop_token_ids": 3}, ["stop_token_ids must be a list of integers"]),
        ({"stop_token_ids": [-1]}, ["stop_token_ids must hold token ids >= 0"]),
        ({"regex": 3}, ["regex must be a string"]),
        ({"json_schema": ["x"]}, ["json_schema must be a string or an object"]),
        ({"json_schema": "{not json"}, ["json_schema must be valid JSON"]),
    ],
)
def test_wrong_types_are_rejected(values, fragments):
    rejects(values, *fragments)


def test_ints_are_fine_for_float_fields():
    params = parse({"temperature": 1, "top_p": 1, "min_p": 0, "repetition_penalty": 2})
    assert (params.temperature, params.top_p, params.repetition_penalty) == (1.0, 1.0, 2.0)
    assert all(isinstance(v, float) for v in (params.temperature, params.top_p, params.min_p))


def test_top_k_zero_means_disabled():
    assert parse({"top_k": 0}).top_k == -1
    assert parse({"top_k": -1}).top_k == -1
    assert parse({"top_k": 1}).top_k == 1


def test_stop_forms():
    assert parse({"stop": "\n"}).stop == ("\n",)
    assert parse({"stop": []}).stop == ()
    assert parse({"stop": None}).stop == ()
    assert parse({"stop": ["a", "", "b", "a"]}).stop == ("a", "b")  # empty dropped, duplicates merged
    assert parse({"stop_token_ids": [3, 1]}).stop_token_ids == (3, 1)
    assert parse({"stop_token_ids": None}).stop_token_ids == ()


def test_null_means_default():
    assert parse({"max_new_tokens": None, "temperature": None, "seed": None}) == SamplingParams()


def test_seed_and_its_alias():
    assert parse({"sampling_seed": 42}).seed == 42
    assert parse({"seed": 42, "sampling_seed": 42}).seed == 42
    rejects({"seed": 1, "sampling_seed": 2}, "seed and sampling_seed disagree")
    rejects({"sampling_seed": "1"}, "sampling_seed must be an integer")


def test_grammars_are_mutually_exclusive_and_empty_means_unset():
    assert parse({"regex": "", "json_schema": "", "ebnf": ""}) == SamplingParams()
    assert parse({"regex": "a+", "json_schema": ""}).regex == "a+"
    rejects({"regex": "a+", "ebnf": "root ::= 'a'"}, "at most one of regex, json_schema and ebnf", "regex, ebnf")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    params = parse({"json_schema": schema})
    assert json.loads(params.json_schema) == schema
    assert parse({"json_schema": json.dumps(schema)}).json_schema == json.dumps(schema)


def test_no_op_keys_accept_only_harmless_values():
    assert parse({"stop_regex": [], "stream_interval": 4, "logit_bias": {}, "custom_params": None}) == SamplingParams()
    assert parse({"stop_regex": None, "logit_bias": None, "structural_tag": "", "beam_width": None}) == SamplingParams()
    rejects({"stop_regex": ["a+"]}, "stop_regex is not supported yet")
    rejects({"stop_regex": "a+"}, "stop_regex is not supported yet")
    rejects({"logit_bias": {"5": 10.0}}, "logit_bias is not supported yet")
    rejects({"logit_bias": [1]}, "logit_bias must be an object")
    rejects({"custom_params": {"x": 1}}, "custom_params is not supported yet")
    rejects({"beam_width": 4}, "beam_width is not supported yet")
    rejects({"structural_tag": "{}"}, "structural_tag is not supported yet")
    rejects({"stream_interval": 0}, "stream_interval must be a positive integer")


def test_every_field_has_a_check():
    from runtime.sampling_params import CHECKED_FIELDS

    assert SamplingParams.field_names() == CHECKED_FIELDS


def test_non_mapping_is_rejected():
    with pytest.raises(InvalidRequestError, match="sampling_params must be an object"):
        from runtime.sampling_params import parse_sampling_params

        parse_sampling_params(SamplingParams, [("top_p", 0.5)])


@given(
    temperature=st.floats(allow_nan=False, allow_infinity=False, min_value=-5, max_value=5),
    top_p=st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=2),
    top_k=st.integers(min_value=-3, max_value=100),
    max_new=st.integers(min_value=-2, max_value=50),
    min_new=st.integers(min_value=-2, max_value=50),
)
def test_accepts_exactly_the_documented_ranges(temperature, top_p, top_k, max_new, min_new):
    values = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new, min_new_tokens=min_new)
    valid = temperature >= 0 and 0 < top_p <= 1 and top_k >= -1 and max_new >= 0 and 0 <= min_new <= max_new
    if valid:
        params = parse(values)
        assert params.top_k == (-1 if top_k == 0 else top_k)
        assert params.temperature == temperature and params.min_new_tokens == min_new
    else:
        with pytest.raises(InvalidRequestError):
            parse(values)
