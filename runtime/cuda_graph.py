"""CUDA graphs for decode steps: the whole forward pass of a decode batch replays as one graph launch.

Batches are padded up to the nearest captured size; pad sequences read and write only the dummy KV page."""

from __future__ import annotations

import bisect

import torch

from runtime.forward_batch import ForwardBatch


def capture_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256]
    return [s for s in sizes if s < max_batch_size] + [max_batch_size]


class DecodeGraphs:
    """Captured decode graphs of a model over a FlashInfer attention backend, one per batch size."""

    def __init__(self, model, attention, max_batch_size: int, max_pages: int, device: torch.device):
        self.model, self.attention = model, attention
        self.sizes = capture_sizes(max_batch_size)
        self.input_ids = torch.zeros(max_batch_size, dtype=torch.int64, device=device)
        self.positions = torch.zeros_like(self.input_ids)
        self.out_cache_loc = torch.zeros_like(self.input_ids)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.wrappers = {size: attention.graph_decode_wrapper(size, max_pages) for size in self.sizes}
        pool = None
        for size in reversed(self.sizes):
            pool = self._capture(size, pool)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and batch.batch_size <= self.sizes[-1]

    def run(self, batch: ForwardBatch, req_to_token: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` of a decode batch, through the graph of the smallest captured size >= B."""
        size = self.sizes[bisect.bisect_left(self.sizes, batch.batch_size)]
        n = batch.batch_size
        for static, values in ((self.input_ids, batch.input_ids), (self.positions, batch.positions),
                               (self.out_cache_loc, batch.out_cache_loc)):
            static[:n].copy_(values)
            static[n:size].zero_()
        self.attention.plan_graph_decode(self.wrappers[size], batch, size, req_to_token)
        self.attention.batch = self._static_batch(size)
        self.graphs[size].replay()
        return self.logits[size][:n].clone()  # the graph's output buffer is overwritten by the next replay

    def _static_batch(self, size: int) -> ForwardBatch:
        ones = torch.ones(size, dtype=torch.int64)
        zeros = self.input_ids.new_zeros(size)
        return ForwardBatch(
            input_ids=self.input_ids[:size], positions=self.positions[:size],
            out_cache_loc=self.out_cache_loc[:size], token_rows=zeros, req_rows=zeros,
            seq_lens=zeros + 1, last_token_indices=torch.arange(size, device=zeros.device),
            prefix_lens_cpu=ones - 1, extend_lens_cpu=ones,
        )

    def _capture(self, size: int, pool):
        """Capture ``size``'s graph on a batch of pads (one token on the dummy page each)."""
        batch = self._static_batch(size)
        dummy_table = torch.zeros((size, 1), dtype=torch.int32, device=self.input_ids.device)
        self.attention.plan_graph_decode(self.wrappers[size], batch, size, dummy_table)
        self.attention.batch = batch
        self.model(batch, self.attention)  # warm-up outside the graph (kernel selection, lazy init)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.logits[size] = self.model(batch, self.attention)
        self.graphs[size] = graph
        return graph.pool()
