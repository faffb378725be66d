"""Attention backends: each plans once per batch and then runs every layer's attention over the paged KV cache."""

from __future__ import annotations

from typing import Protocol

import torch

from runtime.forward_batch import ForwardBatch

ATTENTION_BACKENDS = ("torch", "flashinfer")


class AttentionBackend(Protocol):
    """Stores each layer's new keys and values in the KV cache and attends over every sequence's full context.

    ``plan`` is called once per batch, after the request-to-token table holds the batch's new slots;
    ``forward`` is called once per layer with ``q: [T, H, D]``, ``k, v: [T, H_kv, D]`` and returns ``[T, H, D]``."""

    def plan(self, batch: ForwardBatch, req_to_token: torch.Tensor) -> None: ...

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


def default_backend(device: torch.device) -> str:
    """``flashinfer`` on CUDA devices where it is installed, else ``torch``."""
    if device.type == "cuda":
        try:
            import flashinfer  # noqa: F401
        except ImportError:
            return "torch"
        return "flashinfer"
    return "torch"
