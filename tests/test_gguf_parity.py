"""Logit parity for models read from GGUF files: tiny random models of each family, F32 and quantized."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType

from gguf_fixtures import write_tiny_gguf
from runtime.args import RuntimeArgs
from runtime.model_runner import ModelRunner
from runtime.sequences import Sequences


def ours_logits(path, prompts) -> torch.Tensor:
    runner = ModelRunner(RuntimeArgs(model=str(path), device="cpu", dtype="float32", cpu_kv_tokens=1024,
                                     max_running_requests=4))
    with Sequences(runner, len(prompts)) as seqs:
        return seqs.extend(list(range(len(prompts))), prompts, all_logits=True)


def reference_logits(model, prompts) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(torch.tensor([p])).logits[0] for p in prompts])


def rel_err(ours, ref) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


PROMPTS = [[5, 9, 33, 2, 17, 80, 41], [100, 3], [7] * 20]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("tied", [False, True])
def test_f32_gguf_matches_the_model_it_was_written_from(tmp_path, family, tied):
    path = tmp_path / f"{family}.gguf"
    extra = {"head_dim": 32} if family == "qwen3" else {}
    model = write_tiny_gguf(path, family, tie_word_embeddings=tied, **extra)
    assert rel_err(ours_logits(path, PROMPTS), reference_logits(model, PROMPTS)) <= 1e-4


@pytest.mark.parametrize("tensor_type", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1])
def test_quantized_gguf_matches_transformers_reading_the_same_file(tmp_path, tensor_type):
    from transformers import AutoModelForCausalLM

    path = tmp_path / "quantized.gguf"
    write_tiny_gguf(path, "llama", tensor_type=tensor_type, hidden_size=256, intermediate_size=512)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    assert rel_err(ours_logits(path, PROMPTS), reference_logits(hf, PROMPTS)) <= 1e-4
