"""Every option of the runtime, documented in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RuntimeArgs:
    """Options of the model runner (and, later, of the engine and server built on it).

    - ``model``: the alias ``smollm2-135m`` (the embedded default), a Hugging Face model directory, or a
      ``.gguf`` file.
    - ``dtype``: ``auto`` (float32 on CPU, bfloat16 on GPU), ``float32``, ``bfloat16`` or ``float16``.
    - ``device``: ``auto`` (``cuda`` when available, else ``cpu``) or any torch device string.
    - ``attention_backend``: ``torch`` or ``flashinfer``; ``None`` picks flashinfer on CUDA when installed.
    - ``load_format``: ``auto`` (read the checkpoint) or ``dummy`` (random weights of the checkpoint's shape;
      only the config is read; for benchmarks).
    - ``page_size``: tokens per KV page (1 makes the prefix cache token-granular).
    - ``max_total_tokens``: KV pool size in tokens; ``None`` sizes it from ``kv_memory_fraction`` on GPU and
      to ``cpu_kv_tokens`` on CPU.
    - ``kv_memory_fraction``: share of the GPU memory left after loading weights to give the KV pool.
    - ``max_running_requests``: rows of the request-to-token table.
    - ``context_length``: longest sequence; ``None`` takes the model's ``max_position_embeddings``.
    - ``cuda_graph_max_bs``: decode batches up to this size replay captured CUDA graphs (FlashInfer only);
      0 turns graphs off.
    - ``seed``: seeds the random weights of ``dummy`` loading and the sampling of requests without a seed.

    Scheduling (the engine):

    - ``schedule_policy``: order of the waiting queue: ``lpm`` (longest cached prefix first), ``dfs-weight``
      (depth-first over the radix tree, keeping requests that share prefixes together), ``fcfs``, or
      ``priority`` (higher ``priority`` first, then arrival). Cache-aware policies fall back to ``fcfs`` when more
      than ``cache_aware_queue_limit`` requests wait.
    - ``chunked_prefill_size``: most prompt tokens one request prefills per step (longer prompts continue in the
      next steps); -1 never splits a prompt.
    - ``max_prefill_tokens``: most prompt tokens all requests prefill in one step.
    - ``disable_radix_cache``: no prefix reuse (every prompt is prefilled in full).
    - ``new_token_ratio``: share of each running request's remaining ``max_new_tokens`` that admission reserves
      KV for; it decays by ``new_token_ratio_decay`` per decode step down to ``min_new_token_ratio`` and is
      raised again after a retraction.

    Constrained decoding:

    - ``constraint_budget``: the token budget rule: a constrained gen keeps only tokens after which a complete
      output still fits in the tokens it has left (``max_new_tokens``, the context), so it ends valid with
      ``finish_reason`` ``stop`` when it runs out (``length`` only when no complete output fits at all).
    """

    model: str = "smollm2-135m"
    dtype: str = "auto"
    device: str = "auto"
    attention_backend: str | None = None
    load_format: str = "auto"
    page_size: int = 1
    max_total_tokens: int | None = None
    kv_memory_fraction: float = 0.8
    cpu_kv_tokens: int = 65536
    max_running_requests: int = 256
    context_length: int | None = None
    cuda_graph_max_bs: int = 64
    seed: int = 0
    schedule_policy: str = "lpm"
    cache_aware_queue_limit: int = 128
    chunked_prefill_size: int = 8192
    max_prefill_tokens: int = 16384
    disable_radix_cache: bool = False
    new_token_ratio: float = 0.7
    min_new_token_ratio: float = 0.1
    new_token_ratio_decay: float = 0.001
    constraint_budget: bool = True

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[self.dtype]
