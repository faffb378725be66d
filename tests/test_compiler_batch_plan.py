"""Batch planning (`sglang_dsl.compiler.batch_plan`): grouping by shared prefix, order, predictions, data forms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_dsl.compiler.batch_plan import BatchPlan, plan_batch
from sglang_dsl.compiler.plan_data import PlanFormatError
from sglang_dsl.lang.function import function
from sglang_dsl.lang.primitives import gen


@function
def qa(s, header, question):
    s += header
    s += "Q: " + question + "\nA:"
    s += gen("answer")


class WordCodec:
    """Tokens are space-separated words (each keeps its leading space), as ids into a growing table."""

    granularity = "token"

    def __init__(self) -> None:
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        pieces = [p for p in text.replace(" ", "\0 ").split("\0") if p]
        for piece in pieces:
            if piece not in self.words:
                self.words.append(piece)
        return [self.words.index(p) for p in pieces]

    def decode(self, ids) -> str:
        return "".join(self.words[i] for i in ids)


def entries(headers: list[str], questions: list[str]) -> list[dict[str, str]]:
    return [{"header": h, "question": q} for h, q in zip(headers, questions)]


def test_one_prefix_per_header_and_depth_first_order():
    a, b = "Alpha header with several words. ", "Beta header that is a good deal longer than alpha. "
    batch = entries([a, b, a, b, b], ["one", "two", "three", "four", "five"])
    plan = plan_batch(qa.trace(), batch, WordCodec(), min_shared_tokens=2)
    texts = {p.text for p in plan.prefixes}
    assert texts == {a + "Q:", b + "Q:"}
    # each prefix is followed by exactly its own instances
    for k, (kind, key) in enumerate(plan.order):
        if kind == "prefill":
            members = plan.prefixes[key].instances
            assert {i for _, i in plan.order[k + 1:k + 1 + len(members)]} == set(members)
    assert plan.order[0] == ("prefill", next(p.id for p in plan.prefixes if p.text.startswith("Beta")))


def test_predictions_count_each_distinct_prefix_once():
    header = "Some shared instructions for every question. "
    batch = entries([header] * 4, ["alpha", "beta", "gamma", "delta"])
    codec = WordCodec()
    plan = plan_batch(qa.trace(), batch, codec, min_shared_tokens=2)
    (prefix,) = plan.prefixes
    assert prefix.cached_tokens == 0 and prefix.tokens == len(codec.encode(header + "Q:"))
    for instance in plan.instances:
        assert instance.request == "gen_answer" and instance.cached_tokens == prefix.tokens
    assert plan.prefill_tokens == plan.ideal_tokens
    assert plan.cached_tokens == 4 * prefix.tokens


def test_cache_hits_are_whole_pages_and_never_the_last_token():
    header = "one two three four five six seven "
    plan = plan_batch(qa.trace(), entries([header] * 2, ["x", "x"]), WordCodec(), page_size=4,
                      min_shared_tokens=2)
    (prefix,) = plan.prefixes  # the whole identical prompt
    assert prefix.tokens == plan.instances[0].prompt_tokens
    assert all(i.cached_tokens % 4 == 0 and i.cached_tokens < i.prompt_tokens for i in plan.instances)


def test_small_shared_prefixes_are_not_worth_a_request():
    plan = plan_batch(qa.trace(), entries(["ab", "ac"], ["q", "r"]), min_shared_tokens=4)
    assert plan.prefixes == () and {i for _, i in plan.order} == {0, 1}
    assert plan.prefill_tokens == sum(i.prompt_tokens for i in plan.instances)


def test_prefix_text_reencodes_to_its_tokens():
    class MergingCodec(WordCodec):
        """'Q:' followed by ' x' is one token when encoded together, like a BPE merge."""

        def encode(self, text):
            return super().encode(text.replace("Q: x", "Q:\x01x"))

        def decode(self, ids):
            return super().decode(ids).replace("\x01", " ")

    batch = entries(["head words here "] * 2, ["xa", "xb"])
    codec = MergingCodec()
    plan = plan_batch(qa.trace(), batch, codec, min_shared_tokens=1)
    for prefix in plan.prefixes:
        assert len(codec.encode(prefix.text)) == prefix.tokens


def test_text_form():
    batch = entries(["Header one. ", "Header one. "], ["a b", "c d"])
    text = str(plan_batch(qa.trace(), batch, WordCodec(), min_shared_tokens=2))
    assert text.splitlines() == [
        "batch plan qa: 2 instances, 1 shared prefixes (token granularity, page size 1)",
        "  prefill #0 +'Header one. Q:': 3 tokens, 0 cached, for 2 instances",
        "    run [0] %gen_answer: 5 tokens, 3 cached",
        "    run [1] %gen_answer: 5 tokens, 3 cached",
        "predicted: 7 tokens prefilled (ideal 7), 6 cached, 1 prefill requests",
    ]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["H1 ", "H2 longer ", ""]), st.text("ab ", max_size=6)),
                min_size=1, max_size=8),
       st.integers(1, 3), st.integers(1, 3))
def test_json_round_trip_and_plan_invariants(pairs, page_size, min_shared):
    batch = [{"header": h, "question": q} for h, q in pairs]
    plan = plan_batch(qa.trace(), batch, page_size=page_size, min_shared_tokens=min_shared)
    assert BatchPlan.from_json(plan.to_json()) == plan
    runs = [i for kind, i in plan.order if kind == "run"]
    assert sorted(runs) == list(range(len(batch)))
    seen: set[int] = set()
    for kind, key in plan.order:
        if kind == "prefill":
            assert plan.prefixes[key].parent is None or plan.prefixes[key].parent in seen
            seen.add(key)
        elif plan.instances[key].prefix is not None:
            assert plan.instances[key].prefix in seen
    assert plan.prefill_tokens >= plan.ideal_tokens - len(batch)


def test_malformed_json_names_the_field():
    plan = plan_batch(qa.trace(), entries(["h"], ["q"]))
    broken = plan.to_json().replace('"page_size": 1', '"page_size": "one"')
    with pytest.raises(PlanFormatError, match="BatchPlan.page_size"):
        BatchPlan.from_json(broken)
    with pytest.raises(PlanFormatError, match="not a BatchPlan"):
        BatchPlan.from_json('{"plan": "Other"}')
