"""Tests for reading GGUF checkpoints as transformers-style configs and parameters."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q

from gguf_fixtures import (
    byte_level_vocab, finish_gguf, start_gguf, tiny_config, write_gguf_with_tensors, write_tiny_gguf,
)
from runtime.errors import ModelLoadError
from runtime.model_files import ModelSource
from runtime.weights.gguf import SUPPORTED_TENSOR_TYPES, GGUFCheckpoint, load_gguf

EMBEDDING = (np.zeros((32, 64), dtype=np.float32), Q.F32)

# Byte offsets of the float16 scales in each k-quant block (from ggml's block structs).
K_QUANT_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def encoded_tensor(tensor_type: Q, rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """Data for a `rows` x `columns` tensor in `tensor_type`'s storage format.

    gguf-py cannot quantize to the k-quants, so those get random blocks with
    small, well-formed scales.
    """
    if tensor_type not in K_QUANT_SCALE_OFFSETS:
        return gguf.quants.quantize(rng.standard_normal((rows, columns), dtype=np.float32), tensor_type)
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[tensor_type]
    blocks = rng.integers(0, 256, size=(rows * columns // block_size, block_bytes), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    for offset in K_QUANT_SCALE_OFFSETS[tensor_type]:
        blocks[:, offset:offset + 2] = scale
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("tensor_type", sorted(SUPPORTED_TENSOR_TYPES, key=int), ids=lambda kind: kind.name)
def test_each_tensor_type_dequantizes_like_gguf_py(tmp_path: Path, tensor_type: Q) -> None:
    data = encoded_tensor(tensor_type, rows=8, columns=512, rng=np.random.default_rng(int(tensor_type)))
    path = write_gguf_with_tensors(
        tmp_path / "one.gguf", {"token_embd.weight": EMBEDDING, "blk.0.ffn_down.weight": (data, tensor_type)}
    )
    loaded = dict(load_gguf(path).tensors(torch.float32))["model.layers.0.mlp.down_proj.weight"]
    reference = gguf.quants.dequantize(data, tensor_type)
    assert reference.shape == (8, 512)
    assert torch.equal(loaded, torch.from_numpy(reference.copy()))


# ---- the real SmolLM2 file against transformers' own GGUF loader ----


@pytest.fixture(scope="module")
def smollm2_checkpoint(smollm2_source: ModelSource) -> GGUFCheckpoint:
    return load_gguf(smollm2_source.path)


@pytest.fixture(scope="module")
def smollm2_hf_model(smollm2_source: ModelSource) -> transformers.PreTrainedModel:
    path = smollm2_source.path
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.mark.slow
def test_smollm2_tensors_equal_transformers(smollm2_checkpoint: GGUFCheckpoint, smollm2_hf_model) -> None:
    ours = dict(smollm2_checkpoint.tensors(torch.float32))
    reference = smollm2_hf_model.state_dict()
    assert set(reference) - set(ours) == {"lm_head.weight"}  # tied to the embedding
    assert set(ours) <= set(reference)
    mismatched = [name for name, tensor in ours.items() if not torch.equal(tensor, reference[name])]
    assert mismatched == []


@pytest.mark.slow
def test_smollm2_config_agrees_with_transformers(smollm2_checkpoint: GGUFCheckpoint, smollm2_hf_model) -> None:
    config = smollm2_checkpoint.config
    reference = smollm2_hf_model.config
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "vocab_size",
                "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert config[key] == getattr(reference, key), key
    assert config["rope_theta"] == reference.rope_parameters["rope_theta"]
    assert config["rope_scaling"] is None and config["architectures"] == ["LlamaForCausalLM"]


# ---- tiny models written the way llama.cpp's converter writes them ----


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_tiny_models_round_trip_to_transformers_tensors(tmp_path: Path, model_type: str, tied: bool) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf", model_type, tie_word_embeddings=tied)
    checkpoint = load_gguf(tmp_path / "tiny.gguf")
    ours = dict(checkpoint.tensors(torch.float32))
    reference = model.state_dict()
    expected_names = set(reference) - ({"lm_head.weight"} if tied else set())
    assert set(ours) == expected_names
    assert all(torch.equal(ours[name], reference[name]) for name in ours)
    assert checkpoint.config["model_type"] == model_type
    assert checkpoint.config["tie_word_embeddings"] is tied
    assert checkpoint.config["attention_bias"] is (model_type == "qwen2")


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_tiny_files_load_in_transformers_too(tmp_path: Path, model_type: str) -> None:
    """The fixture writes what transformers' GGUF loader (which undoes llama.cpp's permutation) expects."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf", model_type)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    reference, theirs = model.state_dict(), loaded.state_dict()
    assert set(reference) == set(theirs)
    assert all(torch.equal(reference[name], theirs[name]) for name in reference)


def test_tiny_config_matches_the_written_model(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf", "qwen3", head_dim=32)
    config, reference = load_gguf(tmp_path / "tiny.gguf").config, model.config
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size"):
        assert config[key] == getattr(reference, key), key
    assert config["rms_norm_eps"] == pytest.approx(reference.rms_norm_eps)
    assert config["rope_theta"] == reference.rope_parameters["rope_theta"]


@pytest.mark.parametrize("tensor_type", [Q.F16, Q.Q8_0], ids=lambda kind: kind.name)
def test_quantized_query_and_key_rows_are_unpermuted(tmp_path: Path, tensor_type: Q) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", tensor_type=tensor_type)
    ours = dict(load_gguf(tmp_path / "tiny.gguf").tensors(torch.float32))
    for name, expected in model.state_dict().items():
        tolerance = 0.02 * float(expected.abs().max())
        torch.testing.assert_close(ours[name], expected, atol=tolerance, rtol=0, msg=name)


def test_tensors_are_converted_to_the_requested_dtype(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf", "qwen2")
    checkpoint = load_gguf(tmp_path / "tiny.gguf")
    full = dict(checkpoint.tensors(torch.float32))
    for name, tensor in checkpoint.tensors(torch.bfloat16):
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, full[name].to(torch.bfloat16))


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


WIDER = {"hidden_size": 256, "intermediate_size": 256}  # head_dim 64: several frequencies in the smooth band


@pytest.mark.parametrize(
    ("sizes", "rope"),
    [
        ({}, {**LLAMA3_ROPE, "rope_theta": 500000.0, "original_max_position_embeddings": 32}),
        ({}, {**LLAMA3_ROPE, "original_max_position_embeddings": 128}),
        (WIDER, {**LLAMA3_ROPE, "original_max_position_embeddings": 96}),
        (WIDER, {**LLAMA3_ROPE, "high_freq_factor": 2.5, "original_max_position_embeddings": 64}),
    ],
    ids=["no-smooth-frequency", "one-smooth-frequency", "llama3-low-high", "custom-high-factor"],
)
def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path: Path, sizes: dict, rope: dict) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf", "llama", rope_scaling=dict(rope), max_position_embeddings=1024, **sizes)
    checkpoint = load_gguf(tmp_path / "tiny.gguf")
    recovered = dict(checkpoint.config["rope_scaling"])
    assert recovered.pop("rope_type") == "llama3"
    assert recovered == pytest.approx({key: rope[key] for key in recovered})
    assert set(recovered) == set(rope) - {"rope_type", "rope_theta"}
    assert "rope_freqs.weight" not in dict(checkpoint.tensors())


@pytest.mark.parametrize(
    ("scaling_type", "expected"),
    [
        (gguf.RopeScalingType.LINEAR, {"rope_type": "linear", "factor": 4.0}),
        (gguf.RopeScalingType.YARN, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}),
    ],
    ids=["linear", "yarn"],
)
def test_rope_scaling_metadata_maps_to_transformers_form(tmp_path: Path, scaling_type, expected: dict) -> None:
    writer = start_gguf(tmp_path / "scaled.gguf", "qwen2", tiny_config("qwen2", vocab_size=32, num_key_value_heads=4))
    writer.add_rope_scaling_type(scaling_type)
    writer.add_rope_scaling_factor(4.0)
    writer.add_rope_scaling_orig_ctx_len(512)
    writer.add_tensor("token_embd.weight", EMBEDDING[0])
    finish_gguf(writer)
    config = load_gguf(tmp_path / "scaled.gguf").config
    assert config["rope_scaling"] == expected
    assert config["num_key_value_heads"] == config["num_attention_heads"] == 4


def test_metadata_keeps_scalars_and_short_arrays_only(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf", "llama", vocab=byte_level_vocab())
    metadata = load_gguf(tmp_path / "tiny.gguf").metadata
    assert metadata["general.name"] == "tiny llama"
    assert metadata["llama.block_count"] == 2
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert "tokenizer.ggml.tokens" not in metadata and "tokenizer.ggml.merges" not in metadata


# ---- bad input ----


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"absent\.gguf: GGUF file not found"):
        load_gguf(tmp_path / "absent.gguf")


def test_text_file_is_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("these are notes, not weights\n")
    with pytest.raises(ModelLoadError, match=r"notes\.gguf: not a GGUF file"):
        load_gguf(path)


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.99])
def test_truncated_file_is_reported(tmp_path: Path, keep: float) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match=r"cut\.gguf: GGUF file is truncated or corrupt"):
        load_gguf(tmp_path / "cut.gguf")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = write_gguf_with_tensors(tmp_path / "gpt2.gguf", {"token_embd.weight": EMBEDDING}, architecture="gpt2")
    with pytest.raises(ModelLoadError, match=r"gpt2\.gguf: architecture 'gpt2' is not supported \(supported: llama"):
        load_gguf(path)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path: Path) -> None:
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    raw = np.zeros((4, 64 // block_size * block_bytes), dtype=np.uint8)
    path = write_gguf_with_tensors(
        tmp_path / "q81.gguf", {"token_embd.weight": EMBEDDING, "blk.0.ffn_up.weight": (raw, Q.Q8_1)}
    )
    with pytest.raises(ModelLoadError, match=r"q81\.gguf: tensor blk\.0\.ffn_up\.weight has type Q8_1"):
        load_gguf(path)


def test_unknown_tensor_is_named(tmp_path: Path) -> None:
    experts = (np.zeros((4, 64), dtype=np.float32), Q.F32)
    path = write_gguf_with_tensors(
        tmp_path / "moe.gguf", {"token_embd.weight": EMBEDDING, "blk.0.ffn_gate_exps.weight": experts}
    )
    with pytest.raises(ModelLoadError, match=r"moe\.gguf: tensor blk\.0\.ffn_gate_exps\.weight is not part"):
        load_gguf(path)


def test_missing_hyperparameter_is_named(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    writer.add_tensor("token_embd.weight", EMBEDDING[0])
    finish_gguf(writer)
    with pytest.raises(ModelLoadError, match=r"bare\.gguf: GGUF metadata llama\.embedding_length is missing"):
        load_gguf(tmp_path / "bare.gguf")
