"""The token budget rule (`completion.py`, `TokenIndex.row_within`, `grammar_budget.py`) and stop-aware masks
(`stop_tokens.py`, `RequestConstraint`), on small vocabularies: distances checked against a brute-force search
over tokens, masks checked to keep exactly the tokens that still fit, and random walks under the rule checked to
end complete within their budget."""

from __future__ import annotations

import random

import numpy as np
import pytest

from runtime.constraint import RequestConstraint
from runtime.requests import SamplingParams
from sglang_dsl.compiler.constraint import ConstraintSpec, compile_constraint
from sglang_dsl.compiler.stop_tokens import StopTokens, first_stop
from sglang_dsl.compiler.vocabulary import Vocabulary

EOS = 0
TOKENS = [None, *"0123456789.,:{}[]\" abcxyz+*", "12", "255", ".1", "1.", "\"}", "\":", "{\"", "ab", " 2", "+1",
          "a b", "\n", "x\n", " x"]
REGEXES = [r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)", r"[0-9]+(\.[0-9]+)?",
           r"\{\"a\":[0-9]{1,3}(,\"b\":\"[a-c ]*\")?\}", r"(ab|x)*z"]
GRAMMAR = 'start: NUMBER (("+" | "*") NUMBER)*\nNUMBER: /[0-9]+/'
JSONISH = 'start: value\n?value: "[" [value ("," value)*] "]" | NUMBER\nNUMBER: /[0-9]+/'


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_strings(TOKENS, eos_token_ids=[EOS])


def allowed(row: np.ndarray, vocab: Vocabulary) -> list[int]:
    bits = np.unpackbits(row.view(np.uint8), bitorder="little")[: vocab.size]
    return np.nonzero(bits)[0].tolist()


def brute_distance(matcher, state, vocab, depth: int) -> int | None:
    """The fewest tokens from ``state`` to acceptance, by breadth-first search over every token."""
    frontier = {state}
    for steps in range(depth + 1):
        if any(matcher.accepting(s) for s in frontier):
            return steps
        frontier = {n for s in frontier for t in range(1, vocab.size) if (n := matcher.advance(s, t)) is not None}
    return None


@pytest.mark.parametrize("regex", REGEXES)
def test_regex_token_distances_are_exact(vocab, regex):
    matcher = compile_constraint(ConstraintSpec("regex", regex), vocab)
    for state in range(matcher.index.num_states):
        assert matcher.completion(state) == brute_distance(matcher, state, vocab, 12), (regex, state)


@pytest.mark.parametrize("kind, source", [*(("regex", r) for r in REGEXES), ("ebnf", GRAMMAR), ("ebnf", JSONISH)])
def test_budget_masks_keep_exactly_the_tokens_that_fit(vocab, kind, source):
    matcher = compile_constraint(ConstraintSpec(kind, source), vocab)
    rng = random.Random(0)
    for _ in range(30):
        state, limit = matcher.start(), rng.randrange(0, 9)
        for _ in range(rng.randrange(0, 4)):
            tokens = [t for t in allowed(matcher.mask(state), vocab) if t != EOS]
            if not tokens:
                break
            state = matcher.advance(state, rng.choice(tokens))
        if matcher.completion(state) > limit + 1:
            assert (matcher.budget_mask(state, limit) == matcher.mask(state)).all()  # nothing fits: no rule
            continue
        kept = set(allowed(matcher.budget_mask(state, limit), vocab))
        assert kept <= set(allowed(matcher.mask(state), vocab))
        for token in allowed(matcher.mask(state), vocab):
            if token == EOS:
                assert (token in kept) == matcher.accepting(state)
                continue
            fits = brute_distance(matcher, matcher.advance(state, token), vocab, limit) is not None
            if kind == "regex":
                assert (token in kept) == fits, (source, token)
            else:  # grammar costs are upper bounds: what is kept fits
                assert token not in kept or fits, (source, token)


@pytest.mark.parametrize("kind, source", [*(("regex", r) for r in REGEXES), ("ebnf", GRAMMAR), ("ebnf", JSONISH)])
def test_random_walks_under_the_rule_end_complete_within_the_budget(vocab, kind, source):
    matcher = compile_constraint(ConstraintSpec(kind, source), vocab)
    rng = random.Random(1)
    for _ in range(40):
        constraint = RequestConstraint(matcher, SamplingParams(), jump_forward=False)
        budget = matcher.completion(constraint.state) + rng.randrange(0, 5)
        while budget > 0 and not constraint.terminal:
            choices = allowed(constraint.mask(budget), vocab)
            token = rng.choice(choices)
            if token == EOS:
                break
            assert constraint.advance(token)
            budget -= 1
        assert constraint.accepting, source


def test_first_stop_is_the_one_that_ends_first():
    assert first_stop(b"ab\ncd", (b"\n",)) == 2
    assert first_stop(b"xabcd", (b"bcd", b"ab")) == 1
    assert first_stop(b"xabcd", (b"abc", b"ab")) == 1
    assert first_stop(b"xyz", (b"q",)) is None


def test_stop_tokens_group_by_the_text_before_the_stop(vocab):
    stops = StopTokens.of(vocab, (" ", "\n"))
    prefixes = {prefix: sorted(vocab.token_bytes[t] for t in tokens) for prefix, tokens in stops.groups}
    assert prefixes[b""] == [b"\n", b" ", b" 2", b" x"] and prefixes[b"a"] == [b"a b"] and prefixes[b"x"] == [b"x\n"]
    assert StopTokens.of(vocab, ("\n", " ")) is stops
    assert stops.pending(b"ab") == [] and StopTokens.of(vocab, ("xyz",)).pending(b"abxy") == [(2, b"z")]


def test_a_stop_after_a_complete_output_ends_the_gen(vocab):
    """gen_int: after "12", the token " 2" is no integer, but its stop " " comes where the integer is complete."""
    matcher = compile_constraint(ConstraintSpec("regex", r"[0-9]+"), vocab)
    constraint = RequestConstraint(matcher, SamplingParams(stop=(" ",)), jump_forward=False)
    space_two = vocab.by_bytes[b" 2"]
    assert space_two not in allowed(constraint.mask(8), vocab)  # nothing written yet: the stop would cut it
    assert constraint.expand(vocab.by_bytes[b"12"], None, 8) == [vocab.by_bytes[b"12"]]
    assert space_two in allowed(constraint.mask(7), vocab)
    assert constraint.expand(space_two, None, 7) == [space_two] and constraint.ended_by_stop


def test_a_stop_inside_an_incomplete_output_is_not_allowed(vocab):
    matcher = compile_constraint(ConstraintSpec("regex", r"\"[a-c ]*\""), vocab)
    constraint = RequestConstraint(matcher, SamplingParams(stop=(" ",)), jump_forward=False)
    constraint.advance(vocab.by_bytes[b"\""])
    assert vocab.by_bytes[b" "] not in allowed(constraint.mask(8), vocab)  # the string is still open
    assert vocab.by_bytes[b"a"] in allowed(constraint.mask(8), vocab)


def test_a_stop_begun_in_earlier_output_counts_where_it_began(vocab):
    matcher = compile_constraint(ConstraintSpec("regex", r"[0-9]+(x[0-9]+)?"), vocab)
    constraint = RequestConstraint(matcher, SamplingParams(stop=("x\n",)), jump_forward=False)
    for text in (b"1", b"x"):
        constraint.advance(vocab.by_bytes[text])
    newline = vocab.by_bytes[b"\n"]
    assert newline in allowed(constraint.mask(8), vocab)  # "x\n" began after "1", which is complete
    assert constraint.expand(newline, None, 8) == [newline] and constraint.ended_by_stop
