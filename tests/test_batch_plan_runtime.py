"""run_batch by a batch plan on the local runtime (tiny random model, word tokenizer): the plan's predicted
cache hits and prefilled tokens are what the runtime reports, and results match an unplanned run."""

from __future__ import annotations

import random

import pytest

from sglang_dsl.lang.config import global_config
from sglang_dsl.lang.function import function
from sglang_dsl.lang.planned_batch import plan_for
from sglang_dsl.lang.primitives import gen
from tiny_models import word_runtime

HEADERS = [" ".join(f"w{10 + 3 * h + k % 7}" for k in range(40)) for h in range(3)]


@function
def few_shot(s, header, question):
    s += header + " w1 "
    s += question + " w2"
    s += gen("answer", max_tokens=3, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = word_runtime(tmp_path_factory.mktemp("tiny"), cpu_kv_tokens=8192, max_running_requests=8)
    yield rt
    rt.shutdown()


def batch() -> list[dict[str, str]]:
    rng = random.Random(0)
    # distinct first question words, so instances share nothing beyond their header
    entries = [{"header": HEADERS[i % 3], "question": f"w{100 + i} " + " ".join(f"w{rng.randrange(200, 256)}"
                                                                          for _ in range(5))}
               for i in range(12)]
    rng.shuffle(entries)
    return entries


def engine_counts(rt) -> tuple[float, float]:
    metrics = rt.engine.metrics
    return metrics.prompt_tokens._value.get(), metrics.cached_tokens._value.get()


def test_plan_predictions_match_the_runtime(runtime):
    entries = batch()
    plan = plan_for(few_shot, [few_shot.arguments((), e) for e in entries], runtime)
    assert plan is not None and plan.granularity == "token"
    assert len(plan.prefixes) == 3  # one per header
    runtime.flush_cache()
    prompt_before, cached_before = engine_counts(runtime)
    states = few_shot.run_batch(entries, backend=runtime)
    prompt_after, cached_after = engine_counts(runtime)
    for instance, state in zip(plan.instances, states):
        meta = state.get_meta_info("answer")
        assert (meta["prompt_tokens"], meta["cached_tokens"]) == (instance.prompt_tokens, instance.cached_tokens)
    assert prompt_after - prompt_before - (cached_after - cached_before) == plan.prefill_tokens
    assert plan.prefill_tokens == plan.ideal_tokens  # every distinct prefix computed once


def test_planned_and_unplanned_runs_agree(runtime):
    entries = batch()[:6]
    planned = [s["answer"] for s in few_shot.run_batch(entries, backend=runtime)]
    global_config.enable_batch_planning = False
    try:
        unplanned = [s["answer"] for s in few_shot.run_batch(entries, backend=runtime)]
    finally:
        global_config.enable_batch_planning = True
    assert planned == unplanned


def test_a_batch_larger_than_the_kv_pool_keeps_every_planned_hit(tmp_path):
    """Six groups whose prefixes and programs together need several times the pool: the plan's order still gets
    every predicted cache hit."""
    headers = [" ".join(f"w{20 + 5 * h + k % 11}" for k in range(40)) for h in range(6)]
    entries = [{"header": headers[i % 6], "question": f"w{100 + i} w{200 + i}"} for i in range(24)]
    with word_runtime(tmp_path, max_total_tokens=160, max_running_requests=4) as rt:
        plan = plan_for(few_shot, [few_shot.arguments((), e) for e in entries], rt)
        assert sum(p.tokens for p in plan.prefixes) > 160
        states = few_shot.run_batch(entries, backend=rt)
        hits = [s.get_meta_info("answer")["cached_tokens"] for s in states]
    assert hits == [instance.cached_tokens for instance in plan.instances]
