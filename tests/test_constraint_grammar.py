"""Grammars (lark EBNF and llama.cpp GBNF) as token-level matchers: sampled outputs parse (checked with lark's
Earley parser and a complete dynamic lexer, i.e. the grammar read at the character level), masks equal a
brute-force check of every token, real tokenizations of valid texts are allowed, bad grammars are refused."""

from __future__ import annotations

import json
import random

import lark
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglang_dsl.compiler.constraint import ConstraintCompiler, ConstraintSpec
from sglang_dsl.compiler.errors import GrammarError
from sglang_dsl.compiler.gbnf import gbnf_to_lark
from sglang_dsl.compiler.grammar import GrammarMatcher, compile_grammar
from sglang_dsl.compiler.lark_grammar import load_grammar
from sglang_dsl.compiler.vocabulary import Vocabulary
from test_constraint_regex import smollm2_tokenizer, smollm2_vocab  # noqa: F401

ARITHMETIC = r"""
?start: expr
?expr: expr "+" term | expr "-" term | term
?term: term "*" factor | term "/" factor | factor
?factor: NUMBER | "(" expr ")" | "-" factor
NUMBER: /[0-9]+(\.[0-9]+)?/
%ignore " "
"""

JSON_GRAMMAR = r"""
?start: value
?value: object | array | STRING | NUMBER | "true" | "false" | "null"
array: "[" [value ("," value)*] "]"
object: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
STRING: /"([^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/
NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/
%ignore /[ \t\n]+/
"""

COMMON = r"""
start: pair ("," pair)*
pair: CNAME "=" (ESCAPED_STRING | SIGNED_NUMBER)
%import common.CNAME
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

# llama.cpp's grammars/arithmetic.gbnf and a JSON grammar in GBNF
ARITHMETIC_GBNF = r"""
root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*
"""

JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [0-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""

GRAMMARS = {"arithmetic": ARITHMETIC, "json": JSON_GRAMMAR, "common": COMMON, "arithmetic_gbnf": ARITHMETIC_GBNF,
            "json_gbnf": JSON_GBNF}


def earley(name: str) -> lark.Lark:
    source = load_grammar(GRAMMARS[name]).source
    return lark.Lark(source, parser="earley", lexer="dynamic_complete")


def allowed(matcher: GrammarMatcher, state) -> np.ndarray:
    return np.nonzero(np.unpackbits(matcher.mask(state).view(np.uint8), bitorder="little")[: matcher.vocab.size])[0]


def sample(matcher: GrammarMatcher, rng: random.Random, max_tokens: int = 80):
    """Random tokens under the mask (half the time a single-byte one, so nesting stays shallow); EOS with
    probability 1/2 once allowed. Returns (bytes, finished)."""
    eos = set(matcher.vocab.eos_token_ids)
    state, out = matcher.start(), []
    for _ in range(max_tokens):
        ids = allowed(matcher, state).tolist()
        assert ids, "a live state allows no token"
        if matcher.accepting(state):
            assert eos <= set(ids)
            if rng.random() < 0.5 or matcher.terminal(state):
                return b"".join(out), True
        else:
            assert not eos & set(ids)
        choices = [t for t in ids if t not in eos]
        short = [t for t in choices if len(matcher.vocab.token_bytes[t]) == 1]
        token = rng.choice(short if short and rng.random() < 0.5 else choices)
        state = matcher.advance(state, token)
        assert state is not None
        out.append(matcher.vocab.token_bytes[token])
    return b"".join(out), False


_MATCHERS: dict = {}


def matcher_for(name, vocab) -> GrammarMatcher:
    key = (name, id(vocab))
    if key not in _MATCHERS:
        _MATCHERS[key] = compile_grammar(GRAMMARS[name], vocab)
    return _MATCHERS[key]


@pytest.mark.parametrize("name", list(GRAMMARS))
def test_sampled_outputs_parse(name, smollm2_vocab):
    matcher = matcher_for(name, smollm2_vocab)
    parser = earley(name)
    rng = random.Random(name)
    finished = 0
    for _ in range(20):
        text, ended = sample(matcher, rng)
        if ended:
            finished += 1
            parser.parse(text.decode("utf-8"))
            if name == "json":
                json.loads(text)
    assert finished >= 5


# ---- masks against brute force on a small vocabulary ----------------------------------------------------------

SMALL_TOKENS = [None, None] + [bytes([b]) for b in range(32, 127)] + [b"\n", b"\t"] + [
    t.encode() for t in ['",', '":', '{"', '"}', "},", "],", "[1", "12", "1.", ".5", "e+", "tr", "true", "ue",
                         "nul", "null,", "+1", "1+", "(-", "-(", "  ", " (", ") ", "1)", "))", "a=", "=1", '="',
                         'x="', '","', "ab", "a_", "_1", "-1", "--", "E-", '"\\', '\\"', "\\n", "fal", "lse"]]


@pytest.fixture(scope="module")
def small_vocab() -> Vocabulary:
    return Vocabulary(list(SMALL_TOKENS), frozenset({0}))


def brute_force(matcher: GrammarMatcher, state) -> set[int]:
    out = {t for t in range(matcher.vocab.size) if matcher.vocab.token_bytes[t] and matcher.advance(state, t)}
    return out | (set(matcher.vocab.eos_token_ids) if matcher.accepting(state) else set())


@pytest.mark.parametrize("name", list(GRAMMARS))
def test_masks_equal_brute_force(name, small_vocab):
    matcher = compile_grammar(GRAMMARS[name], small_vocab)
    rng = random.Random(1)
    for _ in range(8):
        state = matcher.start()
        for _ in range(25):
            assert set(allowed(matcher, state).tolist()) == brute_force(matcher, state)
            ids = [t for t in allowed(matcher, state).tolist() if t not in small_vocab.eos_token_ids]
            if not ids:
                break
            state = matcher.advance(state, rng.choice(ids))


def test_masks_reused_across_nesting_depths_equal_brute_force(small_vocab):
    """Masks are kept under the top of the stack they read, so the same place at another depth reuses them:
    every step of a text that repeats its shapes at several depths must still agree with the brute force."""
    matcher = compile_grammar(GRAMMARS["json"], small_vocab)
    text = '[1, [2, [3, {"a": [4, {"b": "c"}]}], {"a": [5]}], {"b": "c"}, [[1]], "x"]'
    state = matcher.start()
    for t in _small_tokenization(text, small_vocab):
        assert set(allowed(matcher, state).tolist()) == brute_force(matcher, state)
        state = matcher.advance(state, t)
        assert state is not None
    assert matcher.accepting(state)


def _small_tokenization(text: str, vocab: Vocabulary) -> list[int]:
    """Greedy longest-match tokenization of ``text`` in a small vocabulary."""
    ids, data = [], text.encode()
    while data:
        best = max((i for i, b in enumerate(vocab.token_bytes) if b and data.startswith(b)),
                   key=lambda i: len(vocab.token_bytes[i]))
        ids.append(best)
        data = data[len(vocab.token_bytes[best]):]
    return ids


def test_masks_equal_brute_force_on_smollm2_in_a_few_states(smollm2_vocab, smollm2_tokenizer):
    matcher = matcher_for("json", smollm2_vocab)
    for prefix in ['', '{"a', '{"a": [1', '{"a": [1, tr', '[{"x": "y"}', '[{"x": "y"} ']:
        state = matcher.start()
        for t in smollm2_tokenizer.encode(prefix, add_special_tokens=False):
            state = matcher.advance(state, t)
        assert set(allowed(matcher, state).tolist()) == brute_force(matcher, state), prefix


# ---- completeness: valid texts' own tokenization is allowed -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


def expressions():
    number = st.integers(0, 999).map(str) | st.floats(0, 100).map(lambda x: f"{x:.2f}")
    return st.recursive(number, lambda inner: st.tuples(inner, st.sampled_from("+-*/"), inner).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}") | inner.map(lambda e: f"({e})") | inner.map(lambda e: f"-{e}"),
        max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=json_values, indent=st.sampled_from([None, 2]))
def test_json_texts_tokenized_by_smollm2_are_allowed(value, indent, smollm2_vocab, smollm2_tokenizer):
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    assert_allowed(matcher_for("json", smollm2_vocab), smollm2_tokenizer, text)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(expression=expressions())
def test_arithmetic_tokenized_by_smollm2_is_allowed(expression, smollm2_vocab, smollm2_tokenizer):
    assert_allowed(matcher_for("arithmetic", smollm2_vocab), smollm2_tokenizer, expression)


def assert_allowed(matcher, tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    if b"".join(matcher.vocab.token_bytes[i] or b"?" for i in ids) != text.encode():
        return  # SmolLM2 cannot spell some bytes alone
    state = matcher.start()
    for i in ids:
        row = matcher.mask(state)
        assert (int(row[i >> 5]) >> (i & 31)) & 1, (text, i)
        state = matcher.advance(state, i)
        assert state is not None
    assert matcher.accepting(state)


# ---- GBNF -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["json", "arithmetic_gbnf"])
def test_grammars_are_cached_on_disk_and_load_to_the_same_matcher(name, small_vocab, tmp_path):
    spec = ConstraintSpec("ebnf", GRAMMARS[name])
    ConstraintCompiler(small_vocab, tmp_path).compile(spec)
    fresh = ConstraintCompiler(small_vocab, tmp_path)  # as a new process would
    loaded = fresh.compile(spec)
    assert fresh.stats == {"memory_hits": 0, "disk_hits": 1, "compiled": 0}
    original = load_grammar(GRAMMARS[name])
    assert loaded.grammar.actions == original.actions and loaded.grammar.ignore == original.ignore
    assert [(t.name, t.regex) for t in loaded.grammar.terminals] == [(t.name, t.regex) for t in original.terminals]
    compiled = compile_grammar(GRAMMARS[name], small_vocab)
    rng = random.Random(0)
    a, b = loaded.start(), compiled.start()
    for _ in range(30):
        assert (loaded.mask(a) == compiled.mask(b)).all()
        ids = [t for t in allowed(compiled, b).tolist() if t not in small_vocab.eos_token_ids]
        if not ids:
            break
        token = rng.choice(ids)
        a, b = loaded.advance(a, token), compiled.advance(b, token)


def test_gbnf_is_converted_to_lark():
    source = gbnf_to_lark(ARITHMETIC_GBNF)
    assert "start:" in source and "r_expr" in source
    parser = lark.Lark(source, parser="earley", lexer="dynamic_complete")
    parser.parse("a1 = (3+x) \n")
    source = gbnf_to_lark(r'root ::= "\x41" [\u00e9-\u00ea] "b"{2,3} ("c" | "d"){2} "e"{1,} "\""' + "\n")
    parser = lark.Lark(source, parser="earley", lexer="dynamic_complete")
    for ok in ['Aébbcdee"', 'Aêbbbddeeee"']:
        parser.parse(ok)
    for bad in ['Aebbcde"', 'Aébcde"', 'Aébbcd"']:
        with pytest.raises(lark.exceptions.LarkError):
            parser.parse(bad)


@pytest.mark.parametrize("text, message", [
    ("start: a | b\na: \"x\"\nb: \"x\"", "LALR"),
    ("start: A\nA: /(?<=x)y/", "look-behind"),
    ("start: A\nA: /x*/", "zero-width"),
    ("start: \"unterminated", "Unexpected input at line 1 column 8"),
    ("root ::= foo", "r_foo"),
    ("a ::= \"x\"", "root"),
    ("", "non-empty"),
])
def test_bad_grammars_are_refused(text, message):
    with pytest.raises(GrammarError, match=message):
        load_grammar(text)


def test_jump_forward_strings_in_grammars(smollm2_vocab):
    matcher = compile_grammar(r'start: "BEGIN " NAME "=" ("on" | "off") ";"' + "\nNAME: /[a-z]+/", smollm2_vocab)
    state = matcher.start()
    assert matcher.forced(state) == b"BEGIN "
    state = matcher.advance_bytes(state, b"BEGIN x=o")
    assert matcher.forced(state) == b""  # "on" or "off"
    assert matcher.forced(matcher.advance_bytes(state, b"f")) == b"f;"
    # with ignored spaces, a space may come before ";": only "f" is forced
    spaced = compile_grammar(r'start: "BEGIN" NAME "=" ("on" | "off") ";"' + '\nNAME: /[a-z]+/\n%ignore " "',
                             smollm2_vocab)
    assert spaced.forced(spaced.start()) == b""  # a space may come first
    assert spaced.forced(spaced.advance_bytes(spaced.start(), b"BEGIN x =of")) == b"f"
