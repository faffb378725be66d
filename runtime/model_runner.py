"""The model runner: a model, its KV memory and an attention backend, executing one ``ForwardBatch`` at a time."""

from __future__ import annotations

import torch

from runtime.args import RuntimeArgs
from runtime.attention import ATTENTION_BACKENDS, AttentionBackend, default_backend
from runtime.attention.flashinfer_backend import FlashInferAttention
from runtime.config import ModelConfig
from runtime.cuda_graph import DecodeGraphs
from runtime.forward_batch import ForwardBatch
from runtime.loader import load_model
from runtime.memory import KVCache, KVCacheSpec, PageAllocator, ReqToTokenPool
from runtime.model_files import resolve_model


class ModelRunner:
    """Owns the weights and the KV memory (``req_to_token``, ``allocator``, ``kv_cache``).

    Callers allocate request rows and slots, build a ``ForwardBatch`` and call ``forward``; the runner records
    the batch's slots in the request-to-token table, plans attention once and runs the model."""

    def __init__(self, args: RuntimeArgs):
        self.args = args
        self.device = args.resolved_device()
        self.dtype = args.resolved_dtype(self.device)
        self.source = resolve_model(args.model)
        self.model = load_model(self.source, self.dtype, self.device, args.load_format, args.seed)
        self.config: ModelConfig = self.model.config
        self.context_length = args.context_length or self.config.max_position_embeddings
        spec = self._kv_spec()
        self.kv_cache = KVCache(spec)
        self.allocator = PageAllocator(spec.num_pages, spec.page_size)
        self.req_to_token = ReqToTokenPool(args.max_running_requests, self.context_length, self.device)
        self.attention = self._attention_backend()
        self.decode_graphs = self._decode_graphs()

    def forward(
        self, batch: ForwardBatch, all_logits: bool = False, logit_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Float32 logits: of each sequence's last new token ``[B, V]`` by default, of every new token with
        ``all_logits``, or of the new tokens at ``logit_indices`` (host or device indices into the T tokens)."""
        self.req_to_token.write(batch.token_rows, batch.positions, batch.out_cache_loc)
        if all_logits:
            logit_indices = torch.arange(batch.num_tokens)
        if logit_indices is None and self.decode_graphs is not None and self.decode_graphs.can_run(batch):
            return self.decode_graphs.run(batch, self.req_to_token.table)
        self.attention.plan(batch, self.req_to_token.table)
        if logit_indices is not None:
            logit_indices = logit_indices.to(self.device)
        return self.model(batch, self.attention, logit_indices)

    def release(self) -> None:
        """Free the weights, the KV memory and the captured graphs (the runner is unusable afterwards), so
        another runner in the same process sizes its KV pool from the memory this one held."""
        self.model = self.kv_cache = self.attention = self.decode_graphs = self.req_to_token = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _kv_spec(self) -> KVCacheSpec:
        c, page_size = self.config, self.args.page_size
        spec = KVCacheSpec(1, page_size, c.num_layers, c.num_kv_heads, c.head_dim, self.dtype, self.device)
        tokens = self.args.max_total_tokens
        if tokens is None and self.device.type == "cuda":
            torch.cuda.empty_cache()  # blocks torch keeps cached count as used in mem_get_info
            free, _ = torch.cuda.mem_get_info(self.device)
            tokens = int(free * self.args.kv_memory_fraction) // spec.bytes_per_token
        tokens = tokens or self.args.cpu_kv_tokens
        num_pages = tokens // page_size + 1  # page 0 is the reserved dummy
        return KVCacheSpec(num_pages, page_size, c.num_layers, c.num_kv_heads, c.head_dim, self.dtype, self.device)

    def _decode_graphs(self) -> DecodeGraphs | None:
        if self.args.cuda_graph_max_bs <= 0 or not isinstance(self.attention, FlashInferAttention):
            return None
        max_bs = min(self.args.cuda_graph_max_bs, self.args.max_running_requests)
        return DecodeGraphs(self.model, self.attention, max_bs, self.kv_cache.spec.num_pages, self.device)

    def _attention_backend(self) -> AttentionBackend:
        name = self.args.attention_backend or default_backend(self.device)
        if name == "torch":
            from runtime.attention.torch_backend import TorchAttention

            return TorchAttention(self.config, self.kv_cache)
        if name == "flashinfer":
            return FlashInferAttention(self.config, self.kv_cache)
        raise ValueError(f"attention backend {name!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
