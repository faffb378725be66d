"""Reference attention in plain PyTorch, batched: every sequence's queries and context are padded to the
batch's longest and attended in one masked ``scaled_dot_product_attention`` call per layer."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from runtime.config import ModelConfig
from runtime.forward_batch import ForwardBatch
from runtime.memory import KVCache


class TorchAttention:
    """Runs on any device; the numerical reference for the other backends."""

    def __init__(self, config: ModelConfig, kv_cache: KVCache):
        self.kv_cache = kv_cache
        self.scale = config.head_dim**-0.5
        self.window = config.sliding_window

    def plan(self, batch: ForwardBatch, req_to_token: torch.Tensor) -> None:
        device = batch.input_ids.device
        self.batch = batch
        extend = batch.extend_lens_cpu.to(device)
        prefix = batch.prefix_lens_cpu.to(device)
        self.max_q = int(batch.extend_lens_cpu.max())
        max_kv = int(batch.seq_lens_cpu.max())
        starts = torch.cumsum(extend, 0) - extend
        seq_of_token = torch.repeat_interleave(
            torch.arange(batch.batch_size, device=device), extend, output_size=batch.num_tokens
        )
        q_offset = torch.arange(batch.num_tokens, device=device) - starts[seq_of_token]
        self.q_pad_index = seq_of_token * self.max_q + q_offset
        self.kv_slots = req_to_token[batch.req_rows, :max_kv].long().flatten()
        self.max_kv = max_kv
        self.mask = self._mask(prefix, extend, batch.seq_lens, max_kv)

    def _mask(self, prefix, extend, seq_lens, max_kv: int) -> torch.Tensor:
        """``[B, 1, max_q, max_kv]``: query j of sequence b (at position prefix+j) sees keys at positions
        ``<= prefix+j`` (within the sliding window, if any). Padded query rows see key 0 to stay finite."""
        device = prefix.device
        q_pos = prefix[:, None] + torch.arange(self.max_q, device=device)[None, :]
        k_pos = torch.arange(max_kv, device=device)
        visible = k_pos[None, None, :] <= q_pos[:, :, None]
        visible &= k_pos[None, None, :] < seq_lens[:, None, None]
        if self.window is not None:
            visible &= k_pos[None, None, :] > q_pos[:, :, None] - self.window
        padded_row = torch.arange(self.max_q, device=device)[None, :] >= extend[:, None]
        visible |= padded_row[:, :, None] & (k_pos == 0)[None, None, :]
        return visible.unsqueeze(1)

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.kv_cache.store(layer, self.batch.out_cache_loc, k, v)
        num_heads, head_dim = q.shape[1], q.shape[2]
        padded_q = q.new_zeros(self.batch.batch_size * self.max_q, num_heads, head_dim)
        padded_q[self.q_pad_index] = q
        padded_q = padded_q.view(self.batch.batch_size, self.max_q, num_heads, head_dim).transpose(1, 2)
        context = (self.batch.batch_size, self.max_kv, *self.kv_cache.k[layer].shape[1:])
        keys = self.kv_cache.k[layer].index_select(0, self.kv_slots).view(context).transpose(1, 2).to(q.dtype)
        values = self.kv_cache.v[layer].index_select(0, self.kv_slots).view(context).transpose(1, 2).to(q.dtype)
        out = F.scaled_dot_product_attention(
            padded_q, keys, values, attn_mask=self.mask, scale=self.scale, enable_gqa=True
        )
        return out.transpose(1, 2).reshape(-1, num_heads, head_dim)[self.q_pad_index]
