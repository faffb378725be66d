"""Building a `tokenizers.Tokenizer` from the vocabulary a GGUF file stores.

llama.cpp keeps a model's tokenizer as ``tokenizer.ggml.*`` metadata:
``model`` names the algorithm, ``tokens``/``token_type`` the vocabulary, and
``merges`` (byte-level BPE) or ``scores`` (SentencePiece) how pieces combine.

* ``gpt2``: byte-level BPE. ``pre`` names how text is split before merging;
  each name maps to the pre-tokenizer of the model's own ``tokenizer.json``.
* ``llama``: SentencePiece BPE over ``▁``-spelled pieces with ``<0xXX>`` byte
  fallback. The file has no merges; they are recovered from the scores.

Tokens typed control or unknown become special added tokens, user-defined
ones plain added tokens, so that text spelling them maps to them whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from runtime.errors import ModelLoadError
from runtime.tokenizer.parts import TokenizerParts
from runtime.weights.gguf import open_gguf, read_field

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRE = frozenset({"llama-bpe", "llama3", "llama-v3"})


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _gpt2_bytes() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2_bytes() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_bytes()])


# tokenizer.ggml.pre -> the pre-tokenizer of the model's original tokenizer.json.
_BYTE_LEVEL_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": _gpt2_bytes,
    "gpt2": _gpt2_bytes,
    "smollm": _digits_then_gpt2_bytes,
    "starcoder": _digits_then_gpt2_bytes,
    **{name: (lambda: _split_then_bytes(_LLAMA3_SPLIT)) for name in _LLAMA3_PRE},
    "qwen2": lambda: _split_then_bytes(_QWEN2_SPLIT),
}
# Qwen2's tokenizer.json NFC-normalizes text before splitting it.
_NFC_PRE = frozenset({"qwen2"})


@dataclass(frozen=True)
class GGUFVocabulary:
    """The ``tokenizer.*`` metadata of a GGUF file."""

    path: Path
    kind: str  # tokenizer.ggml.model
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str] | None
    scores: list[float] | None
    bos_id: int | None
    eos_id: int | None
    unknown_id: int | None
    turn_end_ids: frozenset[int]  # end-of-turn / end-of-message tokens
    add_bos: bool | None  # None: the file does not say
    add_eos: bool
    add_space_prefix: bool
    chat_template: str | None


def read_gguf_tokenizer(path: Path) -> TokenizerParts:
    """Build the tokenizer a GGUF file describes. Raises `ModelLoadError` naming the file."""
    vocab = read_gguf_vocabulary(path)
    if vocab.kind == "gpt2":
        backend = _byte_level_tokenizer(vocab)
        add_bos = vocab.add_bos if vocab.add_bos is not None else vocab.pre in _LLAMA3_PRE
    elif vocab.kind == "llama":
        backend = _sentencepiece_tokenizer(vocab)
        add_bos = vocab.add_bos if vocab.add_bos is not None else True
    else:
        raise ModelLoadError(f"{path}: tokenizer model {vocab.kind!r} is not supported (supported: gpt2, llama)")
    _add_typed_tokens(backend, vocab)
    backend.post_processor = _framing(vocab.tokens, vocab.bos_id if add_bos else None,
                                      vocab.eos_id if vocab.add_eos else None)
    return TokenizerParts(
        source=path,
        backend=backend,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.eos_id,
        extra_eos_token_ids=vocab.turn_end_ids,
        chat_template=vocab.chat_template,
    )


def read_gguf_vocabulary(path: Path) -> GGUFVocabulary:
    """Read and check the tokenizer metadata of a GGUF file."""
    reader = open_gguf(path)

    def field(key: str, default: Any = None) -> Any:
        return read_field(reader, path, f"tokenizer.{key}", default)

    kind = field("ggml.model")
    if kind is None:
        raise ModelLoadError(f"{path}: GGUF file has no tokenizer (tokenizer.ggml.model is missing)")
    tokens = field("ggml.tokens", [])
    token_types = field("ggml.token_type", [TokenType.NORMAL] * len(tokens))
    if not tokens or len(token_types) != len(tokens):
        raise ModelLoadError(f"{path}: GGUF tokenizer has {len(tokens)} tokens but {len(token_types)} token types")
    ids = {name: field(f"ggml.{name}_token_id") for name in ("bos", "eos", "unknown", "eot", "eom")}
    for name, token_id in ids.items():
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise ModelLoadError(f"{path}: tokenizer.ggml.{name}_token_id {token_id} is outside the vocabulary")
    return GGUFVocabulary(
        path=path,
        kind=kind,
        pre=field("ggml.pre", "default"),
        tokens=tokens,
        token_types=token_types,
        merges=field("ggml.merges"),
        scores=field("ggml.scores"),
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        unknown_id=ids["unknown"],
        turn_end_ids=frozenset({ids["eot"], ids["eom"]} - {None}),
        add_bos=field("ggml.add_bos_token"),
        add_eos=field("ggml.add_eos_token", False),
        add_space_prefix=field("ggml.add_space_prefix", True),
        chat_template=field("chat_template"),
    )


def _byte_level_tokenizer(vocab: GGUFVocabulary) -> Tokenizer:
    """Byte-level BPE with the merges of the file and the pre-tokenizer its ``pre`` names."""
    path, pre = vocab.path, vocab.pre
    if pre not in _BYTE_LEVEL_PRE_TOKENIZERS:
        raise ModelLoadError(
            f"{path}: byte-level pre-tokenizer {pre!r} is not supported "
            f"(supported: {', '.join(sorted(_BYTE_LEVEL_PRE_TOKENIZERS))})"
        )
    if vocab.merges is None:
        raise ModelLoadError(f"{path}: byte-level GGUF tokenizer has no tokenizer.ggml.merges")
    pairs = [tuple(merge.split(" ")) for merge in vocab.merges]
    if any(len(pair) != 2 for pair in pairs):
        raise ModelLoadError(f"{path}: tokenizer.ggml.merges has an entry that is not two space-separated tokens")
    ids = {token: index for index, token in enumerate(vocab.tokens)}
    backend = Tokenizer(models.BPE(vocab=ids, merges=pairs, ignore_merges=pre in _LLAMA3_PRE))
    if pre in _NFC_PRE:
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _BYTE_LEVEL_PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_tokenizer(vocab: GGUFVocabulary) -> Tokenizer:
    """SentencePiece BPE as transformers converts it: the ``▁`` prefix goes only before the start of the text."""
    if vocab.scores is None or len(vocab.scores) != len(vocab.tokens):
        raise ModelLoadError(
            f"{vocab.path}: SentencePiece GGUF tokenizer needs one tokenizer.ggml.scores entry per token"
        )
    model = models.BPE(
        vocab={token: index for index, token in enumerate(vocab.tokens)},
        merges=merges_from_scores(vocab.tokens, vocab.token_types, vocab.scores),
        unk_token=vocab.tokens[vocab.unknown_id] if vocab.unknown_id is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if vocab.add_space_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def merges_from_scores(tokens: list[str], token_types: list[int], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's scored pieces.

    SentencePiece joins the adjacent pair whose union is the highest-scoring
    normal piece. Every way to cut a normal piece into two normal pieces is a
    merge, ranked by the piece's score, then by longer left part, longer right
    part, and vocabulary order.
    """
    pieces = {token: index for index, token in enumerate(tokens) if token_types[index] == TokenType.NORMAL}
    ranked = []
    for token, index in pieces.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in pieces and right in pieces:
                ranked.append((-scores[index], -len(left), -len(right), index, pieces[left], (left, right)))
    ranked.sort()
    return [pair for *_, pair in ranked]


def _add_typed_tokens(backend: Tokenizer, vocab: GGUFVocabulary) -> None:
    """Register control/unknown tokens as special and user-defined ones as plain added tokens."""
    typed = list(zip(vocab.tokens, vocab.token_types))
    backend.add_special_tokens([
        AddedToken(token, normalized=False, special=True)
        for token, kind in typed
        if kind in (TokenType.CONTROL, TokenType.UNKNOWN)
    ])
    backend.add_tokens([
        AddedToken(token, normalized=False, special=False) for token, kind in typed if kind == TokenType.USER_DEFINED
    ])


def _framing(tokens: list[str], bos_id: int | None, eos_id: int | None) -> processors.PostProcessor | None:
    """A post-processor adding BOS/EOS when the file asks for them, or None."""
    before = [(tokens[bos_id], bos_id)] if bos_id is not None else []
    after = [(tokens[eos_id], eos_id)] if eos_id is not None else []
    if not before and not after:
        return None
    single = [token for token, _ in before] + ["$A"] + [token for token, _ in after]
    pair = single + [token for token, _ in before] + ["$B:1"] + [token for token, _ in after]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=before + after)
