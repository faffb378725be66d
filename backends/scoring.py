"""``select`` on the local runtime: every choice scored in one batch over a prefix computed once.

1. The program's text (the prefix) is prefilled once (``max_new_tokens=0``), so it sits in the radix cache.
2. One batch of requests, ``prefix + choice`` each, returns the log-probabilities of every prompt token from
   just before the first token that differs from the prefix's tokens. Tokenizing ``prefix + choice`` may merge
   the prefix's last token with the choice's first one; the scored tokens are exactly those after the longest
   common token prefix, so neither a prefix token leaks into a choice's score nor is a choice token dropped.
3. If the choices method wants them, the same tokens are scored after BOS alone (unconditional likelihood).

The method (`sglang_dsl.lang.choices`) then decides from the per-choice token log-probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sglang_dsl.lang.choices import ChoicesDecision, decide

if TYPE_CHECKING:
    from backends.base import SelectCall
    from backends.local import Runtime

ZERO_TOKENS = {"max_new_tokens": 0}


async def score_choices(runtime: "Runtime", call: "SelectCall") -> ChoicesDecision:
    prefix = runtime.encode(call.prompt.text)
    prompts = [runtime.encode(call.prompt.text + choice) for choice in call.choices]
    starts = [max(1, _common_length(prefix, ids)) for ids in prompts]
    window = min(starts) - 1  # the first entry of the window has no logprob, so start one token earlier
    prefix_output = await runtime.prefill(prefix) if prefix else None
    outputs = await _score(runtime, prompts, window)
    conditional = [list(o.input_token_logprobs)[start - window:] for o, start in zip(outputs, starts)]
    unconditional = None
    if call.method.requires_unconditional_logprobs:
        unconditional = await _unconditional(runtime, [ids[start:] for ids, start in zip(prompts, starts)])
    decision = decide(call.method, call.choices, call.temperature, conditional, unconditional)
    decision.meta_info.update(
        prompt_tokens=len(prefix),
        cached_tokens=prefix_output.cached_tokens if prefix_output is not None else 0,
        choices_cached_tokens=[o.cached_tokens for o in outputs],
    )
    return decision


async def _score(runtime: "Runtime", prompts: Sequence[Sequence[int]], start: int) -> list:
    """Input-token logprobs of every prompt from position ``start``, all in one batch."""
    requests = [runtime.engine.make_request(input_ids=list(ids), sampling_params=ZERO_TOKENS, return_logprob=True,
                                            logprob_start_len=start, return_text_in_logprobs=True)
                for ids in prompts]
    return await runtime.wait_all([runtime.engine.async_generate(r) for r in requests])


async def _unconditional(runtime: "Runtime", choice_tokens: Sequence[Sequence[int]]) -> list[list[tuple]]:
    """Each choice's token logprobs after BOS alone (after nothing, the first token gets none, counted as 0)."""
    bos = runtime.tokenizer.bos_token_id
    head = [bos] if bos is not None else []
    scored = [i for i, ids in enumerate(choice_tokens) if ids]
    outputs = await _score(runtime, [head + list(choice_tokens[i]) for i in scored], 0)
    entries: list[list[tuple]] = [[] for _ in choice_tokens]
    for i, output in zip(scored, outputs):
        entries[i] = list(output.input_token_logprobs)[len(head):]
    return entries


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
