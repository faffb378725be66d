"""Choices and dtypes as constraints: the regexes match exactly what they promise, and sampling under their masks
gives a choice / a value that parses."""

from __future__ import annotations

import json
import random

import pytest

from sglang_dsl.compiler.automaton import regex_to_dfa
from sglang_dsl.compiler.choices import choices_regex, dtype_regex, gen_constraint
from sglang_dsl.compiler.errors import ConstraintError, RegexError, SchemaError
from sglang_dsl.compiler.token_index import TokenIndex
from test_constraint_regex import decoded, sample_under_mask, smollm2_tokenizer, smollm2_vocab  # noqa: F401

CHOICES = ["yes", "no", "n/a", "no way", "(maybe?)", "naïve 日本", "a+b*c", "Yes."]


def test_choices_match_exactly_the_choices():
    dfa = regex_to_dfa(choices_regex(CHOICES))
    assert all(dfa.matches(c) for c in CHOICES)
    for other in ["", "ye", "yes ", "no wa", "maybe", "n-a", "a+bbc", "Yes"]:
        assert not dfa.matches(other), other
    assert regex_to_dfa(choices_regex(["", "x"])).matches("")


@pytest.mark.parametrize("bad", [[], "yes", [1, 2], None])
def test_bad_choices_are_refused(bad):
    with pytest.raises(ConstraintError):
        choices_regex(bad)


def test_sampled_choices_are_choices(smollm2_vocab):
    index = TokenIndex.build(regex_to_dfa(choices_regex(CHOICES)), smollm2_vocab)
    rng = random.Random(5)
    seen = set()
    for _ in range(60):
        ids, ended = sample_under_mask(index, rng, eos_weight=0.5)
        assert ended
        text = decoded(index, ids).decode()
        assert text in CHOICES
        seen.add(text)
    assert len(seen) >= 4


@pytest.mark.parametrize("dtype, parse, good, bad", [  # SGLang's regexes (int and float may end in spaces)
    (int, int, ["0", "-12", "+7", "0042", "24 ", "7 \n"], ["", "1.5", "-", "1e3", " 1"]),
    ("float", float, ["0", "-1.5", ".5", "3.14\n"], ["", ".", "3.", "1.2.3", "e5", "inf", "1E10"]),
    (str, lambda text: text[1:-1], ['""', '"hi there"', '"tab\tand 2"'], ['"unterminated', "'single'", '"a"b"',
                                                                        '"a,b"']),
    (bool, {"True": True, "False": False}.__getitem__, ["True", "False"], ["true", "1", "TrueFalse"]),
])
def test_dtype_regexes_parse(dtype, parse, good, bad, smollm2_vocab):
    dfa = regex_to_dfa(dtype_regex(dtype))
    for text in good:
        assert dfa.matches(text), text
        parse(text)
    for text in bad:
        assert not dfa.matches(text), text
    index = TokenIndex.build(dfa, smollm2_vocab)
    rng = random.Random(1)
    for _ in range(30):
        ids, ended = sample_under_mask(index, rng, max_tokens=40)
        if ended:
            value = parse(decoded(index, ids).decode())
            assert isinstance(value, {"int": int, "float": float, "str": str, "bool": bool}.get(
                dtype if isinstance(dtype, str) else dtype.__name__))


def test_gen_constraint_gives_one_sampling_parameter():
    assert gen_constraint() == {}
    assert gen_constraint(choices=["a", "b"]) == {"regex": "(a|b)"}
    assert gen_constraint(dtype=int) == {"regex": dtype_regex("int")}
    assert gen_constraint(regex="[0-9]+") == {"regex": "[0-9]+"}
    assert json.loads(gen_constraint(json_schema={"type": "integer"})["json_schema"]) == {"type": "integer"}
    with pytest.raises(ConstraintError, match="at most one"):
        gen_constraint(choices=["a"], dtype=int)
    with pytest.raises(RegexError):
        gen_constraint(regex="a(?=b)")
    with pytest.raises(SchemaError, match="#/format"):
        gen_constraint(json_schema={"type": "string", "format": "ipv6"})  # standard, not enforced: refused
    with pytest.raises(ConstraintError, match="dtype"):
        gen_constraint(dtype=list)
