"""Tests for tokenizers built from GGUF files and HF directories, chat templates and streaming decode."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import pre_tokenizers

from gguf_fixtures import byte_level_vocab, sentencepiece_vocab, write_gguf_with_tensors, write_vocab_gguf
from runtime.errors import ChatTemplateError, ModelLoadError
from runtime.model_files import ModelSource
from runtime.tokenizer import Tokenizer, load_tokenizer

CORPUS = [
    "Hello world!",
    "  leading spaces and trailing   ",
    "Tabs\tand\nnewlines\r\n\r\nand   runs    of     spaces\n\n\n",
    "The year 2024 had 365 days; π≈3.14159, e=2.71828, 1,000,000 and 0x1F.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "héllo wörld — ñandú, naïve café, Ελληνικά, русский",
    "中文字符 日本語のテキスト 한국어 텍스트",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "it's they'll we've I'M YOU'RE",
    "<repo_name>sglang<file_sep>main.py<|endoftext|>",
    "\u200bzero\u200dwidth\u00a0nbsp",
    "",
    " ",
]
# Whitespace runs right before digits: the one place SmolLM2's digit splitting shows.
DIGITS_AFTER_WHITESPACE = ["x  12 y   345", "total:\t\t42", "line\n\n\n7", "a  1  2  3"]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Tell me a joke 😀"},
    ],
    [
        {"role": "user", "content": "ping"},
        {"role": "assistant", "content": "pong"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "pong\n"},
    ],
]


def hf_gguf_tokenizer(path: Path) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def with_digit_splitting(reference: transformers.PreTrainedTokenizerBase) -> BackendTokenizer:
    """`reference`'s backend with the pre-tokenizer of SmolLM2's own tokenizer.json.

    transformers' GGUF conversion has no entry for ``tokenizer.ggml.pre =
    "smollm"`` and so drops SmolLM's digit splitting, which llama.cpp keeps.
    """
    backend = BackendTokenizer.from_str(reference.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return backend


@pytest.fixture(scope="module")
def smollm2(smollm2_source: ModelSource) -> Tokenizer:
    return load_tokenizer(smollm2_source)


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_source: ModelSource) -> transformers.PreTrainedTokenizerBase:
    return hf_gguf_tokenizer(smollm2_source.path)


# ---- SmolLM2 against transformers ----


@pytest.mark.slow
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_smollm2_encodes_like_transformers(smollm2: Tokenizer, hf_smollm2, add_special_tokens: bool) -> None:
    for text in CORPUS:
        expected = hf_smollm2.encode(text, add_special_tokens=add_special_tokens)
        assert smollm2.encode(text, add_special_tokens=add_special_tokens) == expected, text


@pytest.mark.slow
def test_smollm2_splits_digits_like_its_own_tokenizer(smollm2: Tokenizer, hf_smollm2) -> None:
    reference = with_digit_splitting(hf_smollm2)
    for text in DIGITS_AFTER_WHITESPACE:
        assert smollm2.encode(text) == reference.encode(text).ids, text
    assert smollm2.encode("x  12") == smollm2.encode("x  ") + smollm2.encode("1") + smollm2.encode("2")


@pytest.mark.slow
def test_smollm2_decodes_like_transformers(smollm2: Tokenizer, hf_smollm2) -> None:
    ids = [token_id for text in CORPUS for token_id in smollm2.encode(text)]
    for skip in (False, True):
        assert smollm2.decode(ids, skip_special_tokens=skip) == hf_smollm2.decode(ids, skip_special_tokens=skip)
    assert smollm2.decode(smollm2.encode(CORPUS[8])) == CORPUS[8]


@pytest.mark.slow
def test_smollm2_vocabulary_and_special_tokens(smollm2: Tokenizer, hf_smollm2) -> None:
    assert smollm2.vocab_size == len(hf_smollm2)
    sample = list(range(0, smollm2.vocab_size, 997))
    assert [smollm2.id_to_token(token_id) for token_id in sample] == hf_smollm2.convert_ids_to_tokens(sample)
    assert smollm2.bos_token_id == hf_smollm2.bos_token_id
    assert hf_smollm2.eos_token_id in smollm2.eos_token_ids
    assert hf_smollm2.convert_tokens_to_ids("<|im_end|>") in smollm2.eos_token_ids


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "system", "multi-turn", "assistant-last"])
def test_smollm2_chat_template_matches_transformers(
    smollm2: Tokenizer, hf_smollm2, conversation: list, add_generation_prompt: bool
) -> None:
    expected = hf_smollm2.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert smollm2.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt) == expected


# ---- tiny vocabularies against transformers' conversion of the same GGUF ----

TINY_VOCABS = {
    "gpt2": lambda: byte_level_vocab("gpt2"),
    "llama-bpe": lambda: byte_level_vocab("llama-bpe", add_bos_token=True),
    "qwen2": lambda: byte_level_vocab("qwen2"),
    "sentencepiece": sentencepiece_vocab,
}
TINY_CORPUS = CORPUS + ["<s>Hello</s> world<unk>", "▁already▁spaced", "  \n  x"]


@pytest.mark.parametrize("name", list(TINY_VOCABS))
def test_tiny_vocab_tokenizes_like_transformers(tmp_path: Path, name: str) -> None:
    path = write_vocab_gguf(tmp_path / f"{name}.gguf", TINY_VOCABS[name]())
    ours, reference = load_tokenizer(ModelSource("gguf", path)), hf_gguf_tokenizer(path)
    for text in TINY_CORPUS:
        for add_special_tokens in (True, False):
            expected = reference.encode(text, add_special_tokens=add_special_tokens)
            assert ours.encode(text, add_special_tokens=add_special_tokens) == expected, (text, add_special_tokens)
        ids = ours.encode(text)
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert ours.vocab_size == len(reference)


def test_tiny_smollm_vocab_splits_digits(tmp_path: Path) -> None:
    path = write_vocab_gguf(tmp_path / "smollm.gguf", byte_level_vocab("smollm"))
    ours, reference = load_tokenizer(ModelSource("gguf", path)), with_digit_splitting(hf_gguf_tokenizer(path))
    for text in TINY_CORPUS + DIGITS_AFTER_WHITESPACE:
        assert ours.encode(text) == reference.encode(text).ids, text


def test_sentencepiece_byte_fallback_round_trips(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(ModelSource("gguf", write_vocab_gguf(tmp_path / "spm.gguf", sentencepiece_vocab())))
    text = "The café serves 中文 and 😀"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert "<0xF0>" in [tokenizer.id_to_token(token_id) for token_id in ids]
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text)[0] == tokenizer.bos_token_id == 1


# ---- chat templates ----


def tiny_tokenizer(tmp_path: Path, **vocab_changes) -> Tokenizer:
    vocab = dataclasses.replace(byte_level_vocab(), **vocab_changes)
    return load_tokenizer(ModelSource("gguf", write_vocab_gguf(tmp_path / "tiny.gguf", vocab)))


TOOLS_TEMPLATE = (
    "{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | tojson(indent=2) }}\n{% endfor %}"
    "Year {{ strftime_now('%Y') }}{% if add_generation_prompt %}\n>{% endif %}"
)


def test_template_helpers_render_like_transformers(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path, chat_template=TOOLS_TEMPLATE)
    reference = hf_gguf_tokenizer(tmp_path / "tiny.gguf")
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Find <things> & stuff"}}]
    messages = [{"role": "user", "content": "Ünïcödé <b>&</b> \"quotes\""}]
    expected = reference.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(messages, tools=tools) == expected


def test_template_raise_exception_is_a_clear_error(tmp_path: Path) -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user') }}{% endif %}"
    )
    tokenizer = tiny_tokenizer(tmp_path, chat_template=template)
    with pytest.raises(ChatTemplateError, match="refused the conversation: Conversations must start with a user"):
        tokenizer.apply_chat_template([{"role": "assistant", "content": "hi"}])


def test_model_without_template_is_a_clear_error(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path, chat_template=None)
    assert tokenizer.chat_template is None
    with pytest.raises(ChatTemplateError, match=r"tiny\.gguf: model has no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_malformed_template_is_a_clear_error(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path, chat_template="{% for message in %}")
    with pytest.raises(ChatTemplateError, match="chat template is invalid"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_turn_end_token_of_the_template_ends_generation(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path, eos_token_id=0)  # <|endoftext|>; the template ends turns with <|im_end|>
    assert tokenizer.eos_token_ids == {0, 2}


def test_template_without_turn_end_token_adds_nothing(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer = tiny_tokenizer(tmp_path, eos_token_id=0, chat_template=template)
    assert tokenizer.eos_token_ids == {0}


# ---- HF directories ----


@pytest.fixture(scope="module")
def smollm2_hf_dir(tmp_path_factory: pytest.TempPathFactory, hf_smollm2) -> Path:
    directory = tmp_path_factory.mktemp("smollm2-hf")
    hf_smollm2.save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return directory


@pytest.mark.slow
def test_hf_directory_tokenizer_matches_transformers(smollm2_hf_dir: Path, hf_smollm2) -> None:
    tokenizer = load_tokenizer(ModelSource("hf", smollm2_hf_dir))
    for text in CORPUS + DIGITS_AFTER_WHITESPACE:
        assert tokenizer.encode(text) == hf_smollm2.encode(text), text
    for conversation in CONVERSATIONS:
        assert tokenizer.apply_chat_template(conversation) == hf_smollm2.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
    assert tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_ids == {0, 2}


def test_hf_template_sources_in_priority_order(tmp_path: Path, hf_smollm2) -> None:
    hf_smollm2.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = {"chat_template": [{"name": "default", "template": "config:{{ messages[0]['content'] }}"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hello = [{"role": "user", "content": "hello"}]
    assert load_tokenizer(ModelSource("hf", tmp_path)).apply_chat_template(hello) == "config:hello"
    (tmp_path / "chat_template.jinja").write_text("jinja:{{ messages[0]['content'] }}")
    assert load_tokenizer(ModelSource("hf", tmp_path)).apply_chat_template(hello) == "jinja:hello"


# ---- bad input ----


def test_gguf_without_tokenizer_is_reported(tmp_path: Path) -> None:
    path = write_gguf_with_tensors(tmp_path / "bare.gguf", {})
    with pytest.raises(ModelLoadError, match=r"bare\.gguf: GGUF file has no tokenizer"):
        load_tokenizer(ModelSource("gguf", path))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "bert"}, "tokenizer model 'bert' is not supported"),
        ({"pre": "mystery"}, "byte-level pre-tokenizer 'mystery' is not supported"),
        ({"merges": None}, "byte-level GGUF tokenizer has no tokenizer.ggml.merges"),
    ],
    ids=["model", "pre-tokenizer", "merges"],
)
def test_unsupported_gguf_tokenizer_is_named(tmp_path: Path, changes: dict, message: str) -> None:
    path = write_vocab_gguf(tmp_path / "odd.gguf", dataclasses.replace(byte_level_vocab(), **changes))
    with pytest.raises(ModelLoadError, match=rf"odd\.gguf: {re.escape(message)}"):
        load_tokenizer(ModelSource("gguf", path))


def test_hf_directory_without_tokenizer_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        load_tokenizer(ModelSource("hf", tmp_path))


def test_hf_directory_with_broken_config_is_reported(tmp_path: Path, hf_smollm2) -> None:
    hf_smollm2.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json: invalid JSON"):
        load_tokenizer(ModelSource("hf", tmp_path))


# ---- streaming decode ----


def stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool = False) -> list[str]:
    detokenizer = tokenizer.detokenizer(skip_special_tokens=skip_special_tokens)
    return [detokenizer.feed(token_id) for token_id in ids] + [detokenizer.flush()]


def single_byte_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """`text` as one byte-level token per UTF-8 byte, splitting every multi-byte character."""
    (spelled, _), = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    ids = {tokenizer.id_to_token(token_id): token_id for token_id in range(tokenizer.vocab_size)}
    return [ids[char] for char in spelled]


@pytest.mark.slow
@pytest.mark.parametrize("text", ["😀", "a😀b", "中文字符", "héllo wörld 👨‍👩‍👧 done"])
def test_split_characters_are_never_emitted_in_part(smollm2: Tokenizer, text: str) -> None:
    ids = single_byte_ids(smollm2, text)
    assert len(ids) == len(text.encode())
    pieces = stream(smollm2, ids)
    assert "".join(pieces) == text == smollm2.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    assert pieces.count("") >= len(text.encode()) - len(text)  # held back while a character was incomplete


def test_byte_fallback_characters_are_never_emitted_in_part(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(ModelSource("gguf", write_vocab_gguf(tmp_path / "spm.gguf", sentencepiece_vocab())))
    text = "The café 😀 serves 中文 food"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.mark.slow
def test_stream_skipping_special_tokens_matches_decode(smollm2: Tokenizer) -> None:
    ids = smollm2.encode(smollm2.apply_chat_template(CONVERSATIONS[2]))
    assert "".join(stream(smollm2, ids, skip_special_tokens=True)) == smollm2.decode(ids, skip_special_tokens=True)


# SmolLM2's vocabulary lacks a few control bytes and the lead bytes of code points past U+3FFFF.
REPRESENTABLE_TEXT = st.text(st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs", "Cc")), max_size=40)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(text=REPRESENTABLE_TEXT)
def test_stream_of_encoded_text_concatenates_to_decode(smollm2: Tokenizer, text: str) -> None:
    ids = smollm2.encode(text, add_special_tokens=False)
    assert "".join(stream(smollm2, ids)) == smollm2.decode(ids) == text


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=49151), max_size=30))
def test_stream_of_random_ids_concatenates_to_decode(smollm2: Tokenizer, ids: list[int]) -> None:
    pieces, text = stream(smollm2, ids), smollm2.decode(ids)
    assert "".join(pieces) == text
    if "\ufffd" not in text:
        assert not any("\ufffd" in piece for piece in pieces)
