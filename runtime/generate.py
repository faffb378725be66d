"""A minimal batched generate loop over the model runner: prefill every prompt in one batch, then decode the
unfinished sequences together until EOS or ``max_new_tokens``. The engine's scheduler supersedes it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.forward_batch import ForwardBatch
from runtime.model_runner import ModelRunner
from runtime.sampling import sample


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class Generation:
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (an EOS token, not included) or "length"


def generate(
    runner: ModelRunner, prompts: list[list[int]], params: GenerationParams, eos_token_ids=frozenset()
) -> list[Generation]:
    """Continue each token-id prompt; all sequences share every forward pass."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    longest = max(map(len, prompts)) + params.max_new_tokens
    if longest > runner.context_length:
        raise ValueError(f"prompt plus max_new_tokens needs {longest} positions; the context holds {runner.context_length}")
    rows = runner.req_to_token.alloc(len(prompts))
    try:
        return _run(runner, prompts, rows, params, eos_token_ids)
    finally:
        for row, prompt in zip(rows, prompts):
            used = runner.req_to_token.table[row, : len(prompt) + params.max_new_tokens]
            runner.allocator.free_slots(used[used > 0])
        runner.req_to_token.table[rows] = 0
        runner.req_to_token.free(rows)


def _run(runner, prompts, rows, params: GenerationParams, eos_token_ids) -> list[Generation]:
    n, device = len(prompts), runner.device
    generator = None if params.seed is None else torch.Generator(device).manual_seed(params.seed)
    per_row = lambda value, dtype: torch.full((n,), value, dtype=dtype, device=device)  # noqa: E731
    temperature, top_p, top_k = per_row(params.temperature, torch.float32), per_row(params.top_p, torch.float32), per_row(params.top_k, torch.int64)
    outputs: list[list[int]] = [[] for _ in prompts]
    finish: list[str | None] = [None] * n
    seq_lens = torch.zeros(n, dtype=torch.int64)
    last_slots = torch.zeros(n, dtype=torch.int64)
    active = list(range(n))
    inputs = [list(p) for p in prompts]
    while active:
        idx = torch.tensor(active)
        extend = torch.tensor([len(inputs[i]) for i in active])
        slots = runner.allocator.extend(last_slots[idx], seq_lens[idx], extend)
        batch = ForwardBatch.build(
            torch.tensor([t for i in active for t in inputs[i]]), torch.tensor([rows[i] for i in active]),
            seq_lens[idx], extend, slots, device,
        )
        dev_idx = idx.to(device)
        tokens = sample(runner.forward(batch), temperature[dev_idx], top_p[dev_idx], top_k[dev_idx], generator).tolist()
        seq_lens[idx] += extend
        last_slots[idx] = slots[torch.cumsum(extend, 0) - 1]
        for i, token in zip(active, tokens):
            if token in eos_token_ids and not params.ignore_eos:
                finish[i] = "stop"
                continue
            outputs[i].append(token)
            inputs[i] = [token]
            if len(outputs[i]) >= params.max_new_tokens:
                finish[i] = "length"
        active = [i for i in active if finish[i] is None]
    return [Generation(tuple(o), f) for o, f in zip(outputs, finish)]
