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
    req_rows: torch.Tensor  # [B] device: each sequence's row in the request-to-token table
    seq_lens: torch.Tensor  # [B] device: prefix + extend
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

    @property
    def last_token_indices(self) -> torch.Tensor:
        """Index into the T new tokens of each sequence's last token, on the device."""
        return (torch.cumsum(self.extend_lens_cpu, 0) - 1).to(self.input_ids.device, non_blocking=True)

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
        """Assemble a batch from host tensors, moving what the kernels need to ``device`` in one pass."""
        total = int(extend_lens.sum())
        seq_of_token = torch.repeat_interleave(torch.arange(len(extend_lens)), extend_lens, output_size=total)
        starts = torch.cumsum(extend_lens, 0) - extend_lens
        positions = prefix_lens[seq_of_token] + torch.arange(total) - starts[seq_of_token]

        def to_device(t: torch.Tensor) -> torch.Tensor:
            if device.type == "cuda":
                t = t.pin_memory()
            return t.to(device, non_blocking=True)

        return cls(
            input_ids=to_device(input_ids.to(torch.int64)),
            positions=to_device(positions),
            out_cache_loc=to_device(out_cache_loc.to(torch.int64)),
            req_rows=to_device(req_rows.to(torch.int64)),
            seq_lens=to_device(prefix_lens + extend_lens),
            prefix_lens_cpu=prefix_lens,
            extend_lens_cpu=extend_lens,
        )

    def token_rows(self) -> torch.Tensor:
        """The request-table row of each new token, on the device."""
        return torch.repeat_interleave(
            self.req_rows, self.extend_lens_cpu.to(self.req_rows.device), output_size=self.num_tokens
        )
