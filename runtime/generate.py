"""A minimal batched generate loop over the model runner: prefill every prompt in one batch, then decode the
unfinished sequences together until EOS or ``max_new_tokens``. The engine's scheduler supersedes it."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.model_runner import ModelRunner
from runtime.requests import SamplingParams
from runtime.sampler import SamplingBatch, sample
from runtime.sequences import Sequences


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
    """Continue each token-id prompt; all unfinished sequences share every forward pass."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    n = len(prompts)
    # Every prompt samples with the same parameters (and seed): a seeded prompt continues the same way whatever
    # else is in the batch.
    row = SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, seed=params.seed)
    outputs: list[list[int]] = [[] for _ in prompts]
    finish: list[str | None] = [None] * n
    active, inputs = list(range(n)), [list(p) for p in prompts]
    batch: SamplingBatch | None = None
    with Sequences(runner, n) as sequences:
        while active:
            logits = sequences.extend(active, [inputs[i] for i in active])
            if batch is None or batch.size != len(active):
                batch = SamplingBatch.build([row] * len(active), runner.device)
            tokens = sample(logits, batch, [outputs[i] for i in active]).tolist()
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
