"""How ``select`` turns per-token log-probabilities of each choice into a decision (which requests compute them:
`sglang_dsl.compiler.choice_scoring`).

This lives with the compiler (torch-free, importable by the runtime) because both sides decide: a backend
scoring one ``select`` per call (`backends.scoring`) and the engine scoring ``select`` steps inside a program
request (`runtime.program_run`). The language re-exports it as `sglang_dsl.lang.choices`.

A backend scores every choice's tokens conditioned on the program's text (``input_token_logprobs``: one list of
``(logprob, token_id, token_text)`` per choice, covering exactly the choice's tokens) and, when a method asks for
it, unconditioned (``unconditional_token_logprobs``). A method maps those to a `ChoicesDecision`.

At temperature 0 the method's decision stands. At a higher temperature one choice is sampled with probability
proportional to ``exp(score / temperature)``, where ``score`` is the method's `ChoicesSamplingMethod.scores`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

LogprobEntry = tuple  # (logprob | None, token_id, token_text | None)


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


class ChoicesSamplingMethod:
    """Base of the scoring methods. Subclasses implement the keyword-only ``__call__`` (SGLang's signature) and
    may override `scores` (what temperature sampling uses) and `requires_unconditional_logprobs`."""

    name = "custom"

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    def __call__(self, *, choices: Sequence[str], normalized_prompt_logprobs: Sequence[float],
                 input_token_logprobs: Sequence[Sequence[LogprobEntry]],
                 output_token_logprobs: Sequence[Sequence[LogprobEntry]],
                 unconditional_token_logprobs: Sequence[Sequence[LogprobEntry]] | None = None) -> ChoicesDecision:
        raise NotImplementedError

    def scores(self, *, normalized_prompt_logprobs: Sequence[float],
               unconditional_token_logprobs: Sequence[Sequence[LogprobEntry]] | None = None,
               input_token_logprobs: Sequence[Sequence[LogprobEntry]] = ()) -> list[float]:
        """One number per choice, higher is better; used to sample when ``temperature > 0``."""
        return list(normalized_prompt_logprobs)

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token log-probability (SGLang's default)."""

    name = "token_length_normalized"

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        best = _argmax(normalized_prompt_logprobs)
        return ChoicesDecision(choices[best], {
            "normalized_prompt_logprobs": list(normalized_prompt_logprobs),
            "input_token_logprobs": [list(x) for x in input_token_logprobs],
            "output_token_logprobs": [list(x) for x in output_token_logprobs],
        })


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Token by token: keep the choices whose token has the highest log-probability at that position, until one is
    left. Shorter choices are padded with their own mean, so a prefix choice is not favoured by running out."""

    name = "greedy_token_selection"

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        matrix = greedy_logprob_matrix(input_token_logprobs, normalized_prompt_logprobs)
        alive = list(range(len(choices)))
        for column in range(len(matrix[0]) if matrix else 0):
            top = max(matrix[i][column] for i in alive)
            alive = [i for i in alive if matrix[i][column] == top]
            if len(alive) == 1:
                break
        return ChoicesDecision(choices[alive[0]], {
            "normalized_prompt_logprobs": list(normalized_prompt_logprobs),
            "input_token_logprobs": [list(x) for x in input_token_logprobs],
            "output_token_logprobs": [list(x) for x in output_token_logprobs],
            "greedy_logprob_matrix": matrix,
        })


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice whose tokens gain the most from the context: the highest mean of
    ``logprob(token | text) - logprob(token | nothing)``."""

    name = "unconditional_likelihood_normalized"

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError(f"{self.name} needs unconditional_token_logprobs")
        gains = self.scores(normalized_prompt_logprobs=normalized_prompt_logprobs,
                            unconditional_token_logprobs=unconditional_token_logprobs,
                            input_token_logprobs=input_token_logprobs)
        return ChoicesDecision(choices[_argmax(gains)], {
            "normalized_prompt_logprobs": list(normalized_prompt_logprobs),
            "input_token_logprobs": [list(x) for x in input_token_logprobs],
            "output_token_logprobs": [list(x) for x in output_token_logprobs],
            "unconditional_token_logprobs": [list(x) for x in unconditional_token_logprobs],
            "normalized_unconditional_prompt_logprobs": gains,
        })

    def scores(self, *, normalized_prompt_logprobs, unconditional_token_logprobs=None, input_token_logprobs=()):
        if unconditional_token_logprobs is None:
            raise ValueError(f"{self.name} needs unconditional_token_logprobs")
        return [_mean([_lp(c) - _lp(u) for c, u in zip(cond, uncond)])
                for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs)]


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
# The built-in methods by name (how the native HTTP API names them).
METHODS_BY_NAME: dict[str, ChoicesSamplingMethod] = {
    m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)}


def greedy_logprob_matrix(input_token_logprobs: Sequence[Sequence[LogprobEntry]],
                          normalized_prompt_logprobs: Sequence[float]) -> list[list[float]]:
    """``[choices x longest]`` token log-probabilities, each row padded with its own mean."""
    width = max((len(row) for row in input_token_logprobs), default=0)
    return [[_lp(e) for e in row] + [mean] * (width - len(row))
            for row, mean in zip(input_token_logprobs, normalized_prompt_logprobs)]


def mean_logprob(entries: Sequence[LogprobEntry]) -> float:
    """Mean log-probability of a choice's tokens (0.0 for a choice with no scored token)."""
    return _mean([_lp(e) for e in entries])


def decide(method: ChoicesSamplingMethod, choices: Sequence[str], temperature: float,
           input_token_logprobs: Sequence[Sequence[LogprobEntry]],
           unconditional_token_logprobs: Sequence[Sequence[LogprobEntry]] | None = None,
           rng: random.Random | None = None) -> ChoicesDecision:
    """Apply ``method``; above temperature 0, sample from its scores instead of taking its decision."""
    normalized = [mean_logprob(entries) for entries in input_token_logprobs]
    decision = method(choices=list(choices), normalized_prompt_logprobs=normalized,
                      input_token_logprobs=input_token_logprobs,
                      output_token_logprobs=[[] for _ in choices],
                      unconditional_token_logprobs=unconditional_token_logprobs)
    if temperature > 1e-5:
        scores = method.scores(normalized_prompt_logprobs=normalized, input_token_logprobs=input_token_logprobs,
                               unconditional_token_logprobs=unconditional_token_logprobs)
        top = max(scores)
        weights = [math.exp((s - top) / temperature) for s in scores]
        decision.decision = (rng or random).choices(list(choices), weights=weights)[0]
        decision.meta_info["sampling_temperature"] = temperature
    return decision


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _lp(entry: LogprobEntry) -> float:
    return 0.0 if entry[0] is None else float(entry[0])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])
