"""Building blocks of the decoder: RMSNorm (optionally fused with the residual add), rotary embeddings, the
gated MLP.

On CUDA tensors each block runs as one FlashInfer kernel when FlashInfer is installed (fewer, larger
kernels are what make small-batch decoding fast); elsewhere it runs as plain PyTorch, the reference."""

from __future__ import annotations

import functools
import math
from types import ModuleType

import torch
from torch import nn
from torch.nn import functional as F

from runtime.config import ModelConfig, RopeConfig


@functools.cache
def _flashinfer() -> ModuleType | None:
    try:
        import flashinfer
    except ImportError:
        return None
    return flashinfer


def fused_kernels(x: torch.Tensor) -> ModuleType | None:
    """FlashInfer, if ``x`` is a half-precision tensor on a CUDA device and FlashInfer is installed."""
    return _flashinfer() if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) else None


class RMSNorm(nn.Module):
    """Root-mean-square norm in float32, scaled by a learned weight.

    ``norm(x)`` returns the normed ``x``; ``norm(x, residual)`` first adds ``x`` to ``residual`` and returns
    ``(normed sum, sum)``, the pre-norm residual pattern of every decoder layer."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        kernels = fused_kernels(x)
        if kernels is not None:
            if residual is None:
                return kernels.norm.rmsnorm(x.reshape(-1, x.shape[-1]), self.weight, self.eps).view(x.shape)
            kernels.norm.fused_add_rmsnorm(x, residual, self.weight, self.eps)
            return x, residual
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies for ``head_dim`` rotary dimensions, with linear or llama3 scaling applied."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        return _llama3_scaled(inv_freq, rope)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    low_freq_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_freq_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotary position embeddings (rotate-half layout) for ``[tokens, heads * head_dim]`` queries and keys.

    The ``[max_positions, head_dim]`` table (cos then sin halves) is computed once in float32."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_dim = config.head_dim
        inv_freq = rope_inv_freq(config.rope, config.head_dim)
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        self.register_buffer("cos_sin", torch.cat([freqs.cos(), freqs.sin()], dim=-1), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        kernels = fused_kernels(q)
        if kernels is not None:
            kernels.rope.apply_rope_with_cos_sin_cache_inplace(
                positions, q, k, self.head_dim, self.cos_sin, is_neox=True
            )
            return q, k
        cos, sin = self.cos_sin[positions].chunk(2, dim=-1)
        return _rotate(q, cos, sin, self.head_dim), _rotate(k, cos, sin, self.head_dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    heads = x.view(x.shape[0], -1, head_dim)
    x1, x2 = heads.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).view(x.shape)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward with the gate and up projections fused into one matmul."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        kernels = fused_kernels(x)
        if kernels is not None:
            return self.down_proj(kernels.activation.silu_and_mul(gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)
