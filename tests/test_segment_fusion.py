"""Segment fusion in the interpreter (`sglang_dsl.lang.fusion`): queued text / gen / select nodes run as one
program request of the local runtime. Programs must behave exactly as with one request per node (greedy text,
variables, the meta that matters), with fewer runtime requests than model-calling nodes; roles end segments and
errors still name the node that failed. On a tiny random byte-level model and on the embedded SmolLM2-135M."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import sglang_dsl as sgl
from backends.base import Backend
from sglang_dsl.lang.config import global_config
from sglang_dsl.lang.errors import ProgramError

SCHEMA = {"type": "object", "properties": {"k": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["k"],
          "additionalProperties": False}  # closed: other properties would be allowed (JSON Schema reads it so)


class PerNode(Backend):
    """The same runtime without segments: the interpreter sends one call per node."""

    name = "per-node runtime"

    def __init__(self, inner: Backend):
        self.inner = inner
        self.capabilities = replace(inner.capabilities, segments=False)

    def chat_template(self):
        return self.inner.chat_template()

    async def generate(self, call):
        return await self.inner.generate(call)

    async def select(self, call):
        return await self.inner.select(call)

    async def cache_prefix(self, prompt):
        await self.inner.cache_prefix(prompt)


@sgl.function
def mixed(s, topic):
    s += "Topic: " + topic + "\n"
    s += ("Summary:" + sgl.gen("summary", max_tokens=8, stop="e") + "\nScore: "
          + sgl.gen("score", regex="[0-9]{1,2}", max_tokens=4) + "\nVerdict: "
          + sgl.select("verdict", choices=["good", "bad", "unclear"]) + "\nJSON: "
          + sgl.gen("data", max_tokens=30, json_schema=SCHEMA) + "\nMood: "
          + sgl.select("mood", choices=["happy", "sad"], choices_method=sgl.greedy_token_selection)
          + " / " + sgl.select("tone", choices=["calm", "loud"], choices_method=sgl.unconditional_likelihood_normalized))
    s += "\nEnd."


CALLS = 6  # model-calling nodes of `mixed`


@pytest.fixture(scope="module")
def tiny(tiny_byte_gguf):
    with sgl.Runtime(model=str(tiny_byte_gguf), device="cpu", dtype="float32", cpu_kv_tokens=8192) as rt:
        yield rt
        rt.engine.check_integrity()


@pytest.fixture
def fusion_switch():
    previous = global_config.enable_segment_fusion
    yield
    global_config.enable_segment_fusion = previous


def requests_total(runtime) -> float:
    metrics = runtime.engine.metrics
    return sum(metrics.value("sglang_dsl_requests_total", {"finish_reason": r}) or 0
               for r in ("stop", "length", "abort"))


def run_counted(program, runtime, backend=None, fuse=True, **kwargs):
    global_config.enable_segment_fusion = fuse
    before = requests_total(runtime)
    state = program.run(backend=backend or runtime, temperature=0, **kwargs)
    return state, requests_total(runtime) - before


def comparable(state, names):
    """Text, variables and the per-node meta that does not depend on what the cache held."""
    metas = {n: {k: state.get_meta_info(n).get(k) for k in ("prompt_tokens", "completion_tokens", "finish_reason")}
             for n in names}
    return state.text(), {n: state[n] for n in names}, metas


def test_fused_equals_unfused_equals_per_node_on_the_tiny_model(tiny, fusion_switch):
    names = ["summary", "score", "verdict", "data", "mood", "tone"]
    fused, fused_requests = run_counted(mixed, tiny, topic="rivers")
    unfused, unfused_requests = run_counted(mixed, tiny, fuse=False, topic="rivers")
    per_node, _ = run_counted(mixed, tiny, backend=PerNode(tiny), topic="rivers")
    assert comparable(fused, names) == comparable(unfused, names) == comparable(per_node, names)
    assert fused_requests == 1 < CALLS <= unfused_requests
    assert json.loads(fused["data"])["k"] is not None
    assert fused.get_meta_info("verdict")["normalized_prompt_logprobs"] == \
        unfused.get_meta_info("verdict")["normalized_prompt_logprobs"]


def test_every_node_is_recorded_and_readable_while_fused(tiny, fusion_switch):
    state, requests = run_counted(mixed, tiny, topic="hills")
    assert requests == 1
    kinds = [type(run.leaf).__name__ for run in state._ex.runs]
    assert kinds.count("Gen") == 3 and kinds.count("Select") == 3
    assert state.get_meta_info("score")["completion_tokens"] >= 1


@sgl.function
def long_then_more(s):
    s += "x " * 500 + sgl.gen("a", max_tokens=4, ignore_eos=True) + " y" * 700 + sgl.gen("b", max_tokens=4)


@pytest.mark.parametrize("fuse", [True, False])
def test_errors_name_the_failing_node_and_keep_what_ran_before(tiny, fusion_switch, fuse):
    global_config.enable_segment_fusion = fuse
    with pytest.raises(ProgramError) as raised:
        long_then_more.run(backend=tiny, temperature=0)
    assert raised.value.node == "gen('b')"
    (state,) = long_then_more.run_batch([{}], backend=tiny, temperature=0)
    assert state.error() is not None
    global_config.enable_segment_fusion = False
    (per_node,) = long_then_more.run_batch([{}], backend=tiny, temperature=0)
    assert state["a"] == per_node["a"]
    assert state._ex.text == per_node._ex.text  # everything before gen('b') was appended
    with pytest.raises(ProgramError):
        state["b"]


@sgl.function
def chat(s, question):
    s += sgl.system("You answer in few words.")
    s += sgl.user(question)
    s += sgl.assistant_begin()
    s += ("Answer:" + sgl.gen("answer", max_tokens=12, stop="\n") + "\nConfidence: "
          + sgl.select("confidence", choices=["high", "low"]) + "\nYear: " + sgl.gen("year", regex="(19|20)[0-9]{2}")
          + "\nData: " + sgl.gen("data", max_tokens=24, json_schema=SCHEMA))
    s += sgl.assistant_end()
    s += sgl.user("Is that right? Say yes or no.")
    s += sgl.assistant(sgl.select("check", choices=["yes", "no"]))


@pytest.fixture(scope="module")
def smollm2(smollm2_source):
    with sgl.Runtime(model=str(smollm2_source.path), device="cpu", max_total_tokens=8192) as rt:
        yield rt
        rt.engine.check_integrity()


def test_fused_equals_unfused_on_smollm2(smollm2, fusion_switch):
    names = ["answer", "confidence", "year", "data", "check"]
    question = "When did the first person walk on the moon?"
    fused, fused_requests = run_counted(chat, smollm2, question=question)
    unfused, unfused_requests = run_counted(chat, smollm2, fuse=False, question=question)
    assert comparable(fused, names) == comparable(unfused, names)
    assert 1900 <= int(fused["year"]) <= 2099
    assert isinstance(json.loads(fused["data"])["k"], int)
    # the assistant turn's four calls are one request; the select after the next turn stands alone. Per node, a
    # select is its prefix's request, which returns the choices' first-token logprobs, plus a row per choice that
    # needs one: "Confidence: " ends in a space that merges into each choice's token (two rows), while "yes" and
    # "no" start cleanly after the assistant header and are one token each (no rows)
    assert fused_requests == 1 + 1 < len(names) < 1 + (1 + 2) + 1 + 1 + 1 == unfused_requests
