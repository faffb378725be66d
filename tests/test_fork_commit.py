"""A fork commits its stream's text and the head its branches share before they fan out (`compiler.fork_prefix`,
`lang.fork_commit`): on a tiny local model (word tokenizer), text every branch starts with is prefilled once,
by the program as written and by the IR interpreter running its graph."""

from __future__ import annotations

import pytest

from sglang_dsl.compiler.codec import CHARACTERS
from sglang_dsl.compiler.fork_prefix import branch_heads, committed_prefix, shared_head
from sglang_dsl.ir import Fork, interpret
from sglang_dsl.lang.function import function
from sglang_dsl.lang.planned_batch import plan_for
from sglang_dsl.lang.primitives import gen
from tiny_models import word_runtime

QUESTION = " ".join(f"w{30 + k}" for k in range(10))  # 10 tokens


@function
def approaches(s, question):
    s += question
    forks = s.fork(3)
    forks += lambda i: f" w7 w8 w9 w{20 + i}" + gen("idea", max_tokens=2, temperature=0, ignore_eos=True)
    forks.join()


@function
def one_at_a_time(s, question):
    s += question
    forks = s.fork(3)
    for i, branch in enumerate(forks):
        branch += f" w7 w8 w9 w{20 + i}" + gen("idea", max_tokens=2, temperature=0, ignore_eos=True)
    forks.join()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = word_runtime(tmp_path_factory.mktemp("tiny"), cpu_kv_tokens=4096, max_running_requests=8)
    yield rt
    rt.shutdown()


def prefilled(rt, run) -> tuple[int, object]:
    """Prompt tokens the engine computed (not read from the cache) while ``run()`` ran, and its result."""
    metrics = rt.engine.metrics
    rt.flush_cache()
    before = metrics.prompt_tokens._value.get() - metrics.cached_tokens._value.get()
    result = run()
    return int(metrics.prompt_tokens._value.get() - metrics.cached_tokens._value.get() - before), result


def test_committed_prefix_is_the_stable_common_start_of_the_branch_prompts(runtime):
    codec = runtime.prompt_codec()
    heads = [" w7 w8 w9 w20", " w7 w8 w9 w21"]
    assert committed_prefix(codec, "w1 w2", heads) == "w1 w2 w7 w8 w9"
    # a branch prompt's last token is left to the branch, which recomputes it for its logits anyway
    assert committed_prefix(codec, "w1 w2", [" w7", " w7"]) == "w1 w2"
    assert committed_prefix(codec, "w1 w2", ["", ""]) == "w1"
    assert committed_prefix(codec, "w1 w2", [" w7", " w8"]) == "w1 w2"
    assert committed_prefix(codec, "w1 w2", []) == "w1 w2"
    assert shared_head(heads) == " w7 w8 w9 w2" and shared_head([]) == ""
    # where a backend's tokens split the heads is unknown at character granularity: the stream's text only
    assert committed_prefix(CHARACTERS, "w1 w2", heads) == "w1 w2"


@function
def labelled(s, question, label):
    s += question + gen("x", max_tokens=1)
    forks = s.fork(2)
    forks += lambda i: " w7 " + label + f" w{20 + i} " + s["x"] + gen("idea", max_tokens=1)


def test_branch_heads_read_strings_and_given_arguments_up_to_a_generated_value():
    graph = labelled.trace()
    fork = next(node for node in graph if isinstance(node, Fork))
    assert branch_heads(graph, fork) == [" w7 ", " w7 "]
    assert branch_heads(graph, fork, {"label": "w9"}) == [" w7 w9 w20 ", " w7 w9 w21 "]


def test_the_batch_plan_predicts_the_fork_commit_with_its_shared_head(runtime):
    plan = plan_for(approaches, [{"question": QUESTION}, {"question": "w40 w41"}], runtime)
    assert [instance.prompt_tokens for instance in plan.instances] == [10 + 3, 2 + 3]


def test_text_all_branches_start_with_is_prefilled_once(runtime):
    computed, state = prefilled(runtime, lambda: approaches.run(question=QUESTION, backend=runtime))
    # the question (10) and the shared " w7 w8 w9" (3) once, then each branch's own last token
    assert computed == 10 + 3 + 3
    assert [meta["cached_tokens"] for meta in _branch_metas(state)] == [13, 13, 13]


def test_the_graph_interpreter_commits_the_shared_head_too(runtime):
    from sglang_dsl.lang.executor import Executor
    from sglang_dsl.lang.params import SamplingParams
    from sglang_dsl.lang.state import ProgramState

    def run():
        streams = interpret(approaches.trace(), ProgramState(Executor("approaches", runtime, SamplingParams())),
                            {"question": QUESTION})
        return [streams[f"fork.{i}"].get_meta_info("idea") for i in range(3)]

    computed, metas = prefilled(runtime, run)
    assert computed == 10 + 3 + 3 and [meta["cached_tokens"] for meta in metas] == [13, 13, 13]


def test_a_branch_taken_alone_first_commits_the_stream_text(runtime):
    """Iterating the branches tells nothing of what they will append: the fork commits the question only (the
    first branch to run finds just that cached; a later one may find what an earlier one computed)."""
    _, state = prefilled(runtime, lambda: one_at_a_time.run(question=QUESTION, backend=runtime))
    hits = sorted(meta["cached_tokens"] for meta in _branch_metas(state))
    assert hits[0] == 10 and set(hits) <= {10, 13}


def _branch_metas(state) -> list[dict]:
    """Each branch's meta of its ``idea`` gen (the join gathers the values, not the metas)."""
    state.sync()
    return [branch.meta_info["idea"] for branch in state._ex.children]
