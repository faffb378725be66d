"""The token budget rule and stop-aware masks on the embedded SmolLM2-135M-Instruct: constrained outputs parse and
validate however the token budget cuts them, at temperature 1 over 100 seeds each; the rule changes nothing
where the budget is ample; a stop string after a complete output ends the gen (SGLang's ``decode_int``)."""

from __future__ import annotations

import json
import re

import jsonschema
import lark
import pydantic
import pytest

from runtime.args import RuntimeArgs
from runtime.engine import Engine

pytestmark = pytest.mark.slow

SAMPLES = 100  # seeds 0 .. 99
IPV4 = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"
ARITHMETIC = 'start: NUMBER (("+" | "*") NUMBER)*\nNUMBER: /[0-9]+/'
CITY = {"type": "object", "required": ["name", "population", "note"],
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"}, "note": {"type": "string"}}}


class Member(pydantic.BaseModel):
    name: str
    skills: list[str]


class Team(pydantic.BaseModel):
    team: str
    members: list[Member]
    scores: list[int]


@pytest.fixture(scope="module")
def engine(smollm2_source, tmp_path_factory):
    with Engine(RuntimeArgs(model=str(smollm2_source.path), device="cpu")) as engine:
        engine.constraints._cache_dir = tmp_path_factory.mktemp("constraint-cache")
        yield engine


def sample(engine, prompt: str, max_new_tokens: int, **constraint):
    return engine.generate(prompt, {"temperature": 1.0, "n": SAMPLES, "seed": 0, "max_new_tokens": max_new_tokens,
                                    **constraint})


def test_json_schema_with_unbounded_fields_is_valid_at_64_tokens(engine):
    outs = sample(engine, "Describe a big city as JSON.\n", 64, json_schema=json.dumps(CITY))
    for out in outs:
        jsonschema.validate(json.loads(out.text), CITY)
        assert out.finish.type == "stop" and out.completion_tokens <= 64
    assert any(out.completion_tokens >= 60 for out in outs)  # the budget, not the model, ended some


def test_pydantic_model_with_nested_lists_is_valid_at_96_tokens(engine):
    outs = sample(engine, "A team as JSON.\n", 96, json_schema=json.dumps(Team.model_json_schema()))
    for out in outs:
        Team.model_validate_json(out.text)
        assert out.finish.type == "stop" and out.completion_tokens <= 96
    assert any(out.completion_tokens >= 90 for out in outs)


def test_arithmetic_grammar_parses_at_16_tokens(engine):
    parser = lark.Lark(ARITHMETIC, parser="lalr")
    outs = sample(engine, "An arithmetic expression: ", 16, ebnf=ARITHMETIC)
    for out in outs:
        parser.parse(out.text)
        assert out.finish.type == "stop" and out.completion_tokens <= 16
    assert any("+" in out.text or "*" in out.text for out in outs)


def test_ipv4_regex_matches_at_8_tokens(engine):
    outs = sample(engine, "The server's IP address is ", 8, regex=IPV4)
    assert all(re.fullmatch(IPV4, out.text) and out.finish.type == "stop" for out in outs), [o.text for o in outs]


def test_no_complete_output_fits_ends_with_length(engine):
    out = engine.generate("The server's IP address is ", {"temperature": 1.0, "max_new_tokens": 5, "regex": IPV4})
    assert out.finish.type == "length" and out.completion_tokens == 5


@pytest.mark.parametrize("request_text, constraint", [
    ("Describe Paris as JSON.", {"json_schema": json.dumps(CITY)}),
    ("Write 2+3 as an arithmetic expression.", {"ebnf": ARITHMETIC}),
    ("What is the IP address of localhost?", {"regex": IPV4}),
])
def test_the_rule_changes_nothing_while_the_budget_is_ample(engine, smollm2_source, request_text, constraint):
    prompt = f"<|im_start|>user\n{request_text}<|im_end|>\n<|im_start|>assistant\n"
    greedy = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 256, **constraint})
    assert greedy.finish.type == "stop" and greedy.completion_tokens < 256  # it ended on its own
    ample = greedy.completion_tokens + 1
    with Engine(RuntimeArgs(model=str(smollm2_source.path), device="cpu", constraint_budget=False)) as off:
        without = off.generate(prompt, {"temperature": 0, "max_new_tokens": ample, **constraint})
    with_rule = engine.generate(prompt, {"temperature": 0, "max_new_tokens": ample, **constraint})
    assert with_rule.output_ids == without.output_ids == greedy.output_ids


def test_decode_int_stops_after_the_number(engine):
    """SGLang's gen_int: its regex allows trailing spaces and its stops are " " and "\\n". The model wants " hours"
    after "24": the stop inside that token ends the gen where the integer is complete."""
    int_gen = {"temperature": 0, "max_new_tokens": 128, "regex": r"[-+]?[0-9]+[ \n]*", "stop": [" ", "\n"]}
    hours = engine.generate("The number of hours in a day is ", int_gen)
    days = engine.generate("The number of days in a year is ", int_gen)
    assert (hours.text, days.text) == ("24", "365")
    assert hours.finish.type == days.finish.type == "stop" and hours.finish.matched == " "


def test_a_stop_inside_a_string_waits_for_the_output_to_be_complete(engine):
    """SGLang's dtype=str regex allows whitespace inside the quotes; with stop "\\n" a newline there must not
    cut the string open."""
    outs = sample(engine, "Q: What is the full name of DNS?\nA: The full name is ", 24,
                  regex=r"\"[\w\d\s]*\"", stop=["\n"])
    for out in outs:
        assert re.fullmatch(r"\"[\w\d\s]*\"", out.text), out.text
