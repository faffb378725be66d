"""The HTTP server over a real engine: SGLang's native API (httpx, with the exact bodies SGLang's frontend sends)
and the OpenAI API (the official ``openai`` SDK, sync, async and streaming), API keys, bad requests, client
disconnects and metrics. Most tests use a tiny random Llama on a word-level tokenizer; the last ones use the
embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from runtime.args import RuntimeArgs
from runtime.engine import Engine
from runtime.server import BackgroundServer, create_app
from tiny_models import make_hf_model

GREEDY = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<eos>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def write_chat_tokenizer(directory: Path, vocab_size: int = 256) -> None:
    """Word-level tokens ``w0 .. w252`` split on whitespace, three special tokens, an EOS and a chat template."""
    words = vocab_size - len(SPECIAL_TOKENS)
    added = [{"id": words + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)]
    (directory / "tokenizer.json").write_text(json.dumps({
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(words)}, "unk_token": "w0"},
        "pre_tokenizer": {"type": "Whitespace"}, "decoder": None, "added_tokens": added,
    }))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "chat_template": CHAT_TEMPLATE}))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama-server")
    make_hf_model("llama", directory, max_position_embeddings=2048)
    write_chat_tokenizer(directory)
    args = RuntimeArgs(model=str(directory), device="cpu", dtype="float32", cpu_kv_tokens=16384,
                       max_running_requests=16)
    with Engine(args) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(create_app(engine)) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_name(engine) -> str:
    return engine.args.model


@pytest.fixture(autouse=True)
def kv_balances(request):
    yield
    if "engine" in request.fixturenames:
        engine = request.getfixturevalue("engine")
        wait_idle(engine)
        engine.check_integrity()


def wait_idle(engine: Engine, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            return stats
        assert time.monotonic() < deadline, f"the engine is still busy: {stats}"
        time.sleep(0.02)


def sse(response: httpx.Response) -> list:
    """The events of a server-sent stream, up to and including ``[DONE]``."""
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        if payload == "[DONE]":
            events.append("[DONE]")
            break
        events.append(json.loads(payload))
    return events


def metric(engine: Engine, name: str, **labels: str) -> float:
    return engine.metrics.value(f"sglang_dsl_{name}", labels) or 0.0


# --------------------------------------------------------------------------------------------- native API

def test_generate_returns_text_ids_and_meta_info(http, engine):
    r = http.post("/generate", json={"text": "w1 w2 w3", "sampling_params": GREEDY})
    assert r.status_code == 200
    body = r.json()
    expected = engine.generate("w1 w2 w3", GREEDY)
    assert body["text"] == expected.text and body["output_ids"] == list(expected.output_ids)
    meta = body["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 6}
    assert meta["prompt_tokens"] == 3 and meta["completion_tokens"] == 6
    assert meta["cached_tokens"] >= 0 and meta["e2e_latency"] > 0 and meta["id"]
    assert "input_token_logprobs" not in meta


def test_generate_batches_keep_request_order(http, engine):
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    r = http.put("/generate", json={
        "input_ids": prompts,
        "sampling_params": [{**GREEDY, "max_new_tokens": k} for k in (2, 3, 4)],
        "rid": ["a", "b", "c"],
    })
    assert r.status_code == 200
    results = r.json()
    assert [x["meta_info"]["id"] for x in results] == ["a", "b", "c"]
    assert [x["meta_info"]["completion_tokens"] for x in results] == [2, 3, 4]
    for prompt, result, k in zip(prompts, results, (2, 3, 4)):
        alone = engine.generate(input_ids=prompt, sampling_params={**GREEDY, "max_new_tokens": k})
        assert result["output_ids"] == list(alone.output_ids)
    single = http.post("/generate", json={"input_ids": [5, 6, 7], "sampling_params": GREEDY}).json()
    assert isinstance(single, dict) and single["meta_info"]["prompt_tokens"] == 3


def test_n_samples_become_a_list_that_shares_the_prompt(http):
    body = {"text": "w20 w21 w22 w23", "sampling_params": {"max_new_tokens": 8, "temperature": 1.0, "n": 3,
                                                           "seed": 7, "ignore_eos": True}, "rid": "many"}
    first = http.post("/generate", json=body).json()
    assert isinstance(first, list) and len(first) == 3
    assert [x["meta_info"]["id"] for x in first] == ["many-0", "many-1", "many-2"]
    assert len({tuple(x["output_ids"]) for x in first}) > 1  # seeds differ per sample
    again = http.post("/generate", json=body).json()
    assert [x["output_ids"] for x in again] == [x["output_ids"] for x in first]  # and are reproducible
    assert all(x["meta_info"]["cached_tokens"] >= 3 for x in again)  # the prompt stayed in the radix cache


def test_the_exact_bodies_sglang_frontend_sends(http):
    prefix = "w1 w2 w3 w4 w5"
    gen = {"text": prefix, "sampling_params": {
        "skip_special_tokens": True, "spaces_between_special_tokens": True, "max_new_tokens": 5,
        "min_new_tokens": 0, "n": 1, "stop": ["\n", "<|im_end|>"], "stop_token_ids": [], "stop_regex": [],
        "temperature": 0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
        "presence_penalty": 0.0, "ignore_eos": False, "regex": None, "json_schema": None}}
    r = http.post("/generate", json=gen)
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["finish_reason"]["type"] in ("stop", "length")

    precache = http.post("/generate", json={"text": prefix, "sampling_params": {"max_new_tokens": 0}})
    assert precache.status_code == 200, precache.text
    assert precache.json()["output_ids"] == [] and precache.json()["meta_info"]["completion_tokens"] == 0

    choices = [" w6", " w7 w8", " w9"]
    select = {"text": [prefix + c for c in choices], "sampling_params": {"max_new_tokens": 0, "temperature": 0},
              "return_logprob": True, "return_text_in_logprobs": True, "logprob_start_len": 5 - 2}
    r = http.post("/generate", json=select)
    assert r.status_code == 200, r.text
    results = r.json()
    assert len(results) == 3
    for choice, result in zip(choices, results):
        lps = result["meta_info"]["input_token_logprobs"]
        words = (prefix + choice).split()
        assert len(lps) == len(words) - 3
        assert lps[0][0] is None and all(isinstance(lp, float) and lp <= 0 for lp, _, _ in lps[1:])
        assert [text for _, _, text in lps] == words[3:]
        assert result["meta_info"]["output_token_logprobs"] == []
        assert result["meta_info"]["cached_tokens"] >= 3  # the precached prefix, up to logprob_start_len


def test_logprobs_with_top_alternatives(http):
    r = http.post("/generate", json={
        "text": "w3 w4 w5 w6", "sampling_params": GREEDY, "return_logprob": True, "logprob_start_len": 0,
        "top_logprobs_num": 3, "return_text_in_logprobs": True})
    meta = r.json()["meta_info"]
    assert [e[1] for e in meta["input_token_logprobs"]] == [3, 4, 5, 6]
    assert [e[1] for e in meta["output_token_logprobs"]] == r.json()["output_ids"]
    assert len(meta["input_top_logprobs"]) == 4 and meta["input_top_logprobs"][0] is None
    assert len(meta["output_top_logprobs"]) == 6
    for (lp, token, _), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert len(top) == 3 and top[0][1] == token and abs(top[0][0] - lp) < 1e-4  # greedy picks the top one
        assert top[0][0] >= top[1][0] >= top[2][0]


def test_token_ids_logprob_at_every_position(http):
    listed = [7, 9]
    r = http.post("/generate", json={
        "text": "w3 w4 w5", "sampling_params": GREEDY, "return_logprob": True, "logprob_start_len": 0,
        "top_logprobs_num": 1, "token_ids_logprob": listed})
    meta = r.json()["meta_info"]
    assert meta["input_token_ids_logprobs"][0] is None and len(meta["input_token_ids_logprobs"]) == 3
    assert len(meta["output_token_ids_logprobs"]) == 6
    for position in meta["input_token_ids_logprobs"][1:] + meta["output_token_ids_logprobs"]:
        assert [e[1] for e in position] == listed and all(e[0] <= 0 for e in position)
    # the listed logprobs come from the same distribution the output token and its top alternative do
    for (lp, token, _), top, position in zip(meta["output_token_logprobs"], meta["output_top_logprobs"],
                                             meta["output_token_ids_logprobs"]):
        assert top[0][0] >= max(e[0] for e in position) - 1e-5
        if token in listed:
            assert abs(position[listed.index(token)][0] - lp) < 1e-4
    # with no new tokens, the one output position is the distribution after the prompt
    prefill = http.post("/generate", json={
        "text": "w3 w4 w5", "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
        "token_ids_logprob": [[r.json()["output_ids"][0]]]}).json()["meta_info"]
    ((after_prompt,),) = prefill["output_token_ids_logprobs"]
    assert abs(after_prompt[0] - meta["output_token_logprobs"][0][0]) < 1e-4
    bad = http.post("/generate", json={"text": "w3", "return_logprob": True, "token_ids_logprob": [10**9]})
    assert bad.status_code == 400 and "token_ids_logprob" in bad.text


def test_streaming_sends_cumulative_chunks_then_done(http):
    body = {"text": "w1 w2 w3", "sampling_params": GREEDY, "stream": True}
    with http.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) >= 2
    for earlier, later in zip(chunks, chunks[1:]):
        assert later["text"].startswith(earlier["text"])
        assert later["output_ids"][: len(earlier["output_ids"])] == earlier["output_ids"]
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    final = chunks[-1]
    plain = http.post("/generate", json={**body, "stream": False}).json()
    assert final["text"] == plain["text"] and final["output_ids"] == plain["output_ids"]
    assert final["meta_info"]["finish_reason"] == {"type": "length", "length": 6}


def test_streamed_text_never_takes_back_a_partial_stop_string(http, oai, model_name):
    words = http.post("/generate", json={"text": "w1 w2 w3", "sampling_params": GREEDY}).json()["text"].split()
    stop = f"{words[1]} {words[2][:2]}"  # begins with the second word, ends inside the third
    body = {"text": "w1 w2 w3", "stream": True, "sampling_params": {**GREEDY, "stop": stop}}
    with http.stream("POST", "/generate", json=body) as r:
        chunks = sse(r)[:-1]
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts
    assert texts[-1] == words[0] + " "
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    streamed = oai.completions.create(model=model_name, prompt="w1 w2 w3", max_tokens=6, temperature=0, stop=stop,
                                      stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed) == words[0] + " "


def test_each_streamed_chunk_carries_the_logprobs_of_the_tokens_it_adds(http):
    words = http.post("/generate", json={"text": "w1 w2 w3", "sampling_params": GREEDY}).json()["text"].split()
    stop = f"{words[2]} {words[3][:2]}"  # the text is held back while the output could be the stop's start
    body = {"text": "w1 w2 w3", "sampling_params": {**GREEDY, "stop": stop}, "return_logprob": True,
            "top_logprobs_num": 2, "token_ids_logprob": [7, 9], "return_text_in_logprobs": True}
    with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        chunks = sse(r)[:-1]
    per_chunk = {key: [] for key in ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")}
    previous = 0
    for chunk in chunks:
        meta = chunk["meta_info"]
        assert meta["output_token_logprobs_length"] == meta["completion_tokens"] == len(chunk["output_ids"])
        assert [e[1] for e in meta["output_token_logprobs"]] == chunk["output_ids"][previous:]
        for key, entries in per_chunk.items():
            assert len(meta[key]) == meta["completion_tokens"] - previous, key
            entries.extend(meta[key])
        previous = meta["completion_tokens"]
    held = [b for a, b in zip(chunks, chunks[1:]) if a["text"] == b["text"]]
    assert held and all(b["meta_info"]["output_token_logprobs"] for b in held)  # held-back text, entries sent
    plain = http.post("/generate", json=body).json()["meta_info"]
    assert per_chunk == {key: plain[key] for key in per_chunk}
    assert chunks[-1]["meta_info"]["input_token_logprobs"] == plain["input_token_logprobs"] == []


def test_batch_streams_carry_their_index(http):
    body = {"text": ["w1 w2", "w3 w4 w5"], "sampling_params": [{**GREEDY, "max_new_tokens": 3},
                                                              {**GREEDY, "max_new_tokens": 5}], "stream": True}
    with http.stream("POST", "/generate", json=body) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    finals = {c["index"]: c for c in events[:-1] if c["meta_info"]["finish_reason"] is not None}
    assert sorted(finals) == [0, 1]
    assert finals[0]["meta_info"]["completion_tokens"] == 3 and finals[1]["meta_info"]["completion_tokens"] == 5
    with http.stream("POST", "/generate", json={**body, "return_logprob": True}) as r:
        chunks = sse(r)[:-1]
    for index in (0, 1):  # each prompt's chunks carry that prompt's new entries
        logprobs = [e for c in chunks if c["index"] == index for e in c["meta_info"]["output_token_logprobs"]]
        assert [e[1] for e in logprobs] == finals[index]["output_ids"]


def test_info_health_and_flush_routes(http, engine):
    for path in ("/get_model_info", "/model_info"):
        info = http.get(path).json()
        assert info["model_path"] == engine.model_path and info["is_generation"] is True
        assert info["model_type"] == "llama" and info["architectures"] == ["LlamaForCausalLM"]
        assert "tokenizer_path" in info
    for path in ("/get_server_info", "/server_info"):
        info = http.get(path).json()
        assert info["model_path"] == engine.model_path and info["max_running_requests"] == 16
        assert "version" in info
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200
    wait_idle(engine)
    for method in ("GET", "POST"):
        r = http.request(method, "/flush_cache")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def _start_long_stream(url: str, body: dict) -> tuple[threading.Thread, list, threading.Event]:
    """Stream ``body`` from a thread; returns it, the events list it fills, and an event set at the first chunk."""
    events: list = []
    started = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=120) as client, client.stream("POST", url + "/generate", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    payload = line[len("data: "):]
                    events.append(payload if payload == "[DONE]" else json.loads(payload))
                    started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, events, started


def test_flush_refused_while_busy_and_abort_request_ends_a_stream(server, http, engine):
    body = {"text": "w1 w2 w3", "rid": "long-one", "stream": True,
            "sampling_params": {"max_new_tokens": 1500, "temperature": 0, "ignore_eos": True}}
    thread, events, started = _start_long_stream(server.url, body)
    assert started.wait(30)
    busy = http.post("/flush_cache")
    assert busy.status_code == 400 and "running" in busy.text
    twin = http.post("/generate", json={"text": "w1", "rid": "long-one"})
    assert twin.status_code == 400 and "already in use" in twin.json()["error"]["message"]
    assert http.post("/abort_request", json={"rid": "long-one"}).json() == {"success": True}
    thread.join(30)
    assert not thread.is_alive() and events[-1] == "[DONE]"
    assert events[-2]["meta_info"]["finish_reason"]["type"] == "abort"
    assert events[-2]["meta_info"]["completion_tokens"] < 1500
    wait_idle(engine)
    assert http.post("/flush_cache").status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_request(server, engine):
    aborted = metric(engine, "requests_total", finish_reason="abort")
    body = {"text": "w7 w8 w9", "stream": True,
            "sampling_params": {"max_new_tokens": 1800, "temperature": 0, "ignore_eos": True}}
    client = httpx.Client(timeout=60)
    with client.stream("POST", server.url + "/generate", json=body) as r:
        lines = r.iter_lines()
        seen = [line for _, line in zip(range(4), lines)]  # two chunks and their blank lines
        assert seen[0].startswith("data: ")
    client.close()
    stats = wait_idle(engine, timeout=10)
    assert stats["running"] == 0
    assert metric(engine, "requests_total", finish_reason="abort") == aborted + 1


def test_a_client_that_gives_up_on_a_plain_request_frees_it_too(server, engine):
    aborted = metric(engine, "requests_total", finish_reason="abort")
    body = {"text": "w7 w8", "sampling_params": {"max_new_tokens": 1800, "temperature": 0, "ignore_eos": True}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/generate", json=body, timeout=0.5)
    wait_idle(engine)
    assert metric(engine, "requests_total", finish_reason="abort") == aborted + 1


@pytest.mark.parametrize("body, message", [
    (b'{"text": "w1", "sampling_params": {"max_new_tokens": -1}}', "max_new_tokens"),
    (b'{"text": "w1", "sampling_params": {"top_p": 1.5}}', "top_p"),
    (b'{"text": "w1", "sampling_params": {"temperatur": 0.5}}', "temperatur"),
    (b'{"text": "w1", "sampling_params": {"max_new_tokens": "5"}}', "max_new_tokens"),
    (b'{"text": "w1", "sampling_params": [{}, {}]}', "sampling_params"),
    (b'{"text": "w1", "stream": "yes"}', "stream"),
    (b'{"text": 42}', "text"),
    (b'{"input_ids": [1, "two"]}', "input_ids"),
    (b'{"input_ids": [1, 999999]}', "input_ids"),
    (b'{"text": "w1", "input_ids": [1]}', "exactly one"),
    (b'{"sampling_params": {}}', "exactly one"),
    (b'{"text": ""}', "empty"),
    (b'{"text": "w1", "logprob_start_len": 5, "return_logprob": true}', "logprob_start_len"),
    (b'{"text": "w1", "image_data": "aGVsbG8="}', "image_data"),
    (json.dumps({"text": " ".join(["w1"] * 2100)}).encode(), "context"),
    (b'{"text": "w1"', "not valid JSON"),
    (b'\xff\xfe{"text": "w1"}', "UTF-8"),
    (b'["w1"]', "JSON object"),
    (b'{"text": "w1", "sampling_params": {"temperature": NaN}}', "NaN"),
    (b"", "empty"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_native_requests_are_400_with_a_message(http, body, message):
    r = http.post("/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and "Traceback" not in r.text
    assert http.post("/generate", json={"text": "w1", "sampling_params": {"max_new_tokens": 1}}).status_code == 200


def test_unknown_top_level_keys_are_ignored_and_unknown_routes_are_404(http):
    r = http.post("/generate", json={"text": "w1", "sampling_params": {"max_new_tokens": 2}, "whatever": 1,
                                     "priority": 3})
    assert r.status_code == 200
    missing = http.get("/no/such/route")
    assert missing.status_code == 404 and "error" in missing.json()
    assert http.get("/generate").status_code == 405


def test_metrics_count_what_the_server_did(http, engine):
    before = http.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    prompt, generated = metric(engine, "prompt_tokens_total"), metric(engine, "generation_tokens_total")
    lengths = metric(engine, "requests_total", finish_reason="length")
    http.post("/generate", json={"text": "w1 w2 w3 w4", "sampling_params": GREEDY})
    text = http.get("/metrics").text
    assert metric(engine, "prompt_tokens_total") == prompt + 4
    assert metric(engine, "generation_tokens_total") == generated + 6
    assert metric(engine, "requests_total", finish_reason="length") == lengths + 1
    assert 'sglang_dsl_requests_total{finish_reason="length"}' in text
    assert "sglang_dsl_time_to_first_token_seconds_count" in text
    assert "sglang_dsl_kv_cache_usage" in text and "sglang_dsl_num_running_requests" in text


# --------------------------------------------------------------------------------------------- OpenAI API

def test_models_are_listed_and_unknown_models_are_404(oai, model_name):
    assert [m.id for m in oai.models.list().data] == [model_name]
    assert oai.models.retrieve(model_name).id == model_name
    with pytest.raises(openai.NotFoundError) as err:
        oai.completions.create(model="gpt-nonexistent", prompt="w1", max_tokens=1)
    assert err.value.body["code"] == "model_not_found"


def test_completions_match_native_generation(oai, http, model_name):
    native = http.post("/generate", json={"text": "w1 w2 w3", "sampling_params": GREEDY}).json()
    c = oai.completions.create(model=model_name, prompt="w1 w2 w3", max_tokens=6, temperature=0,
                               extra_body={"ignore_eos": True})
    assert c.object == "text_completion" and c.id.startswith("cmpl-")
    assert c.choices[0].text == native["text"] and c.choices[0].finish_reason == "length"
    assert c.usage.prompt_tokens == 3 and c.usage.completion_tokens == 6 and c.usage.total_tokens == 9
    assert c.usage.prompt_tokens_details.cached_tokens >= 2


def test_completions_batches_token_prompts_n_echo_and_logprobs(oai, model_name):
    batch = oai.completions.create(model=model_name, prompt=["w1 w2", "w3 w4 w5"], max_tokens=3, n=2,
                                   temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text  # greedy: both samples of prompt 0 agree
    assert batch.usage.prompt_tokens == 5 and batch.usage.completion_tokens == 12

    ids = oai.completions.create(model=model_name, prompt=[1, 2], max_tokens=3, temperature=0,
                                 extra_body={"ignore_eos": True})
    assert ids.choices[0].text == batch.choices[0].text  # "w1 w2" is [1, 2]

    echoed = oai.completions.create(model=model_name, prompt="w1 w2", max_tokens=3, temperature=0, echo=True,
                                    logprobs=2, extra_body={"ignore_eos": True})
    choice = echoed.choices[0]
    assert choice.text.startswith("w1 w2") and choice.text.endswith(ids.choices[0].text)
    assert choice.logprobs.tokens[:2] == ["w1", "w2"] and len(choice.logprobs.tokens) == 5
    assert choice.logprobs.token_logprobs[0] is None and all(lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs[1:])
    assert choice.logprobs.text_offset == sorted(choice.logprobs.text_offset)


def test_completion_stream_adds_up_to_the_plain_answer(oai, model_name):
    plain = oai.completions.create(model=model_name, prompt="w9 w8 w7", max_tokens=8, temperature=0,
                                   extra_body={"ignore_eos": True})
    stream = oai.completions.create(model=model_name, prompt="w9 w8 w7", max_tokens=8, temperature=0, stream=True,
                                    stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_chat_completion_uses_the_chat_template(oai, engine, model_name):
    messages = [{"role": "system", "content": "w10 w11"}, {"role": "user", "content": "w12 w13"}]
    c = oai.chat.completions.create(model=model_name, messages=messages, max_tokens=5, temperature=0,
                                    logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    prompt = engine.tokenizer.apply_chat_template(messages)
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    expected = engine.generate(input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 5})
    choice = c.choices[0]
    assert c.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content == expected.text and choice.finish_reason == "length"
    assert c.usage.prompt_tokens == len(ids) and c.usage.completion_tokens == 5
    assert [t.token for t in choice.logprobs.content] == expected.text.split()
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in choice.logprobs.content)
    again = oai.chat.completions.create(model=model_name, messages=messages, max_tokens=5, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert again.usage.prompt_tokens_details.cached_tokens >= len(ids) - 1


def test_chat_stream_sends_the_role_then_the_content(oai, model_name):
    kwargs = dict(model=model_name, messages=[{"role": "user", "content": "w40 w41"}], max_completion_tokens=6,
                  temperature=0, extra_body={"ignore_eos": True})
    plain = oai.chat.completions.create(**kwargs)
    chunks = list(oai.chat.completions.create(**kwargs, stream=True, n=2, stream_options={"include_usage": True}))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(ch.delta.content or "" for ch in mine) == plain.choices[0].message.content
        assert mine[-1].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []


def test_async_client_runs_requests_concurrently(server, model_name):
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        try:
            replies = await asyncio.gather(*[
                client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": f"w{i}"}],
                                               max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
                for i in range(6)])
            stream = await client.chat.completions.create(
                model=model_name, messages=[{"role": "user", "content": "w0"}], max_tokens=4, temperature=0,
                stream=True, extra_body={"ignore_eos": True})
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
        finally:
            await client.close()
        assert streamed == replies[0].choices[0].message.content
        return [r.choices[0].message.content for r in replies]

    texts = asyncio.run(main())
    assert len(texts) == 6 and all(len(t.split()) == 4 for t in texts)


@pytest.mark.parametrize("kwargs, param", [
    (dict(max_tokens=-1), "max_tokens"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature="hot"), "temperature"),
    (dict(n=0), "n"),
    (dict(stop=[1, 2]), "stop"),
    (dict(logprobs=True, top_logprobs=50), "top_logprobs"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "wizard", "content": "w1"}]), "messages"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages"),
    (dict(messages=[{"role": "user", "content": " ".join(["w1"] * 2100)}]), None),
    (dict(extra_body={"regex": "[0-9]+"}), None),
])
def test_bad_chat_requests_are_400_in_openai_shape(oai, model_name, kwargs, param):
    args = dict(model=model_name, messages=[{"role": "user", "content": "w1"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(**{**args, **kwargs})
    error = err.value.body
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert param in error["message"]
    assert oai.chat.completions.create(**args).choices[0].message.role == "assistant"


def test_bad_completion_requests_are_400(oai, http, model_name):
    with pytest.raises(openai.BadRequestError, match="prompt"):
        oai.completions.create(model=model_name, prompt=[1.5, 2.5], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        oai.completions.create(model=model_name, prompt="w1", max_tokens=2, logprobs=99)
    r = http.post("/v1/completions", content=b"\xc3\x28", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                  headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_a_disconnected_openai_stream_is_aborted(server, engine, model_name):
    aborted = metric(engine, "requests_total", finish_reason="abort")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "w1"}],
                                            max_tokens=1800, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    client.close()
    wait_idle(engine)
    assert metric(engine, "requests_total", finish_reason="abort") == aborted + 1


def test_an_aborted_openai_request_reports_an_error(oai, http, model_name):
    stream = oai.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "w1"}],
                                         max_tokens=1800, temperature=0, stream=True,
                                         extra_body={"ignore_eos": True, "rid": "chat-to-abort"})
    chunks = iter(stream)
    next(chunks)
    assert http.post("/abort_request", json={"rid": "chat-to-abort"}).json() == {"success": True}
    with pytest.raises(openai.APIError, match="abort"):
        for _ in chunks:
            pass


# --------------------------------------------------------------------------------------------- API key

def test_api_key_guards_every_route_but_health(engine, model_name):
    with BackgroundServer(create_app(engine, api_key="sekrit")) as s, httpx.Client(base_url=s.url) as http:
        assert http.get("/health").status_code == 200
        for method, path in [("GET", "/get_model_info"), ("POST", "/generate"), ("GET", "/metrics"),
                             ("GET", "/v1/models"), ("GET", "/health_generate"), ("POST", "/flush_cache")]:
            r = http.request(method, path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        wrong = http.get("/get_model_info", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = http.post("/generate", headers={"Authorization": "Bearer sekrit"},
                       json={"text": "w1", "sampling_params": {"max_new_tokens": 1}})
        assert ok.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="sekrit", max_retries=0)
        assert good.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "w1"}],
                                            max_tokens=2).choices


# --------------------------------------------------------------------------------------------- CLI

def test_serve_command_builds_runtime_args(monkeypatch):
    import runtime.server
    from sglang_dsl.cli import main

    calls = []
    monkeypatch.setattr(runtime.server, "serve", lambda args, **kw: calls.append((args, kw)))
    assert main(["serve", "--model", "/m", "--port", "31000", "--api-key", "k", "--page-size", "4",
                 "--max-running-requests", "8", "--schedule-policy", "fcfs", "--disable-radix-cache",
                 "--chunked-prefill-size", "256"]) == 0
    args, kw = calls[0]
    assert (args.model, args.page_size, args.max_running_requests, args.schedule_policy) == ("/m", 4, 8, "fcfs")
    assert args.disable_radix_cache is True and args.chunked_prefill_size == 256
    assert args.dtype == RuntimeArgs().dtype  # options not given keep their defaults
    assert kw["port"] == 31000 and kw["api_key"] == "k" and kw["host"] == "127.0.0.1"


# --------------------------------------------------------------------------------------------- SmolLM2

@pytest.fixture(scope="module")
def smollm2_server(smollm2_source):
    with Engine(RuntimeArgs(model=str(smollm2_source.path), device="cpu")) as smol:
        with BackgroundServer(create_app(smol, served_model_name="smollm2-135m")) as s:
            yield s


@pytest.mark.slow
def test_smollm2_answers_paris_over_both_apis(smollm2_server):
    client = openai.OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="smollm2-135m", messages=question, max_tokens=20, temperature=0)
    assert "Paris" in reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2-135m", messages=question, max_tokens=20, temperature=0, stream=True) if c.choices)
    assert streamed == reply.choices[0].message.content
    # The native API with the body SGLang's frontend sends for gen(stop="\n", temperature=0).
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    r = httpx.post(smollm2_server.url + "/generate", timeout=120, json={"text": prompt, "sampling_params": {
        "skip_special_tokens": True, "spaces_between_special_tokens": True, "max_new_tokens": 20,
        "min_new_tokens": 0, "n": 1, "stop": ["\n", "<|im_end|>"], "stop_token_ids": [], "stop_regex": [],
        "temperature": 0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
        "presence_penalty": 0.0, "ignore_eos": False, "regex": None, "json_schema": None}})
    assert r.status_code == 200 and "Paris" in r.json()["text"]
