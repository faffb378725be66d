"""Writing tiny GGUF models and vocabularies for tests, the way llama.cpp's converter would.

`write_tiny_gguf` builds a small random transformers model and writes it as a
GGUF file: tensor names from `gguf.TensorNameMap`, q/k rows of ``llama``
files interleaved for llama.cpp's RoPE, Llama 3 RoPE scaling stored as a
``rope_freqs`` tensor, and a small trained tokenizer. The returned model is
the reference a loader's output should match.

    model = write_tiny_gguf(tmp_path / "tiny.gguf", "qwen2")
    reference = model.state_dict()  # what load_gguf(...).tensors() should yield
    logits = model(input_ids).logits  # what a runtime loading the file should compute

`byte_level_vocab` and `sentencepiece_vocab` train tiny vocabularies with
`tokenizers`; `write_vocab_gguf` writes one into an otherwise empty model file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TRAINING_CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "Hello world! Hello there, general. It's what they'd say, isn't it? We're here.",
    "def main():\n    for i in range(10):\n        print(i * 2)\n    return None\n",
    "Numbers like 12345, 3.14159 and 2024-06-01 appear in text; 100% of them.",
    "Tokenizers split text into pieces; pieces merge into tokens, tokens into ids.",
    "<html><body class=\"main\">Some markup &amp; entities</body></html>",
]

_CONFIG_CLASSES = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
}
_GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyVocab:
    """A vocabulary in llama.cpp's ``tokenizer.ggml.*`` form."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    merges: list[str] | None
    scores: list[float] | None
    bos_token_id: int
    eos_token_id: int
    unknown_token_id: int | None
    chat_template: str | None
    add_bos_token: bool | None = None  # None: leave the key out of the file


def byte_level_vocab(
    pre: str = "gpt2", vocab_size: int = 400, chat_template: str | None = CHATML_TEMPLATE,
    add_bos_token: bool | None = None,
) -> TinyVocab:
    """A byte-level BPE vocabulary trained on `TRAINING_CORPUS`, with ChatML special tokens first."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(TRAINING_CORPUS, trainer)
    tokens = _tokens_by_id(tokenizer)
    merges = _merges_of(tokenizer)
    token_types = [TokenType.CONTROL if token in specials else TokenType.NORMAL for token in tokens]
    return TinyVocab("gpt2", pre, tokens, token_types, merges, None, bos_token_id=1, eos_token_id=2,
                     unknown_token_id=None, chat_template=chat_template, add_bos_token=add_bos_token)


def sentencepiece_vocab(vocab_size: int = 300) -> TinyVocab:
    """A SentencePiece-style vocabulary: ``<unk> <s> </s>``, 256 ``<0xXX>`` byte tokens, then scored pieces."""
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(TRAINING_CORPUS, trainer)
    pieces = _tokens_by_id(tokenizer)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)] + pieces
    token_types = (
        [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
        + [TokenType.NORMAL] * len(pieces)
    )
    # Later merges make lower-scored pieces, as in a SentencePiece BPE model.
    scores = [0.0] * (3 + 256) + [-float(rank) for rank in range(len(pieces))]
    template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    return TinyVocab("llama", None, tokens, token_types, None, scores, bos_token_id=1, eos_token_id=2,
                     unknown_token_id=0, chat_template=template)


def start_gguf(
    path: Path, architecture: str = "llama", config: transformers.PretrainedConfig | None = None
) -> GGUFWriter:
    """A GGUF writer for `path` with `config`'s hyperparameters (a tiny llama's by default) under `architecture`.

    Add tensors and metadata to it, then call `finish_gguf`.
    """
    writer = GGUFWriter(str(path), architecture)
    _add_llama_hparams(writer, config or tiny_config("llama", vocab_size=32))
    return writer


def finish_gguf(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf_with_tensors(
    path: Path, tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType]], architecture: str = "llama"
) -> Path:
    """A GGUF file with tiny-llama hyperparameters under `architecture` and the given raw tensors.

    Each tensor is ``(data, type)``: float32 data for F32, else bytes already
    in `type`'s block format (as `gguf.quants.quantize` returns them).
    """
    writer = start_gguf(path, architecture)
    for name, (data, tensor_type) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=None if tensor_type == GGMLQuantizationType.F32 else tensor_type)
    finish_gguf(writer)
    return path


def write_vocab_gguf(path: Path, vocab: TinyVocab) -> Path:
    """A GGUF file holding `vocab` and the hyperparameters of a tiny llama, but no tensors."""
    writer = start_gguf(path, "llama", tiny_config("llama", vocab_size=len(vocab.tokens)))
    add_vocab(writer, vocab)
    finish_gguf(writer)
    return path


def add_vocab(writer: GGUFWriter, vocab: TinyVocab) -> None:
    """Write `vocab` as ``tokenizer.*`` metadata."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types([int(kind) for kind in vocab.token_types])
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_bos_token_id(vocab.bos_token_id)
    writer.add_eos_token_id(vocab.eos_token_id)
    if vocab.unknown_token_id is not None:
        writer.add_unk_token_id(vocab.unknown_token_id)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
    if vocab.add_bos_token is not None:
        writer.add_add_bos_token(vocab.add_bos_token)


def tiny_config(model_type: str, vocab_size: int, **overrides) -> transformers.PretrainedConfig:
    """A transformers config for a 2-layer, 64-wide `model_type` model; `overrides` replace fields."""
    settings = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    settings.update(overrides)
    return _CONFIG_CLASSES[model_type](**settings)


def write_tiny_gguf(
    path: Path,
    model_type: str = "llama",
    *,
    vocab: TinyVocab | None = None,
    tensor_type: GGMLQuantizationType = GGMLQuantizationType.F32,
    seed: int = 0,
    **config_overrides,
) -> transformers.PreTrainedModel:
    """Write a tiny random `model_type` model to `path`; return it as the transformers reference.

    2-D weights are stored as `tensor_type` where their rows fit its block
    size (F32 otherwise, as llama.cpp does); norms and biases stay F32.
    """
    vocab = vocab or byte_level_vocab()
    torch.manual_seed(seed)
    config = tiny_config(model_type, len(vocab.tokens), **config_overrides)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms start as ones; make them distinctive
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.copy_(torch.randn_like(parameter))
    architecture = _GGUF_ARCHITECTURES[model_type]
    writer = start_gguf(path, architecture, config)
    writer.add_name(f"tiny {model_type}")
    add_vocab(writer, vocab)
    for name, tensor in _gguf_tensors(model, architecture):
        _add_tensor(writer, name, tensor, tensor_type)
    finish_gguf(writer)
    return model


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter reorder of q/k rows: per head, interleave the two rotary halves."""
    halves = weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
    return halves.swapaxes(1, 2).reshape(weights.shape)


def llama3_rope_factors(config: transformers.PretrainedConfig) -> np.ndarray:
    """The ``rope_freqs`` tensor llama.cpp's converter writes for Llama 3 RoPE scaling."""
    rope = config.rope_parameters
    head_dim = config.head_dim
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    factors = []
    for index in range(0, head_dim, 2):
        wavelength = 2 * math.pi * rope["rope_theta"] ** (index / head_dim)
        if wavelength < original / high:
            factors.append(1.0)
        elif wavelength > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _gguf_tensors(model: transformers.PreTrainedModel, architecture: str):
    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.upper()], config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{name_map.get_name(stem)}.{suffix}"
        values = tensor.float().numpy()
        if architecture == "llama" and ".attn_q." in gguf_name:
            values = llama_cpp_permute(values, config.num_attention_heads)
        if architecture == "llama" and ".attn_k." in gguf_name:
            values = llama_cpp_permute(values, config.num_key_value_heads)
        yield gguf_name, values
    if config.rope_parameters.get("rope_type") == "llama3":
        yield "rope_freqs.weight", llama3_rope_factors(config)


def _add_tensor(writer: GGUFWriter, name: str, values: np.ndarray, tensor_type: GGMLQuantizationType) -> None:
    block_size, _ = gguf.GGML_QUANT_SIZES[tensor_type]
    if values.ndim == 2 and values.shape[1] % block_size == 0 and tensor_type != GGMLQuantizationType.F32:
        writer.add_tensor(name, gguf.quants.quantize(values, tensor_type), raw_dtype=tensor_type)
    else:
        writer.add_tensor(name, np.ascontiguousarray(values, dtype=np.float32))


def _add_llama_hparams(writer: GGUFWriter, config: transformers.PretrainedConfig) -> None:
    """The hyperparameters llama.cpp writes for llama-family models, under the writer's architecture."""
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)


def _tokens_by_id(tokenizer: Tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return sorted(vocab, key=vocab.__getitem__)


def _merges_of(tokenizer: Tokenizer) -> list[str]:
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]
