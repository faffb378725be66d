"""Attention on NVIDIA GPUs through FlashInfer's paged-KV kernels: batch decode when every sequence appends one
token, batch prefill (causal, over the paged cache) otherwise. ``plan`` runs once per batch; every layer then
only launches the kernel."""

from __future__ import annotations

import torch

from runtime.config import ModelConfig
from runtime.forward_batch import ForwardBatch
from runtime.memory import KVCache

WORKSPACE_BYTES = 256 * 1024 * 1024


class FlashInferAttention:
    def __init__(self, config: ModelConfig, kv_cache: KVCache):
        import flashinfer

        self.kv_cache = kv_cache
        self.config = config
        device = kv_cache.spec.device
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.prefill_wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        self.decode_wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=config.num_heads // config.num_kv_heads >= 4
        )
        self.window_left = -1 if config.sliding_window is None else config.sliding_window - 1

    def plan(self, batch: ForwardBatch, req_to_token: torch.Tensor) -> None:
        self.batch = batch
        page_size = self.kv_cache.spec.page_size
        seq_lens = batch.seq_lens_cpu
        pages_per_seq = (seq_lens + page_size - 1) // page_size
        kv_indptr = _indptr(pages_per_seq)
        total_pages = int(kv_indptr[-1])
        seq_of_page = torch.repeat_interleave(torch.arange(batch.batch_size), pages_per_seq, output_size=total_pages)
        first_slot_col = (torch.arange(total_pages) - kv_indptr[seq_of_page]) * page_size
        device = req_to_token.device
        rows = batch.req_rows[seq_of_page.to(device, non_blocking=True)]
        kv_indices = (req_to_token[rows, first_slot_col.to(device, non_blocking=True)] // page_size).int()
        last_page_len = (seq_lens - (pages_per_seq - 1) * page_size).int()
        common = dict(
            num_kv_heads=self.config.num_kv_heads,
            page_size=page_size,
            window_left=self.window_left,
            q_data_type=self.kv_cache.spec.dtype,
            kv_data_type=self.kv_cache.spec.dtype,
        )
        if batch.is_decode:
            self.wrapper = self.decode_wrapper
            self.wrapper.plan(
                kv_indptr, kv_indices, last_page_len, num_qo_heads=self.config.num_heads,
                head_dim=self.config.head_dim, **common,
            )
        else:
            self.wrapper = self.prefill_wrapper
            self.wrapper.plan(
                _indptr(batch.extend_lens_cpu), kv_indptr, kv_indices, last_page_len,
                num_qo_heads=self.config.num_heads, head_dim_qk=self.config.head_dim, causal=True, **common,
            )

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.kv_cache.store(layer, self.batch.out_cache_loc, k, v)
        return self.wrapper.run(q.contiguous(), self.kv_cache.paged(layer))


def _indptr(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(lengths, 0).int()])
