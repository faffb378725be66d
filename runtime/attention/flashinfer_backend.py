"""Attention on NVIDIA GPUs through FlashInfer's paged-KV kernels: batch decode when every sequence appends one
token, batch prefill (causal, over the paged cache) otherwise. ``plan`` runs once per batch; every layer then
only launches the kernel.

Prefill runs FlashInfer's FA2 kernels on every architecture. On Hopper its default is FA3, which hit
intermittent illegal memory accesses on the SmolLM2-135M shape (head_dim 64, 9 query / 3 KV heads, 1-token
pages) in 4 of 4 program-benchmark runs on an H200, against 0 of 3 with FA2 (docs/benchmarks.md)."""

from __future__ import annotations

import torch

from runtime.config import ModelConfig
from runtime.forward_batch import ForwardBatch
from runtime.memory import KVCache

WORKSPACE_BYTES = 256 * 1024 * 1024
PREFILL_BACKEND = "fa2"


class FlashInferAttention:
    def __init__(self, config: ModelConfig, kv_cache: KVCache):
        import flashinfer

        self.kv_cache = kv_cache
        self.config = config
        device = kv_cache.spec.device
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.prefill_wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD", backend=PREFILL_BACKEND)
        self.use_tensor_cores = config.num_heads // config.num_kv_heads >= 4
        self.decode_wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=self.use_tensor_cores
        )
        self.dtype = kv_cache.spec.dtype
        self.plan_uploaded = torch.cuda.Event()
        self.plan_uploaded.record()
        self.window_left = -1 if config.sliding_window is None else config.sliding_window - 1

    def plan(self, batch: ForwardBatch, req_to_token: torch.Tensor) -> None:
        self._await_previous_upload()
        self.batch = batch
        kv_indptr, kv_indices, last_page_len = self.page_table(batch.seq_lens_cpu, batch.seq_lens, batch.req_rows, req_to_token)
        if batch.is_decode:
            self.wrapper = self.decode_wrapper
            self._plan_decode(self.wrapper, kv_indptr, kv_indices, last_page_len)
        else:
            self.wrapper = self.prefill_wrapper
            self.wrapper.plan(
                _indptr(batch.extend_lens_cpu), kv_indptr, kv_indices, last_page_len,
                num_qo_heads=self.config.num_heads, num_kv_heads=self.config.num_kv_heads,
                head_dim_qk=self.config.head_dim, page_size=self.kv_cache.spec.page_size, causal=True,
                window_left=self.window_left, q_data_type=self.dtype, kv_data_type=self.dtype,
            )
        self.plan_uploaded.record()

    def _await_previous_upload(self) -> None:
        """``plan`` stages its metadata in a pinned host buffer that an asynchronous copy uploads; wait until the
        previous plan's upload has run before the buffer is written again (the host may run ahead of the GPU)."""
        self.plan_uploaded.synchronize()

    def page_table(self, seq_lens_cpu: torch.Tensor, seq_lens: torch.Tensor, req_rows: torch.Tensor,
                   req_to_token: torch.Tensor):
        """FlashInfer's paged-KV description of the sequences: page indptr (host), page ids (gathered on the
        device from the request-to-token table, with no host round trip), used slots of each last page (host)."""
        page_size = self.kv_cache.spec.page_size
        pages_per_seq_cpu = (seq_lens_cpu + page_size - 1) // page_size
        kv_indptr = _indptr(pages_per_seq_cpu)
        total_pages = int(kv_indptr[-1])
        pages_per_seq = (seq_lens + page_size - 1) // page_size
        device = req_to_token.device
        seq_of_page = torch.repeat_interleave(
            torch.arange(len(seq_lens_cpu), device=device), pages_per_seq, output_size=total_pages
        )
        first_page = torch.cumsum(pages_per_seq, 0) - pages_per_seq
        first_slot_col = (torch.arange(total_pages, device=device) - first_page[seq_of_page]) * page_size
        kv_indices = (req_to_token[req_rows[seq_of_page], first_slot_col] // page_size).int()
        last_page_len = (seq_lens_cpu - (pages_per_seq_cpu - 1) * page_size).int()
        return kv_indptr, kv_indices, last_page_len

    def graph_decode_wrapper(self, batch_size: int, max_pages: int):
        """A decode wrapper whose index buffers stay put, so a CUDA graph can capture its kernels."""
        import flashinfer

        if not hasattr(self, "_graph_buffers"):
            device = self.kv_cache.spec.device
            self._graph_buffers = (
                torch.zeros(max_pages + 1, dtype=torch.int32, device=device),
                torch.zeros(max_pages, dtype=torch.int32, device=device),
                torch.ones(max_pages, dtype=torch.int32, device=device),
            )
        indptr, indices, last_page_len = self._graph_buffers
        return flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=self.use_tensor_cores,
            paged_kv_indptr_buffer=indptr[: batch_size + 1], paged_kv_indices_buffer=indices,
            paged_kv_last_page_len_buffer=last_page_len[:batch_size],
        )

    def plan_graph_decode(self, wrapper, batch: ForwardBatch, padded_size: int, req_to_token: torch.Tensor) -> None:
        """Plan ``wrapper`` for ``batch`` padded to ``padded_size`` sequences; each pad attends to the dummy page."""
        self._await_previous_upload()
        kv_indptr, kv_indices, last_page_len = self.page_table(batch.seq_lens_cpu, batch.seq_lens, batch.req_rows, req_to_token)
        pads = padded_size - batch.batch_size
        kv_indptr = torch.cat([kv_indptr, kv_indptr[-1] + torch.arange(1, pads + 1, dtype=torch.int32)])
        kv_indices = torch.cat([kv_indices, kv_indices.new_zeros(pads)])
        last_page_len = torch.cat([last_page_len, last_page_len.new_ones(pads)])
        self.wrapper = wrapper
        self._plan_decode(wrapper, kv_indptr, kv_indices, last_page_len)
        self.plan_uploaded.record()

    def _plan_decode(self, wrapper, kv_indptr, kv_indices, last_page_len) -> None:
        wrapper.plan(
            kv_indptr, kv_indices, last_page_len, num_qo_heads=self.config.num_heads,
            num_kv_heads=self.config.num_kv_heads, head_dim=self.config.head_dim,
            page_size=self.kv_cache.spec.page_size, window_left=self.window_left,
            q_data_type=self.dtype, kv_data_type=self.dtype,
        )

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.kv_cache.store(layer, self.batch.out_cache_loc, k, v)
        return self.wrapper.run(q.contiguous(), self.kv_cache.paged(layer))


def _indptr(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(lengths, 0).int()])
