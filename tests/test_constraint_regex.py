"""Regex -> byte DFA -> token index: unsupported features are refused with a caret, the DFA agrees with Python's
``re`` on full matches, and against real vocabularies (SmolLM2's byte-level BPE, a tiny SentencePiece one with
byte fallback) sampling under the mask is sound (every finished output matches) and complete (every matching
string's own tokenization is allowed step by step)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sglang_dsl.compiler.automaton import regex_to_dfa
from sglang_dsl.compiler.errors import ConstraintError, RegexError, VocabularyError
from sglang_dsl.compiler.token_index import TokenIndex
from sglang_dsl.compiler.vocabulary import Vocabulary, gpt2_unicode_to_bytes

REGEXES = [
    r"[-+]?[0-9]+",
    r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
    r"((25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)",
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r"(yes|no|maybe)",
    r"The answer is [A-D]\.",
    r"\(?[0-9]{3}\)?[ -]?[0-9]{3}-[0-9]{4}",
    r"[a-z]{3,8}( [a-z]{2,8}){0,3}",
    r'"([^"\\\x00-\x1f]|\\["\\/bfnrt])*"',
    r"(caf[éè]|naïve|日本語|🎉+)",
    r"\d+(\.\d+)?[eE]?",
    r"(?i)hello( world)?",
    r"[^\n]{0,12}\n",
]

# ---- syntax ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, position, reason", [
    (r"a(?=b)c", 1, "look-ahead"),
    (r"ab(?!c)", 2, "look-ahead"),
    (r"(?<=a)b", 0, "look-behind"),
    (r"(?<!a)b", 0, "look-behind"),
    (r"(a)\1", 3, "back-reference"),
    (r"(?P<x>a)(?P=x)", 8, "back-reference"),
    (r"foo\bbar", 3, "word boundaries"),
    (r"\Bfoo", 0, "word boundaries"),
    (r"a^b", 1, "anchors inside"),
    (r"a$b", 1, "anchors inside"),
    (r"ab\Zc", 2, "anchor"),
    (r"a*+", 2, "possessive"),
    (r"(?x)a b", 2, "flag 'x'"),
    (r"(?>ab)", 0, "atomic"),
    (r"a[bc", 1, "unterminated character set"),
    (r"a)", 1, "unbalanced parenthesis"),
    (r"x{3,1}", 2, "min repeat greater than max"),
])
def test_unsupported_or_malformed_regex_points_at_the_problem(pattern, position, reason):
    with pytest.raises(RegexError) as err:
        regex_to_dfa(pattern)
    assert err.value.position == position
    message = str(err.value)
    assert reason in message
    lines = message.splitlines()
    assert lines[-2] == "  " + pattern and lines[-1] == "  " + " " * position + "^"


@pytest.mark.parametrize("pattern, good, bad", [
    (r"^abc$", ["abc"], ["ab", "abcd"]),
    (r"\Aabc\Z", ["abc"], ["xabc"]),
    (r"a{,2}b", ["b", "ab", "aab"], ["aaab"]),
    (r"\u00e9t\u00E9", ["été"], ["ete"]),
    (r"[\u0041-\u0043]+", ["ABCA"], ["D"]),
    (r"\N{SNOWMAN}", ["☃"], ["*"]),
    (r"a{b", ["a{b"], ["ab"]),
    (r"x}", ["x}"], ["x"]),
    (r"(?P<year>[0-9]{2})", ["24"], ["2"]),
    (r"a+?b*?", ["a", "aab"], ["b"]),
    (r"(?s:.)", ["\n", "x"], [""]),
    (r".", ["x", "é"], ["\n"]),
    (r"(?i:ab)c", ["ABc", "aBc"], ["abC"]),
    (r"[\x00-\x1f]", ["\x05"], [" "]),
    (r"[^\d\s]", ["a", "_"], ["1", " "]),
    (r"[]a]", ["]", "a"], ["b"]),
])
def test_regex_dialect(pattern, good, bad):
    dfa = regex_to_dfa(pattern)
    assert all(dfa.matches(s) for s in good), [s for s in good if not dfa.matches(s)]
    assert not any(dfa.matches(s) for s in bad), [s for s in bad if dfa.matches(s)]


def test_empty_language_is_an_error():
    with pytest.raises(ConstraintError, match="matches no string"):
        regex_to_dfa(r"a[^\s\S]b")


def test_only_well_formed_utf8_is_accepted():
    dfa = regex_to_dfa(r".*")
    assert dfa.matches("héllo 日本 🎉 \x7f")
    for bad in [b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\xe6\x97", b"\x80"]:
        assert not dfa.matches(bad), bad


# ---- the DFA agrees with Python's re ---------------------------------------------------------------------------


def _python_matches(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text, re.ASCII if "(?i)" not in pattern else 0) is not None


@pytest.mark.parametrize("pattern", REGEXES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_dfa_matches_exactly_what_python_re_fullmatches(pattern, data):
    dfa = _dfa(pattern)
    text = data.draw(st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True))
    assume(_utf8(text) is not None)
    assert dfa.matches(text)
    # and near misses: the same string mutated
    mutated = data.draw(st.text(alphabet=sorted(set(text + "a0 .-\"é\n")), max_size=len(text) + 2))
    if _utf8(mutated) is not None:
        assert dfa.matches(mutated) == _python_matches(pattern, mutated), mutated


UNICODE_RANGES = [r"[一-龥]+", r"[\u0100-\uffff]a|[^é]", r"[^\U00010000-\U0010ffff]{1,3}", r"[😀-🙏]{1,3}",
                  r"[\x00-\x7f\u0800-\uffff]+", r"(?s).[^a-zé]", r"[a-z]*[d-q][\u4e01-\u4e05\u9fa0-\u9fff]?",
                  r"[一-龥]*[\u4e01-\u4e05\u9fa0-\u9fff]"]  # the last two: overlapping classes
RANGE_ENDS = ("一龥丁\u4dff\u9fa6aé\x7f\x80\u00ff\u0100\u07ff\u0800\uffff\U00010000\U0010ffff😀🙏😿\n"
              "cdqr\u4e05\u4e06\u9f9f\u9fa0\u9fff\ua000")


@pytest.mark.parametrize("pattern", UNICODE_RANGES)
@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(RANGE_ENDS) | st.characters(blacklist_categories=("Cs",)), max_size=4))
def test_unicode_ranges_match_exactly_what_python_re_fullmatches(pattern, text):
    """Character classes are code-point intervals, a range's ends included, whatever its size."""
    assert _dfa(pattern).matches(text) == (re.fullmatch(pattern, text) is not None), text


# ---- token index against real vocabularies ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_source):
    from runtime.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_source)


@pytest.fixture(scope="session")
def smollm2_vocab(smollm2_tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(smollm2_tokenizer)


@pytest.fixture(scope="session")
def sentencepiece_tokenizer(tmp_path_factory):
    from gguf_fixtures import sentencepiece_vocab, write_vocab_gguf

    from runtime.model_files import ModelSource
    from runtime.tokenizer import load_tokenizer

    path = write_vocab_gguf(tmp_path_factory.mktemp("sp") / "sp.gguf", sentencepiece_vocab())
    return load_tokenizer(ModelSource("gguf", path))


def distance_to_accept(dfa) -> np.ndarray:
    """Fewest bytes from each state to an accepting one (a steering aid for random sampling)."""
    n = dfa.num_states
    dist = np.where(dfa.accepting[:n], 0, 1 << 30)
    live = dfa.transitions[:n] != dfa.dead
    for _ in range(n):
        nxt = np.where(live, dist[np.minimum(dfa.transitions[:n], n - 1)] + 1, 1 << 30).min(axis=1)
        new = np.minimum(dist, nxt)
        if (new == dist).all():
            break
        dist = new
    return dist


def sample_under_mask(index: TokenIndex, rng: random.Random, max_tokens: int = 300, eos_weight: float = 0.25):
    """Sample with random logits under the mask until EOS, a terminal state or ``max_tokens``: each step takes a
    uniformly random allowed token, or (half the time, so that long regexes finish) the allowed single-byte token
    that gets closest to an accepting state; EOS has extra weight once allowed. Returns (token ids without EOS,
    ended properly)."""
    state, out = index.initial, []
    eos = sorted(index.vocab.eos_token_ids)
    dist = distance_to_accept(index.dfa)
    single = {b[0]: i for i, b in enumerate(index.vocab.token_bytes) if b is not None and len(b) == 1}
    for _ in range(max_tokens):
        if index.is_terminal(state):
            return out, True
        allowed = index.allowed_tokens(state)
        assert allowed.size, f"no token allowed in live state {state}"
        if index.is_accepting(state) and rng.random() < eos_weight:
            assert set(eos) <= set(allowed.tolist())
            return out, True
        choices = [t for t in allowed.tolist() if t not in eos] or allowed.tolist()
        token = rng.choice(choices)
        if rng.random() < 0.5:  # steer: a single-byte token on a shortest path to acceptance, if there is one
            row = index.dfa.transitions[state]
            best = [b for b in range(256) if row[b] != index.dfa.dead and single.get(b) in choices]
            if best:
                token = single[min(best, key=lambda b: (dist[row[b]], rng.random()))]
        out.append(token)
        state = index.next_state(state, token)
        assert state != index.dfa.dead
    return out, False


def decoded(index: TokenIndex, ids) -> bytes:
    return b"".join(index.vocab.token_bytes[t] for t in ids)


def assert_tokenization_is_allowed(index: TokenIndex, ids) -> None:
    state = index.initial
    for position, token in enumerate(ids):
        assert index.is_allowed(state, token), f"token {token} at {position} not allowed"
        state = index.next_state(state, token)
    assert index.is_accepting(state)
    for eos in index.vocab.eos_token_ids:
        assert index.is_allowed(state, eos)


_DFAS: dict[str, object] = {}
_INDEXES: dict[tuple[str, int], TokenIndex] = {}


def _dfa(pattern):
    if pattern not in _DFAS:
        _DFAS[pattern] = regex_to_dfa(pattern)
    return _DFAS[pattern]


def _index(pattern, vocab) -> TokenIndex:
    key = (pattern, id(vocab))
    if key not in _INDEXES:
        _INDEXES[key] = TokenIndex.build(_dfa(pattern), vocab)
    return _INDEXES[key]


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def test_smollm2_vocabulary_maps_tokens_to_bytes(smollm2_vocab, smollm2_tokenizer):
    assert smollm2_vocab.kind == "byte_level" and smollm2_vocab.size == 49152
    assert smollm2_vocab.eos_token_ids == frozenset(smollm2_tokenizer.eos_token_ids)
    special = [i for i in range(20) if smollm2_vocab.token_bytes[i] is None]
    assert 0 in special and 2 in special  # <|endoftext|>, <|im_end|>
    ids = smollm2_tokenizer.encode("Hello, wörld! 日本\n  x", add_special_tokens=False)
    assert b"".join(smollm2_vocab.token_bytes[i] for i in ids) == "Hello, wörld! 日本\n  x".encode()
    assert gpt2_unicode_to_bytes()["Ġ"] == 32 and gpt2_unicode_to_bytes()["Ċ"] == 10


def test_rests_below_a_trie_node_are_the_tokens_spelling_what_follows():
    vocab = Vocabulary.from_strings([None, "a", "ab", "abc", "bc", "c", "ab", "abd", "b", "x"]).prepare()
    trie = vocab.trie
    node_a = int(trie.first_child[0])  # children of the root in byte order: a, b, c, x
    assert trie.prefix(node_a) == b"a"
    tokens, rests, first = vocab.rests(node_a)
    got = sorted(zip(tokens.tolist(), rests.tolist(), first.tolist()))
    # ab -> "b" (8), abc -> "bc" (4), ab (duplicate) -> "b", abd -> "bd" (no token)
    assert got == [(2, 8, ord("b")), (3, 4, ord("b")), (6, 8, ord("b")), (7, -1, ord("b"))]
    assert vocab.rests(int(trie.first_child[0]) + 3)[0].size == 0  # "x" has nothing below


def test_sentencepiece_vocabulary_maps_metaspace_and_byte_fallback(sentencepiece_tokenizer):
    vocab = Vocabulary.from_tokenizer(sentencepiece_tokenizer)
    assert vocab.kind == "sentencepiece"
    assert vocab.token_bytes[3 + 0x41] == b"A"  # <0x41>
    assert vocab.token_bytes[1] is None and vocab.token_bytes[2] is None  # <s>, </s>
    assert any(b is not None and b.startswith(b" ") for b in vocab.token_bytes)  # ▁ pieces
    assert vocab.single_byte_tokens.all()


def test_word_level_tokenizer_is_refused():
    from tokenizers import Tokenizer, models

    with pytest.raises(VocabularyError, match="byte-level BPE or SentencePiece"):
        Vocabulary.from_tokenizer(Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))


@pytest.mark.parametrize("pattern", REGEXES)
def test_sampling_under_the_mask_always_matches_smollm2(pattern, smollm2_vocab):
    index = _index(pattern, smollm2_vocab)
    rng = random.Random(hash(pattern) & 0xFFFF)
    finished = 0
    for _ in range(40):
        ids, ended = sample_under_mask(index, rng)
        text = decoded(index, ids)
        if ended:
            finished += 1
            assert index.dfa.matches(text)
            assert _python_matches(pattern, text.decode("utf-8")), text
    assert finished >= 20


@pytest.mark.parametrize("pattern", REGEXES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_matching_strings_are_reachable_through_their_tokenization(pattern, data, smollm2_vocab, smollm2_tokenizer):
    text = data.draw(st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True))
    assume(_utf8(text) is not None and _python_matches(pattern, text))
    index = _index(pattern, smollm2_vocab)
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assume(decoded(index, ids) == text.encode())  # SmolLM2 has no token for some bytes (0xF1, some controls)
    assert_tokenization_is_allowed(index, ids)
    # and the byte-by-byte spelling too (single-byte tokens)
    single = {b[0]: i for i, b in enumerate(smollm2_vocab.token_bytes) if b is not None and len(b) == 1}
    spelled = [single[b] for b in text.encode()]
    if all(b in single for b in text.encode()):
        assert_tokenization_is_allowed(index, spelled)


@pytest.mark.parametrize("pattern", REGEXES[:8])
def test_sentencepiece_sampling_and_tokenization(pattern, sentencepiece_tokenizer):
    vocab = Vocabulary.from_tokenizer(sentencepiece_tokenizer)
    index = TokenIndex.build(regex_to_dfa(pattern), vocab)
    rng = random.Random(7)
    for _ in range(20):
        ids, ended = sample_under_mask(index, rng)
        if ended:
            assert _python_matches(pattern, decoded(index, ids).decode("utf-8"))
    example = {0: "-42", 1: "a.b@c.de", 2: "192.168.0.1", 3: "2024-02-29", 4: "maybe", 5: "The answer is B.",
               6: "(555) 123-4567", 7: "hello big world"}[REGEXES.index(pattern)]
    ids = sentencepiece_tokenizer.encode(example, add_special_tokens=False)
    text = decoded(index, ids)
    # SentencePiece encodes a leading "▁" the decoder strips: the automaton sees the bytes the tokens stand for
    if text == example.encode():
        assert_tokenization_is_allowed(index, ids)
    else:
        assert text == b" " + example.encode()


def test_lazy_rows_equal_eager_rows(smollm2_vocab):
    dfa = _dfa(REGEXES[1])
    eager = TokenIndex.build(dfa, smollm2_vocab)
    lazy = TokenIndex.build(dfa, smollm2_vocab, lazy=True)
    assert lazy.ready.sum() == 1  # only the initial state, checked at build time
    for s in [3, 0, 5, 2]:
        np.testing.assert_array_equal(lazy.row(s), eager.row(s))
    np.testing.assert_array_equal(lazy.rows(np.arange(dfa.num_states)), eager.masks)


def test_special_tokens_never_allowed_and_eos_only_when_accepting(smollm2_vocab):
    index = _index(r".*", smollm2_vocab)
    specials = [i for i, b in enumerate(smollm2_vocab.token_bytes) if b is None]
    eos = sorted(smollm2_vocab.eos_token_ids)
    for state in range(index.num_states):
        allowed = set(index.allowed_tokens(state).tolist())
        assert allowed.isdisjoint(set(specials) - set(eos))
        assert (set(eos) <= allowed) == index.is_accepting(state)
    number = _index(r"[0-9]+", smollm2_vocab)
    assert not set(eos) & set(number.allowed_tokens(number.initial).tolist())


def test_vocabulary_that_cannot_spell_a_byte_alone_gets_no_dead_ends():
    # "a" is no token alone, but "xa" then "b", or "x" then "ab", both complete x(ab|c)
    vocab = Vocabulary.from_strings([None, "x", "ab", "b", "c", "xa"], eos_token_ids=[0])
    index = TokenIndex.build(regex_to_dfa(r"x(ab|c)"), vocab)
    assert set(index.allowed_tokens(index.initial).tolist()) == {1, 5}
    rng = random.Random(0)
    for _ in range(30):
        ids, ended = sample_under_mask(index, rng)
        assert ended and index.dfa.matches(decoded(index, ids))


def test_dead_end_tokens_are_removed_when_a_byte_is_no_token():
    vocab = Vocabulary.from_strings([None, "a", "ab", "abc", "d"], eos_token_ids=[0])
    # after "a" the regex wants "c" or "bd": no token is "c" alone, "bd" needs "b" alone: "a" is a dead end
    index = TokenIndex.build(regex_to_dfa(r"a(c|bd)"), vocab)
    assert index.allowed_tokens(index.initial).tolist() == [2]  # only "ab", then "d"
    with pytest.raises(VocabularyError):
        TokenIndex.build(regex_to_dfa(r"q"), vocab)


def test_the_compiler_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import sglang_dsl.compiler.constraint, sglang_dsl.compiler.grammar, "
            "sglang_dsl.compiler.choices, sglang_dsl.compiler.json_schema; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
