"""``select`` by likelihood: every choice scored over a prefix computed once, on any backend that can tokenize,
prefill and return log-probabilities of chosen tokens (`TokenScorer`: the local engine, a native-API server).

The select plan (`sglang_dsl.compiler.choice_scoring.ChoiceScoring`) says which computation each choice needs:

1. The program's text (the prefix) is prefilled once; the same request returns the next-token log-probabilities
   of every choice's first token, and leaves the prefix in the radix cache.
2. Choices of more than one token are scored together, one row each, ``prefix + choice`` from the end of the
   prefix: only the choice's own tokens are computed. A choice whose tokenization merges into the prefix's last
   token is scored from the first token that differs, so neither a prefix token leaks into a choice's score nor
   is a choice token dropped.
3. If the choices method wants them, the same tokens are scored after BOS alone (unconditional likelihood).

The method (`sglang_dsl.lang.choices`) then decides from the per-choice token log-probabilities. The engine
scores the select steps of program requests the same way (`runtime.program_run`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

from sglang_dsl.compiler.choice_scoring import ChoiceScoring, next_token_entries
from sglang_dsl.lang.choices import ChoicesDecision, LogprobEntry, decide

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


@dataclass(frozen=True)
class Prefilled:
    """A prefilled prefix: how many of its tokens were cached already, and the next-token entries of the
    requested token ids by id (None: the backend did not return them)."""

    cached_tokens: int
    next_token_logprobs: Mapping[int, LogprobEntry] | None


class TokenScorer(Protocol):
    """What scoring needs from a backend."""

    bos_token_id: int | None

    async def encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, as the backend tokenizes a program's text."""

    async def prefill(self, ids: Sequence[int], next_token_ids: Sequence[int]) -> Prefilled:
        """Compute (and cache) the KV of ``ids``, with the next-token logprobs of ``next_token_ids``."""

    async def score(self, prompts: Sequence[Sequence[int]], starts: Sequence[int]) -> list[ScoredPrompt]:
        """Prompt-token logprobs of every prompt from its position in ``starts``, requested together."""


async def score_choices(scorer: TokenScorer, call: "SelectCall") -> ChoicesDecision:
    prefix, *prompts = await scorer.encode_all([call.prompt.text, *(call.prompt.text + c for c in call.choices)])
    plan = ChoiceScoring.plan(prefix, prompts)
    prefilled = await scorer.prefill(prefix, plan.next_token_ids) if prefix else Prefilled(0, {})
    if prefilled.next_token_logprobs is None:
        plan = ChoiceScoring.plan(prefix, prompts, next_token=False)
    rows = plan.rows
    outputs = await scorer.score([r.input_ids for r in rows], [r.logprob_start_len for r in rows]) if rows else []
    conditional = plan.conditional(prefilled.next_token_logprobs or {}, [o.input_token_logprobs for o in outputs])
    unconditional = None
    if call.method.requires_unconditional_logprobs:
        unconditional = await _unconditional(scorer, plan.choice_tokens)
    decision = decide(call.method, call.choices, call.temperature, conditional, unconditional)
    decision.meta_info.update(
        prompt_tokens=len(prefix),
        cached_tokens=prefilled.cached_tokens,
        choices_cached_tokens=plan.by_choice([o.cached_tokens for o in outputs]),
    )
    return decision


async def _unconditional(scorer: TokenScorer, choice_tokens: Sequence[Sequence[int]]) -> list[list]:
    """Each choice's token logprobs after BOS alone (after nothing, the first token gets none, counted as 0)."""
    head = [scorer.bos_token_id] if scorer.bos_token_id is not None else []
    scored = [i for i, ids in enumerate(choice_tokens) if ids]
    outputs = await scorer.score([head + list(choice_tokens[i]) for i in scored], [0] * len(scored))
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

    async def prefill(self, ids: Sequence[int], next_token_ids: Sequence[int]) -> Prefilled:
        output = await self.runtime.prefill(ids, next_token_ids)
        return Prefilled(output.cached_tokens, next_token_entries(output.output_token_ids_logprobs) or {})

    async def score(self, prompts: Sequence[Sequence[int]], starts: Sequence[int]) -> list[ScoredPrompt]:
        engine = self.runtime.engine
        requests = [engine.make_request(input_ids=list(ids), sampling_params=ZERO_TOKENS, return_logprob=True,
                                        logprob_start_len=start, return_text_in_logprobs=True)
                    for ids, start in zip(prompts, starts)]
        outputs = await self.runtime.wait_all([engine.async_generate(r) for r in requests])
        return [ScoredPrompt(list(o.input_token_logprobs), o.cached_tokens) for o in outputs]

