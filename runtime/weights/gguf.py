"""Reading a GGUF checkpoint as a Hugging Face style config and parameters.

`load_gguf` turns llama.cpp's metadata into the ``config.json`` dict that
transformers would write for the same model, and `GGUFCheckpoint.tensors`
yields every parameter under its transformers name, dequantized and in the
layout transformers uses. Dequantization is done by `gguf.quants`.

llama.cpp's converter reorders the rows of the q and k projections of
``llama`` models (which include Mistral) so its RoPE kernel can rotate
adjacent pairs; `tensors` undoes that. Qwen2 and Qwen3 files are not reordered.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderTensor
from gguf.quants import dequantize

from runtime.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

_Q = GGMLQuantizationType
SUPPORTED_TENSOR_TYPES = frozenset({
    _Q.F32, _Q.F16, _Q.BF16,
    _Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1, _Q.Q8_0,
    _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K,
})

# Architectures whose q/k rows llama.cpp interleaves for its RoPE layout.
_ROPE_PERMUTED_ARCHITECTURES = frozenset({"llama"})

_HF_ARCHITECTURE_NAMES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

_GLOBAL_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

_BLOCK_MODULE_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# Llama 3 RoPE scaling is stored as per-frequency factors in this tensor; it
# is folded into config["rope_scaling"] rather than yielded as a parameter.
_ROPE_FREQS_TENSOR = "rope_freqs.weight"

_MAX_METADATA_ARRAY_ITEMS = 16


@dataclass(frozen=True)
class GGUFCheckpoint:
    """A GGUF model file, read as transformers would see it.

    `config` is the transformers ``config.json`` dict of the model. `metadata`
    holds the file's key/values; arrays longer than 16 items (vocabularies,
    merges) are left out. `gguf_tensors` are the file's tensors as stored.
    """

    path: Path
    config: dict[str, Any]
    metadata: dict[str, Any]
    gguf_tensors: tuple[ReaderTensor, ...] = field(repr=False)

    def tensors(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(transformers_name, tensor)`` for every parameter, dequantized to `dtype`.

        Tensors come in file order, one at a time, so at most one is held in
        memory at once besides what the caller keeps.
        """
        architecture = self.metadata["general.architecture"]
        row_heads = {"attn_q": self.config["num_attention_heads"], "attn_k": self.config["num_key_value_heads"]}
        for tensor in self.gguf_tensors:
            if tensor.name == _ROPE_FREQS_TENSOR:
                continue
            values = torch.from_numpy(_dequantized(tensor))
            block = _BLOCK_TENSOR.fullmatch(tensor.name)
            if architecture in _ROPE_PERMUTED_ARCHITECTURES and block and block.group(2) in row_heads:
                values = _unpermute_rope_rows(values, row_heads[block.group(2)])
            yield hf_tensor_name(tensor.name), values.to(dtype)


def load_gguf(path: str | os.PathLike[str]) -> GGUFCheckpoint:
    """Read the metadata and tensor index of a GGUF model file.

    Raises `ModelLoadError` naming the file if it is missing, not a GGUF file,
    truncated, of an unsupported architecture, or holds a tensor this loader
    does not know or cannot dequantize.
    """
    path = Path(path)
    reader = open_gguf(path)
    architecture = read_field(reader, path, "general.architecture")
    if architecture is None:
        raise ModelLoadError(f"{path}: GGUF file has no general.architecture, so it is not a model")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {architecture!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    _check_tensors(path, tensors.values())
    config = _hf_config(reader, path, architecture, tensors)
    metadata = _plain_metadata(reader, path)
    return GGUFCheckpoint(path=path, config=config, metadata=metadata, gguf_tensors=tuple(tensors.values()))


def open_gguf(path: str | os.PathLike[str]) -> GGUFReader:
    """Open a GGUF file, turning any failure to parse it into a `ModelLoadError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: GGUF file not found")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError) as error:
        raise ModelLoadError(f"{path}: GGUF file is truncated or corrupt ({error})") from None


def read_field(reader: GGUFReader, path: Path, key: str, default: Any = None) -> Any:
    """The value of metadata `key` (a list for arrays), or `default` if the file lacks it."""
    found = reader.fields.get(key)
    if found is None:
        return default
    try:
        return found.contents()
    except UnicodeDecodeError:
        raise ModelLoadError(f"{path}: GGUF metadata {key} is not valid UTF-8") from None


def hf_tensor_name(gguf_name: str) -> str:
    """The transformers parameter name of a llama.cpp tensor name such as ``blk.3.attn_q.weight``.

    Raises `KeyError` for tensors that are not part of a supported model.
    """
    if gguf_name in _GLOBAL_TENSOR_NAMES:
        return _GLOBAL_TENSOR_NAMES[gguf_name]
    block = _BLOCK_TENSOR.fullmatch(gguf_name)
    if block is None or block.group(2) not in _BLOCK_MODULE_NAMES:
        raise KeyError(gguf_name)
    layer, module, kind = block.groups()
    return f"model.layers.{layer}.{_BLOCK_MODULE_NAMES[module]}.{kind}"


def _check_tensors(path: Path, tensors: Iterable[ReaderTensor]) -> None:
    for tensor in tensors:
        if tensor.tensor_type not in SUPPORTED_TENSOR_TYPES:
            supported = ", ".join(sorted(kind.name for kind in SUPPORTED_TENSOR_TYPES))
            raise ModelLoadError(
                f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, "
                f"which is not supported (supported: {supported})"
            )
        if tensor.name == _ROPE_FREQS_TENSOR:
            continue
        try:
            hf_tensor_name(tensor.name)
        except KeyError:
            raise ModelLoadError(f"{path}: tensor {tensor.name} is not part of a supported model") from None


def _dequantized(tensor: ReaderTensor) -> np.ndarray:
    """The tensor as a writable float32 array in row-major (transformers) shape."""
    values = dequantize(tensor.data, tensor.tensor_type)
    if not values.flags.writeable:
        values = values.copy()
    return values.reshape(tuple(int(size) for size in reversed(tensor.shape)))


def _unpermute_rope_rows(values: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order.

    Within each head, transformers keeps the two rotated halves as two blocks
    of rows; llama.cpp interleaves them row by row.
    """
    head_dim = values.shape[0] // heads
    per_head = values.reshape(heads, head_dim // 2, 2, *values.shape[1:])
    return per_head.transpose(1, 2).reshape(values.shape)


def _hf_config(
    reader: GGUFReader, path: Path, architecture: str, tensors: dict[str, ReaderTensor]
) -> dict[str, Any]:
    """The transformers ``config.json`` dict of the model in `reader`."""
    def hparam(key: str, default: Any = None) -> Any:
        full_key = f"{architecture}.{key}"
        value = read_field(reader, path, full_key, default)
        if value is None:
            raise ModelLoadError(f"{path}: GGUF metadata {full_key} is missing")
        if isinstance(value, list):
            raise ModelLoadError(f"{path}: GGUF metadata {full_key} varies per layer, which is not supported")
        return value

    if "token_embd.weight" not in tensors:
        raise ModelLoadError(f"{path}: GGUF file has no token_embd.weight tensor")
    hidden_size = hparam("embedding_length")
    heads = hparam("attention.head_count")
    head_dim = hparam("attention.key_length", hidden_size // heads)
    rope_theta = float(hparam("rope.freq_base", 10000.0))
    model_type = _model_type(reader, path, architecture)
    rope_scaling = _rope_scaling(reader, path, architecture, tensors.get(_ROPE_FREQS_TENSOR), head_dim, rope_theta)
    return {
        "architectures": [_HF_ARCHITECTURE_NAMES[model_type]],
        "model_type": model_type,
        "hidden_size": hidden_size,
        "intermediate_size": hparam("feed_forward_length"),
        "num_hidden_layers": hparam("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": hparam("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(hparam("attention.layer_norm_rms_epsilon")),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": hparam("context_length"),
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
        "bos_token_id": read_field(reader, path, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": read_field(reader, path, "tokenizer.ggml.eos_token_id"),
    }


def _model_type(reader: GGUFReader, path: Path, architecture: str) -> str:
    """llama.cpp files Mistral models under ``llama``; tell them apart by the model's name."""
    if architecture == "llama":
        names = (read_field(reader, path, key) or "" for key in ("general.name", "general.basename"))
        if any("mistral" in name.lower() for name in names):
            return "mistral"
    return architecture


def _rope_scaling(
    reader: GGUFReader, path: Path, architecture: str, rope_freqs: ReaderTensor | None, head_dim: int,
    rope_theta: float,
) -> dict[str, Any] | None:
    """transformers' rope_scaling for the file: Llama 3 style if it has per-frequency factors, else from metadata."""
    if rope_freqs is not None:
        return _llama3_rope_scaling(path, _dequantized(rope_freqs).astype(np.float64), head_dim, rope_theta)
    kind = read_field(reader, path, f"{architecture}.rope.scaling.type", "none")
    factor = read_field(reader, path, f"{architecture}.rope.scaling.factor")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        original = read_field(reader, path, f"{architecture}.rope.scaling.original_context_length")
        return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    raise ModelLoadError(f"{path}: RoPE scaling type {kind!r} is not supported (supported: linear, yarn, llama3)")


def _llama3_rope_scaling(
    path: Path, factors: np.ndarray, head_dim: int, rope_theta: float
) -> dict[str, Any] | None:
    """Recover transformers' ``llama3`` rope_scaling from llama.cpp's per-frequency factors.

    Candidate parameters are tried in turn and the first that reproduces every
    factor is returned.
    """
    if factors.max() == 1.0:
        return None
    wavelengths = 2 * math.pi * rope_theta ** (np.arange(0, head_dim, 2) / head_dim)
    if factors.shape != wavelengths.shape:
        raise ModelLoadError(f"{path}: {_ROPE_FREQS_TENSOR} has {factors.size} factors, expected {wavelengths.size}")
    for params in _llama3_candidates(factors, wavelengths):
        if np.allclose(_llama3_factors(params, wavelengths), factors, rtol=1e-4):
            return params
    raise ModelLoadError(f"{path}: {_ROPE_FREQS_TENSOR} does not describe Llama 3 RoPE scaling")


def _llama3_candidates(factors: np.ndarray, wavelengths: np.ndarray) -> Iterator[dict[str, Any]]:
    """Llama 3 RoPE parameters that may explain `factors`, most likely first.

    Each factor is 1 for short wavelengths, ``factor`` for long ones, and
    ``1 / ((1 - s) / factor + s)`` in between, where
    ``s = original / (high - low) / wavelength - low / (high - low)``.
    Two or more in-between factors fix that line (taking low = 1); one fixes
    ``original`` given Llama 3's low and high factors. Failing that, Llama 3's
    published values are tried with each power-of-two original context.
    """
    factor = float(factors.max())
    base = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    between = (factors > 1.0 + 1e-6) & (factors < factor - 1e-6)
    smooth = (1 / factors[between] - 1 / factor) / (1 - 1 / factor)
    inverse_wavelengths = 1 / wavelengths[between]
    if between.sum() >= 2:
        slope, intercept = np.polyfit(inverse_wavelengths, smooth, 1)
        if intercept < 0:
            gap = -1 / intercept  # high - low
            yield {**base, "high_freq_factor": float(round(1 + gap, 6)),
                   "original_max_position_embeddings": int(round(slope * gap))}
    elif between.sum() == 1:
        original = (1.0 + smooth[0] * 3.0) / inverse_wavelengths[0]
        yield {**base, "original_max_position_embeddings": int(round(original))}
    for original in (8192, *(2**exponent for exponent in range(4, 21))):
        yield {**base, "original_max_position_embeddings": original}


def _llama3_factors(params: dict[str, Any], wavelengths: np.ndarray) -> np.ndarray:
    """The per-frequency factors transformers' ``llama3`` RoPE applies for `params`."""
    original, factor = params["original_max_position_embeddings"], params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    smooth = np.clip((original / wavelengths - low) / (high - low), 0.0, 1.0)
    return 1 / ((1 - smooth) / factor + smooth)


def _plain_metadata(reader: GGUFReader, path: Path) -> dict[str, Any]:
    """The file's key/values, less the reader's header entries and long arrays."""
    metadata = {}
    for key, found in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if found.types[0] == GGUFValueType.ARRAY and len(found.data) > _MAX_METADATA_ARRAY_ITEMS:
            continue
        metadata[key] = read_field(reader, path, key)
    return metadata
