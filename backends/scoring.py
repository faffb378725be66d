"""``select`` by likelihood: every choice scored in one batch over a prefix computed once, on any backend that
can tokenize, prefill and return prompt-token log-probabilities (`TokenScorer`: the local engine, a native-API
server).

1. The program's text (the prefix) is prefilled once (``max_new_tokens=0``), so it sits in the radix cache.
2. One batch of requests, ``prefix + choice`` each, returns the log-probabilities of every prompt token from
   just before the first token that differs from the prefix's tokens. Tokenizing ``prefix + choice`` may merge
   the prefix's last token with the choice's first one; the scored tokens are exactly those after the longest
   common token prefix, so neither a prefix token leaks into a choice's score nor is a choice token dropped.
3. If the choices method wants them, the same tokens are scored after BOS alone (unconditional likelihood).

The method (`sglang_dsl.lang.choices`) then decides from the per-choice token log-probabilities. The engine
scores the select steps of program requests the same way (`runtime.program_run`), with the same token windows
(`choice_windows`) and decision (`sglang_dsl.compiler.choice_methods`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from sglang_dsl.lang.choices import ChoicesDecision, choice_windows, decide

if TYPE_CHECKING:
    from backends.base import SelectCall
    from backends.local import Runtime

ZERO_TOKENS = {"max_new_tokens": 0}


@dataclass(frozen=True)
class ScoredPrompt:
    """A scored prompt: ``input_token_logprobs`` are ``(logprob | None, token_id, text)`` entries from the
    requested start position; ``cached_tokens`` how many prompt tokens the prefix cache supplied."""

    input_token_logprobs: list
    cached_tokens: int


class TokenScorer(Protocol):
    """What scoring needs from a backend."""

    bos_token_id: int | None

    async def encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, as the backend tokenizes a program's text."""

    async def prefill(self, ids: Sequence[int]) -> int:
        """Compute (and cache) the KV of ``ids``; return how many of them were cached already."""

    async def score(self, prompts: Sequence[Sequence[int]], start: int) -> list[ScoredPrompt]:
        """Prompt-token logprobs of every prompt from position ``start``, requested together."""


async def score_choices(scorer: TokenScorer, call: "SelectCall") -> ChoicesDecision:
    prefix, *prompts = await scorer.encode_all([call.prompt.text, *(call.prompt.text + c for c in call.choices)])
    starts, window = choice_windows(prefix, prompts)
    prefix_cached = await scorer.prefill(prefix) if prefix else 0
    outputs = await scorer.score(prompts, window)
    conditional = [o.input_token_logprobs[start - window:] for o, start in zip(outputs, starts)]
    unconditional = None
    if call.method.requires_unconditional_logprobs:
        unconditional = await _unconditional(scorer, [ids[start:] for ids, start in zip(prompts, starts)])
    decision = decide(call.method, call.choices, call.temperature, conditional, unconditional)
    decision.meta_info.update(
        prompt_tokens=len(prefix),
        cached_tokens=prefix_cached,
        choices_cached_tokens=[o.cached_tokens for o in outputs],
    )
    return decision


async def _unconditional(scorer: TokenScorer, choice_tokens: Sequence[Sequence[int]]) -> list[list]:
    """Each choice's token logprobs after BOS alone (after nothing, the first token gets none, counted as 0)."""
    head = [scorer.bos_token_id] if scorer.bos_token_id is not None else []
    scored = [i for i, ids in enumerate(choice_tokens) if ids]
    outputs = await scorer.score([head + list(choice_tokens[i]) for i in scored], 0)
    entries: list[list] = [[] for _ in choice_tokens]
    for i, output in zip(scored, outputs):
        entries[i] = output.input_token_logprobs[len(head):]
    return entries


class EngineScorer:
    """`TokenScorer` over the local runtime's engine."""

    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        self.bos_token_id = runtime.tokenizer.bos_token_id

    async def encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.runtime.encode(text) for text in texts]

    async def prefill(self, ids: Sequence[int]) -> int:
        return (await self.runtime.prefill(ids)).cached_tokens

    async def score(self, prompts: Sequence[Sequence[int]], start: int) -> list[ScoredPrompt]:
        engine = self.runtime.engine
        requests = [engine.make_request(input_ids=list(ids), sampling_params=ZERO_TOKENS, return_logprob=True,
                                        logprob_start_len=start, return_text_in_logprobs=True)
                    for ids in prompts]
        outputs = await self.runtime.wait_all([engine.async_generate(r) for r in requests])
        return [ScoredPrompt(list(o.input_token_logprobs), o.cached_tokens) for o in outputs]

