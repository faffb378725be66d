"""Program requests in the engine (`runtime.program`): a prompt and text / gen / select steps run as ONE
scheduler request. On a tiny random byte-level model (BPE merges across step boundaries happen): every step's
output equals what per-node requests produce, selects decide as `backends.scoring` does with all three methods,
the request keeps its KV from step to step, aborts and retraction leave KV memory balanced, and
``POST /generate_program`` answers the same outputs and 400s naming the bad step."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import sglang_dsl as sgl
from backends.base import Prompt, SelectCall
from backends.scoring import EngineScorer, score_choices
from runtime.program import encode_program_text
from runtime.requests import InvalidRequestError
from runtime.server import BackgroundServer, create_app

GREEDY = {"temperature": 0, "max_new_tokens": 8}
PROMPT = "Question: what comes next?\nAnswer:"
METHODS = ["token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"]
STEPS = [
    {"type": "gen", "node": "gen('a')", "name": "a", "sampling_params": {**GREEDY, "stop": ["e"]}},
    {"type": "text", "text": "\nNumber: "},
    {"type": "gen", "node": "gen('n')", "name": "n", "sampling_params": {**GREEDY, "regex": "[0-9]{2,4}"}},
    {"type": "text", "text": " so"},
    {"type": "select", "node": "select('c')", "name": "c", "choices": ["on", "off", "only then"]},
    {"type": "text", "text": "\nJSON: "},
    {"type": "gen", "node": "gen('j')", "name": "j",
     "sampling_params": {**GREEDY, "max_new_tokens": 24,
                         "json_schema": '{"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]}'}},
    {"type": "text", "text": " done"},
]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from gguf_fixtures import byte_level_vocab, write_tiny_gguf

    path = tmp_path_factory.mktemp("tiny-program") / "tiny.gguf"
    write_tiny_gguf(path, vocab=byte_level_vocab(vocab_size=400), max_position_embeddings=1024)
    return path


def tiny_runtime(path, **overrides) -> sgl.Runtime:
    args = dict(device="cpu", dtype="float32", cpu_kv_tokens=8192, max_running_requests=16)
    return sgl.Runtime(model=str(path), **{**args, **overrides})


@pytest.fixture(scope="module")
def runtime(tiny_gguf):
    with tiny_runtime(tiny_gguf) as rt:
        yield rt


@pytest.fixture
def engine(runtime):
    yield runtime.engine
    runtime.engine.check_integrity()


def requests_total(engine) -> float:
    return sum(engine.metrics.value("sglang_dsl_requests_total", {"finish_reason": r}) or 0
               for r in ("stop", "length", "abort"))


def per_node(runtime, prompt: str, steps: list[dict]) -> list[str]:
    """What the interpreter's per-node path computes: one request per gen on the whole text, `score_choices`
    per select."""
    text, values = prompt, []
    for step in steps:
        if step["type"] == "text":
            text += step["text"]
            continue
        if step["type"] == "gen":
            ids = encode_program_text(runtime.tokenizer, text)
            value = runtime.engine.generate(input_ids=ids, sampling_params=step["sampling_params"]).text
        else:
            method = sgl.lang.choices.METHODS_BY_NAME[step.get("method", "token_length_normalized")]
            call = SelectCall(step["node"], Prompt(text), tuple(step["choices"]), 0.0, method)
            value = sgl.lang.loop.run(score_choices(EngineScorer(runtime), call)).decision
        text += value
        values.append(value)
    return values


def test_program_outputs_equal_per_node_requests(runtime, engine):
    before = requests_total(engine)
    out = engine.generate_program(PROMPT, STEPS)
    assert requests_total(engine) == before + 1  # the whole program was one request
    assert out.finish is None
    assert [s.value for s in out.steps] == per_node(runtime, PROMPT, STEPS)
    assert out.text == "".join(s["text"] if s["type"] == "text" else r.value
                               for s, r in zip(STEPS, _align(STEPS, out.steps)))
    assert [s.name for s in out.steps] == ["a", "n", "c", "j"]
    assert out.steps[0].output.finish.type in ("stop", "length")


def _align(steps, results):
    it = iter(results)
    return [next(it) if s["type"] != "text" else None for s in steps]


@pytest.mark.parametrize("method", METHODS)
def test_select_steps_decide_as_per_node_scoring(runtime, engine, method):
    steps = [{"type": "select", "node": "select('x')", "name": "x", "method": method,
              "choices": ["red", "green", "blue sky", "re"]},
             {"type": "text", "text": " and "},
             {"type": "select", "node": "select('y')", "name": "y", "method": method, "choices": ["1", "22", "333"]}]
    out = engine.generate_program("Colors:", steps)
    assert [s.value for s in out.steps] == per_node(runtime, "Colors:", steps)
    meta = out.steps[1].meta_info
    assert meta["prompt_tokens"] == len(encode_program_text(runtime.tokenizer, "Colors:" + out.steps[0].value + " and "))
    assert meta["cached_tokens"] > 0  # the prefix's KV stayed with the request
    assert len(meta["normalized_prompt_logprobs"]) == 3


def test_steps_keep_the_kv_of_the_request(engine):
    out = engine.generate_program(PROMPT, STEPS[:3])
    first, second = out.steps[0].output, out.steps[1].output
    assert first.cached_tokens < first.prompt_tokens
    # everything up to the first gen's output (bar a merged boundary token) was already in the request's KV
    assert second.cached_tokens >= first.prompt_tokens + first.completion_tokens - 3
    assert second.num_retractions == 0


def test_text_only_program_runs_nothing(engine):
    before = requests_total(engine)
    out = engine.generate_program("A", [{"type": "text", "text": "B"}, {"type": "text", "text": "C"}])
    assert (out.text, out.steps, out.finish) == ("BC", (), None)
    assert requests_total(engine) == before


@pytest.mark.parametrize("steps, message", [
    ([{"type": "loop"}], "steps[0]: type must be one of text, gen, select"),
    ([{"type": "text", "text": "x"}, {"type": "gen", "node": "g", "sampling_params": {"regex": "[0-9"}}],
     "steps[1] (g): "),
    ([{"type": "gen", "node": "g", "sampling_params": {"n": 2}}], "steps[0] (g): a gen step takes one sample"),
    ([{"type": "gen", "node": "g", "sampling_params": {"max_new_tokens": "5"}}], "steps[0] (g): "),
    ([{"type": "gen", "node": "g", "logprob_start_len": 0}], "steps[0] (g): logprob_start_len is not supported"),
    ([{"type": "select", "node": "s", "choices": []}], "steps[0] (s): choices must be a non-empty list"),
    ([{"type": "select", "node": "s", "choices": ["a"], "method": "best"}], "steps[0] (s): method must be one of"),
    ([{"type": "text", "text": "x", "extra": 1}], "steps[0]: unknown keys extra"),
    ("gen", "steps must be a list"),
])
def test_bad_steps_are_refused_naming_the_step(engine, steps, message):
    with pytest.raises(InvalidRequestError) as raised:
        engine.make_program("x", steps)
    assert str(raised.value).startswith(message), str(raised.value)


def test_a_step_past_the_context_aborts_naming_it(engine):
    out = engine.generate_program("start", [
        {"type": "gen", "node": "gen('a')", "sampling_params": {**GREEDY, "max_new_tokens": 2}},
        {"type": "text", "text": " x" * 1100},
        {"type": "gen", "node": "gen('b')", "sampling_params": GREEDY}])
    assert out.finish.type == "abort"
    assert out.error.startswith("steps[2] (gen('b')): the program has")
    assert len(out.steps) == 1


def test_abort_mid_generation_frees_everything(engine):
    async def run():
        program = engine.make_program(PROMPT, [
            {"type": "gen", "node": "g1", "sampling_params": {**GREEDY, "max_new_tokens": 4}},
            {"type": "gen", "node": "g2", "sampling_params": {**GREEDY, "max_new_tokens": 600, "ignore_eos": True}}])
        task = asyncio.ensure_future(engine.async_generate_program(program))
        await asyncio.sleep(0.3)
        assert not task.done()
        engine.abort(program.rid)
        return await task

    out = asyncio.run(run())
    assert out.finish.type == "abort" and "g2" in out.error
    assert [s.node for s in out.steps] == ["g1"]


def test_abort_while_choices_are_scored_frees_everything(tiny_gguf):
    # a tiny prefill budget makes scoring the long choices take many steps, so the program stays parked
    with tiny_runtime(tiny_gguf, chunked_prefill_size=2, max_prefill_tokens=2) as rt:
        engine = rt.engine
        program = engine.make_program("Pick:", [{"type": "select", "node": "s", "choices": ["x" * 40, "y" * 40]}])
        outputs = []
        engine.submit_program(program, outputs.append)
        deadline = time.monotonic() + 30
        while not engine.stats()["parked"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.abort(program.rid)
        while not outputs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outputs[0].finish.type == "abort"
        deadline = time.monotonic() + 10
        while engine.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        engine.check_integrity()
        assert engine.stats()["running"] == engine.stats()["waiting"] == engine.stats()["parked"] == 0


def test_programs_under_kv_pressure_retract_and_keep_outputs(runtime, tiny_gguf):
    steps = [{"type": "gen", "node": "g1", "sampling_params": {**GREEDY, "max_new_tokens": 30, "ignore_eos": True}},
             {"type": "text", "text": " then"},
             {"type": "gen", "node": "g2", "sampling_params": {**GREEDY, "max_new_tokens": 30, "ignore_eos": True}}]
    prompts = [f"Item {i}: " + "abc " * (i + 2) for i in range(6)]
    expected = [[s.value for s in runtime.engine.generate_program(p, steps).steps] for p in prompts]
    with tiny_runtime(tiny_gguf, cpu_kv_tokens=300, new_token_ratio=0.05, min_new_token_ratio=0.05) as tight:
        async def run_all():
            programs = [tight.engine.make_program(p, steps) for p in prompts]
            return await asyncio.gather(*(tight.engine.async_generate_program(p) for p in programs))

        outputs = asyncio.run(run_all())
        tight.engine.check_integrity()
    assert [[s.value for s in o.steps] for o in outputs] == expected
    assert sum(s.output.num_retractions for o in outputs for s in o.steps) > 0


def test_http_endpoint_round_trip_and_errors(runtime, engine):
    with BackgroundServer(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/get_server_info").json()["program_endpoint"] is True
        response = http.post("/generate_program", json={"text": PROMPT, "steps": STEPS})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["finish_reason"] is None
        assert [o["value"] for o in body["outputs"]] == [s.value for s in engine.generate_program(PROMPT, STEPS).steps]
        gen_meta, select_meta = body["outputs"][0]["meta_info"], body["outputs"][2]["meta_info"]
        assert {"prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason"} <= set(gen_meta)
        assert {"prompt_tokens", "cached_tokens", "normalized_prompt_logprobs"} <= set(select_meta)
        bad = http.post("/generate_program", json={"text": "x", "steps": [
            {"type": "text", "text": "y"}, {"type": "gen", "node": "gen('z')", "sampling_params": {"regex": "(a"}}]})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("steps[1] (gen('z')): ")
        assert http.post("/generate_program", json={"text": "x"}).status_code == 400
        short = STEPS[:3]
        batch = http.post("/generate_program", json={"text": [PROMPT, "Other:"], "steps": [STEPS, short]})
        assert batch.status_code == 200, batch.text
        assert [[o["value"] for o in r["outputs"]] for r in batch.json()] == [
            [s.value for s in engine.generate_program(p, steps).steps] for p, steps in ((PROMPT, STEPS), ("Other:", short))]
        mismatched = http.post("/generate_program", json={"text": ["a", "b"], "steps": [STEPS]})
        assert mismatched.status_code == 400 and "1 lists for 2 prompts" in mismatched.text
        assert http.post("/generate_program", json={"text": "x", "steps": [{"type": "select", "choices": "ab"}]}
                         ).status_code == 400


@pytest.mark.parametrize("variant", [dict(page_size=4), dict(disable_radix_cache=True), dict(chunked_prefill_size=3)],
                         ids=["page4", "no-radix", "chunk3"])
def test_program_outputs_do_not_depend_on_memory_layout(runtime, tiny_gguf, variant):
    expected = [s.value for s in runtime.engine.generate_program(PROMPT, STEPS).steps]
    with tiny_runtime(tiny_gguf, **variant) as other:
        assert [s.value for s in other.engine.generate_program(PROMPT, STEPS).steps] == expected
        other.engine.check_integrity()


def test_many_programs_at_selects_never_starve_their_scoring_rows(runtime, tiny_gguf):
    # more programs than request rows, each select needing a row per choice: parked programs hold no row
    steps = [{"type": "gen", "node": "g", "sampling_params": {**GREEDY, "max_new_tokens": 3}},
             {"type": "select", "node": "s", "choices": ["one", "two", "three", "four"],
              "method": "unconditional_likelihood_normalized"}]
    prompts = [f"Case {i}:" for i in range(8)]
    expected = [[s.value for s in runtime.engine.generate_program(p, steps).steps] for p in prompts]
    with tiny_runtime(tiny_gguf, max_running_requests=4) as small:
        async def run_all():
            return await asyncio.gather(*(small.engine.async_generate_program(small.engine.make_program(p, steps))
                                          for p in prompts))

        outputs = asyncio.run(run_all())
        small.engine.check_integrity()
    assert [o.finish for o in outputs] == [None] * len(prompts)
    assert [[s.value for s in o.steps] for o in outputs] == expected


def test_http_abort_request_stops_a_program(engine):
    steps = [{"type": "gen", "node": "g1", "sampling_params": {**GREEDY, "max_new_tokens": 2}},
             {"type": "gen", "node": "g2", "sampling_params": {**GREEDY, "max_new_tokens": 800, "ignore_eos": True}}]
    with BackgroundServer(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        async def run():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                call = asyncio.ensure_future(client.post("/generate_program",
                                                         json={"text": PROMPT, "steps": steps, "rid": "prog-1"}))
                await asyncio.sleep(0.5)
                assert (await client.post("/abort_request", json={"rid": "prog-1"})).json() == {"success": True}
                return (await call).json()

        body = asyncio.run(run())
        assert body["finish_reason"]["type"] == "abort" and body["finish_reason"]["message"].startswith("steps[1] (g2)")
        assert [o["node"] for o in body["outputs"]] == ["g1"]
        assert http.get("/health").status_code == 200
