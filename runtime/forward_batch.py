"""The unit of work of one forward pass: a batch of sequences, each extending its cached prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForwardBatch:
    """B sequences; sequence i has ``prefix_lens[i]`` tokens already in the KV cache and appends
    ``extend_lens[i]`` new ones (a decoding sequence appends 1). Token-level tensors are flattened in sequence
    order (``T = sum(extend_lens)``). Device tensors feed the kernels; the ``*_cpu`` copies let attention
    backends plan without reading the device."""

    input_ids: torch.Tensor  # [T] device
    positions: torch.Tensor  # [T] device
    out_cache_loc: torch.Tensor  # [T] device: KV slot of each new token
    token_rows: torch.Tensor  # [T] device: request-table row of each new token
    req_rows: torch.Tensor  # [B] device: each sequence's row in the request-to-token table
    seq_lens: torch.Tensor  # [B] device: prefix + extend
    last_token_indices: torch.Tensor  # [B] device: index of each sequence's last new token among the T
    prefix_lens_cpu: torch.Tensor  # [B]
    extend_lens_cpu: torch.Tensor  # [B]

    @property
    def batch_size(self) -> int:
        return int(self.extend_lens_cpu.numel())

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def seq_lens_cpu(self) -> torch.Tensor:
        return self.prefix_lens_cpu + self.extend_lens_cpu

    @property
    def is_decode(self) -> bool:
        return bool((self.extend_lens_cpu == 1).all())

    @classmethod
    def build(
        cls,
        input_ids: torch.Tensor,
        req_rows: torch.Tensor,
        prefix_lens: torch.Tensor,
        extend_lens: torch.Tensor,
        out_cache_loc: torch.Tensor,
        device: torch.device,
    ) -> "ForwardBatch":
        """Assemble a batch from host tensors; everything the device needs travels in one copy."""
        total = int(extend_lens.sum())
        seq_of_token = torch.repeat_interleave(torch.arange(len(extend_lens)), extend_lens, output_size=total)
        ends = torch.cumsum(extend_lens, 0)
        positions = prefix_lens[seq_of_token] + torch.arange(total) - (ends - extend_lens)[seq_of_token]
        parts = [input_ids, positions, out_cache_loc, req_rows[seq_of_token], req_rows, prefix_lens + extend_lens, ends - 1]
        packed = torch.cat([p.to(torch.int64) for p in parts]).to(device)
        fields = packed.split([p.numel() for p in parts])
        return cls(*fields, prefix_lens_cpu=prefix_lens, extend_lens_cpu=extend_lens)
