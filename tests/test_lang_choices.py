"""The three ``select`` scoring methods on hand-made token log-probabilities (no model)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import sglang_dsl as sgl
from sglang_dsl.lang.choices import decide

CHOICES = ["organ", "organism", "antidisestablishmentarianism"]
CONDITIONAL = [
    [(-2.9, 1, "organ")],
    [(-3.0, 1, "organ"), (-0.1, 2, "ism")],
    [(-4.0, 3, "ant")] + [(-0.01, 4 + i, "x") for i in range(7)],
]
UNCONDITIONAL = [
    [(-1.0, 1, "organ")],
    [(-6.0, 1, "organ"), (-0.1, 2, "ism")],
    [(-4.0, 3, "ant")] + [(-0.01, 4 + i, "x") for i in range(7)],
]


def test_token_length_normalized_takes_the_best_mean():
    decision = decide(sgl.token_length_normalized, CHOICES, 0.0, CONDITIONAL)
    assert decision.decision == "antidisestablishmentarianism"
    assert decision.meta_info["normalized_prompt_logprobs"] == pytest.approx([-2.9, -1.55, -0.50875])


def test_greedy_token_selection_goes_token_by_token():
    decision = decide(sgl.greedy_token_selection, CHOICES, 0.0, CONDITIONAL)
    assert decision.decision == "organ"  # its first token beats both others'
    matrix = decision.meta_info["greedy_logprob_matrix"]
    assert len(matrix) == 3 and all(len(row) == 8 for row in matrix)
    assert matrix[0] == [-2.9] * 8 and matrix[1][2:] == [pytest.approx(-1.55)] * 6


def test_greedy_ties_go_to_the_next_token():
    tied = [[(-1.0, 1, "a"), (-2.0, 2, "b")], [(-1.0, 1, "a"), (-0.5, 3, "c")]]
    assert decide(sgl.greedy_token_selection, ["ab", "ac"], 0.0, tied).decision == "ac"


def test_unconditional_likelihood_normalized_rewards_what_the_context_adds():
    decision = decide(sgl.unconditional_likelihood_normalized, CHOICES, 0.0, CONDITIONAL, UNCONDITIONAL)
    assert decision.decision == "organism"
    assert decision.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx([-1.9, 1.5, 0.0])
    with pytest.raises(ValueError, match="needs unconditional"):
        decide(sgl.unconditional_likelihood_normalized, CHOICES, 0.0, CONDITIONAL)


def test_a_temperature_samples_in_proportion_to_the_scores():
    rng = random.Random(0)
    picks = Counter(decide(sgl.token_length_normalized, CHOICES, 1.0, CONDITIONAL, rng=rng).decision
                    for _ in range(2000))
    # weights exp(-2.9), exp(-1.55), exp(-0.50875): about 6%, 24%, 70%
    assert 0.02 < picks["organ"] / 2000 < 0.10 and 0.62 < picks["antidisestablishmentarianism"] / 2000 < 0.78


def test_a_custom_method_needs_only_call():
    class Shortest(sgl.ChoicesSamplingMethod):
        def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                     unconditional_token_logprobs=None):
            return sgl.ChoicesDecision(min(choices, key=len), {})

    assert decide(Shortest(), CHOICES, 0.0, CONDITIONAL).decision == "organ"
    assert sgl.select("x", CHOICES, choices_method=Shortest()).choices_method.name == "custom"
