"""Tiny random-initialized Hugging Face checkpoints of each supported family, written with ``transformers``."""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.2,
)

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "smollm2": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(tie_word_embeddings=False, sliding_window=8, head_dim=16)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=False, head_dim=32, use_sliding_window=False)),
}


def make_hf_model(family: str, directory: Path, seed: int = 0, **overrides):
    """Write a random ``family`` checkpoint (config.json + model.safetensors) to ``directory``; return the HF
    model. ``overrides`` replace config fields."""
    import transformers

    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**COMMON, **extra, **overrides})
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(directory)
    return model


def write_word_tokenizer(directory: Path, vocab_size: int = 256) -> None:
    """A word-level ``tokenizer.json`` whose tokens are ``w0 .. w{vocab_size-1}``, split on whitespace."""
    import json

    (directory / "tokenizer.json").write_text(json.dumps({
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(vocab_size)}, "unk_token": "w0"},
        "pre_tokenizer": {"type": "Whitespace"}, "decoder": None, "added_tokens": [],
    }))


def word_runtime(directory: Path, **options):
    """A local `Runtime` (CPU, float32) on a random tiny llama with the word tokenizer, both written to
    ``directory``; ``options`` are the runtime's (``cpu_kv_tokens``...)."""
    from backends.local import Runtime

    make_hf_model("llama", directory)
    write_word_tokenizer(directory)
    return Runtime(model=str(directory), device="cpu", dtype="float32", **options)
