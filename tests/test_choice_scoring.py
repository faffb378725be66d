"""The select plan (`sglang_dsl.compiler.choice_scoring`): which tokens each choice's score needs and which
requests compute them. On token ids alone, then on a tiny random byte-level model (BPE merges across the
prefix/choice boundary happen): scores equal those of scoring every choice in a full row, and the engine computes
the prefix once and only the tokens of choices longer than one token."""

from __future__ import annotations

import pytest

import sglang_dsl as sgl
from backends.base import Prompt, SelectCall
from backends.scoring import EngineScorer, Prefilled, score_choices
from sglang_dsl.compiler.choice_scoring import ChoiceRow, ChoiceScoring

PREFIX = (1, 2, 3)


def test_one_token_choices_need_no_rows():
    plan = ChoiceScoring.plan(PREFIX, [(1, 2, 3, 4), (1, 2, 3, 5)])
    assert plan.first_tokens == (4, 5) and plan.next_token_ids == (4, 5) and plan.rows == ()
    entries = plan.conditional({4: (-0.5, 4, "a"), 5: (-2.0, 5, "b")}, [])
    assert entries == [[(-0.5, 4, "a")], [(-2.0, 5, "b")]]


def test_longer_and_merged_choices_get_rows_from_where_they_differ():
    prompts = [(1, 2, 3, 5, 6), (1, 2, 7, 8), (1, 2, 3)]
    plan = ChoiceScoring.plan(PREFIX, prompts)
    # a longer choice: first token from the prefix request, a row for the rest (the whole prefix is cacheable);
    # a merged one (the prefix's last token differs): a row from the first differing token; an empty one: nothing
    assert plan.first_tokens == (5, None, None)
    assert plan.rows == (ChoiceRow(0, prompts[0], 3), ChoiceRow(1, prompts[1], 1))
    assert plan.starts == (3, 2, 3)
    entries = plan.conditional({5: (-1.0, 5, None)}, [
        [(None, 5, None), (-0.25, 6, None)],
        [(None, 2, None), (-3.0, 7, None), (-0.5, 8, None)],
    ])
    assert entries == [[(-1.0, 5, None), (-0.25, 6, None)], [(-3.0, 7, None), (-0.5, 8, None)], []]


def test_without_next_token_logprobs_or_prefix_every_choice_is_a_row():
    prompts = [(1, 2, 3, 4), (1, 2, 3, 5, 6)]
    fallback = ChoiceScoring.plan(PREFIX, prompts, next_token=False)
    assert fallback.next_token_ids == () and [r.logprob_start_len for r in fallback.rows] == [2, 2]
    no_prefix = ChoiceScoring.plan((), [(4, 5)])
    assert no_prefix.rows == (ChoiceRow(0, (4, 5), 0),) and no_prefix.starts == (1,)  # the first token has no context


# ---- on a model -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(tiny_byte_gguf):
    with sgl.Runtime(model=str(tiny_byte_gguf), device="cpu", dtype="float32", cpu_kv_tokens=8192) as rt:
        yield rt
        rt.engine.check_integrity()


class FullRows(EngineScorer):
    """A scorer that cannot return next-token logprobs: every choice is scored in a full row."""

    async def prefill(self, ids, next_token_ids) -> Prefilled:
        return Prefilled((await self.runtime.prefill(ids)).cached_tokens, None)


CHOICES = ("red", " green", "blue sky", "re", "")


@pytest.mark.parametrize("method", ["token_length_normalized", "greedy_token_selection",
                                    "unconditional_likelihood_normalized"])
@pytest.mark.parametrize("text", ["Colors:", "Colors: ", "A"])
def test_scores_equal_full_rows(runtime, method, text):
    plan = ChoiceScoring.plan(runtime.encode(text), [runtime.encode(text + c) for c in CHOICES])
    assert (None in plan.first_tokens[:-1]) == text.endswith(" ")  # a trailing space merges into some choices
    call = SelectCall("select('c')", Prompt(text), CHOICES, 0.0, sgl.lang.choices.METHODS_BY_NAME[method])
    planned = sgl.lang.loop.run(score_choices(EngineScorer(runtime), call))
    runtime.flush_cache()
    full = sgl.lang.loop.run(score_choices(FullRows(runtime), call))
    assert planned.decision == full.decision
    for key in ("normalized_prompt_logprobs", "normalized_unconditional_prompt_logprobs"):
        if key in full.meta_info:
            assert planned.meta_info[key] == pytest.approx(full.meta_info[key], abs=1e-4)


def computed_tokens(runtime) -> float:
    registry = runtime.engine.metrics.registry
    return (registry.get_sample_value("sglang_dsl_prompt_tokens_total")
            - registry.get_sample_value("sglang_dsl_cached_tokens_total"))


def test_the_prefix_is_computed_once_and_choices_only_past_their_first_token(runtime):
    text = "Review: the food was great. Sentiment:"
    choices = (" positive", " negative", " neutral", " mixed feelings")
    prefix = runtime.encode(text)
    plan = ChoiceScoring.plan(prefix, [runtime.encode(text + c) for c in choices])
    assert plan.first_tokens.count(None) == 0  # they start after a space-free prefix: no merges
    runtime.flush_cache()
    before = computed_tokens(runtime)
    call = SelectCall("select('s')", Prompt(text), choices, 0.0, sgl.token_length_normalized)
    decision = sgl.lang.loop.run(score_choices(EngineScorer(runtime), call))
    row_tokens = sum(len(row.input_ids) - len(prefix) for row in plan.rows)
    assert computed_tokens(runtime) - before == len(prefix) + row_tokens
    assert decision.meta_info["choices_cached_tokens"] == [
        len(prefix) if any(r.choice == i for r in plan.rows) else None for i in range(len(choices))]
