"""Building a model from a resolved checkpoint: config, module on the target device, weights."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from rich.progress import Progress

from runtime.config import ModelConfig
from runtime.errors import ModelLoadError
from runtime.model.llama import LlamaForCausalLM
from runtime.model_files import ModelSource
from runtime.weights.gguf import load_gguf
from runtime.weights.hf import iter_safetensors, read_hf_config

LOAD_FORMATS = ("auto", "dummy")


def load_model(
    source: ModelSource, dtype: torch.dtype, device: torch.device, load_format: str = "auto", seed: int = 0
) -> LlamaForCausalLM:
    """Build the model described by ``source`` on ``device`` in ``dtype`` and fill its weights."""
    if load_format not in LOAD_FORMATS:
        raise ModelLoadError(f"load_format {load_format!r} is not one of {', '.join(LOAD_FORMATS)}")
    if source.kind == "gguf":
        checkpoint = load_gguf(source.path)
        hf_config, tensors = checkpoint.config, lambda: checkpoint.tensors(dtype)
    else:
        hf_config = read_hf_config(source.path)
        tensors = lambda: iter_safetensors(source.path, dtype)  # noqa: E731
    config = ModelConfig.from_hf(hf_config)
    with _default_dtype(dtype), torch.device(device):
        model = LlamaForCausalLM(config)
    if load_format == "dummy":
        _randomize(model, seed)
    else:
        model.load_weights(_with_progress(tensors(), f"loading {source.path.name}"))
    return model.eval()


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _randomize(model: LlamaForCausalLM, seed: int) -> None:
    """Small uniform weights (norm scales stay 1): same FLOPs and bytes as the real model, finite outputs."""
    generator = torch.Generator(device=model.embed_tokens.weight.device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.uniform_(-0.02, 0.02, generator=generator)


def _with_progress(tensors, description: str):
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=None)
        for item in tensors:
            yield item
            progress.advance(task)
