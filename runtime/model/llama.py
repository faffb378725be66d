"""A Llama-family decoder (Llama 2/3/3.x, SmolLM2, Mistral, Qwen2/2.5, Qwen3) over a paged KV cache.

Every forward pass takes a flattened batch of new tokens (see ``ForwardBatch``); attention is delegated to an
``AttentionBackend`` that was planned for that batch. Weights load from Hugging Face parameter names."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from runtime.attention import AttentionBackend
from runtime.config import ModelConfig
from runtime.errors import ModelLoadError
from runtime.forward_batch import ForwardBatch
from runtime.model.layers import GatedMLP, RMSNorm, RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.config = config
        self.qkv_proj = nn.Linear(config.hidden_size, config.q_size + 2 * config.kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.q_size, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, x, positions, rotary: RotaryEmbedding, attention: AttentionBackend) -> torch.Tensor:
        c = self.config
        q, k, v = self.qkv_proj(x).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        if c.qk_norm:
            q = self.q_norm(q.reshape(-1, c.head_dim)).view(-1, c.q_size)
            k = self.k_norm(k.reshape(-1, c.head_dim)).view(-1, c.kv_size)
        q, k = rotary(positions, q, k)
        out = attention.forward(
            self.layer,
            q.view(-1, c.num_heads, c.head_dim),
            k.view(-1, c.num_kv_heads, c.head_dim),
            v.view(-1, c.num_kv_heads, c.head_dim),
        )
        return self.o_proj(out.reshape(-1, c.q_size))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = GatedMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, positions, rotary, attention) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the layer's output delta and the residual stream before it (their sum is the output)."""
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, rotary, attention)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaForCausalLM(nn.Module):
    """A causal LM whose ``forward`` runs one ``ForwardBatch`` and returns float32 logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @torch.inference_mode()
    def forward(
        self, batch: ForwardBatch, attention: AttentionBackend, logit_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (float32) at ``logit_indices`` among the batch's new tokens, by default at each sequence's last."""
        x, residual = self.embed_tokens(batch.input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, batch.positions, self.rotary, attention)
        if logit_indices is None and not batch.is_decode:
            logit_indices = batch.last_token_indices
        if logit_indices is not None:
            x, residual = x[logit_indices], residual[logit_indices]
        x, _ = self.norm(x, residual)
        head = self.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return torch.matmul(x, head.t()).float()

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the fused parameters; every parameter must be covered."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in tensors:
            target = _fused_target(hf_name, self.config)
            if target is None:
                continue
            name, offset = target
            if name not in params:
                raise ModelLoadError(f"checkpoint tensor {hf_name!r} has no place in a {self.config.architecture} model")
            param = params[name]
            rows = param.data[offset : offset + tensor.shape[0]] if offset is not None else param.data
            if rows.shape != tensor.shape:
                raise ModelLoadError(
                    f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, expected {tuple(rows.shape)}"
                )
            rows.copy_(tensor)
            loaded.add(f"{name}@{offset}")
        missing = [n for n in _expected_targets(self) if n not in loaded]
        if missing:
            raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[0].split('@')[0]}")


_FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
          "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


def _fused_target(hf_name: str, config: ModelConfig) -> tuple[str, int | None] | None:
    """Map an HF parameter name to (our parameter name, row offset within a fused matrix or None)."""
    name = hf_name.removeprefix("model.")
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name == "lm_head.weight" and config.tie_word_embeddings:
        return None
    parts = name.split(".")
    if len(parts) >= 4 and parts[-2] in _FUSED:
        fused, index = _FUSED[parts[-2]]
        sizes = (
            (config.q_size, config.kv_size, config.kv_size) if fused == "qkv_proj"
            else (config.intermediate_size, config.intermediate_size)
        )
        return ".".join(parts[:-2] + [fused, parts[-1]]), sum(sizes[:index])
    return name, None


def _expected_targets(model: LlamaForCausalLM) -> list[str]:
    c = model.config
    names = []
    for name, _ in model.named_parameters():
        if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
            names += [f"{name}@{o}" for o in (0, c.q_size, c.q_size + c.kv_size)]
        elif name.endswith("gate_up_proj.weight"):
            names += [f"{name}@{o}" for o in (0, c.intermediate_size)]
        else:
            names.append(f"{name}@None")
    return names
