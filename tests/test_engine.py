"""The engine on a tiny random model: scheduling must never change what greedy decoding produces, memory must
always balance, and every sampling and output option must do what it says."""

from __future__ import annotations

import asyncio

import pytest
import torch

from runtime.args import RuntimeArgs
from runtime.engine import Engine
from runtime.model_runner import ModelRunner
from runtime.requests import InvalidRequestError
from runtime.sequences import Sequences
from tiny_models import make_hf_model, write_word_tokenizer

GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    make_hf_model("llama", directory, max_position_embeddings=1024)
    write_word_tokenizer(directory)
    return directory


def engine_for(checkpoint, **overrides) -> Engine:
    args = dict(model=str(checkpoint), device="cpu", dtype="float32", cpu_kv_tokens=8192, max_running_requests=16)
    return Engine(RuntimeArgs(**{**args, **overrides}))


@pytest.fixture(scope="module")
def engine(checkpoint):
    with engine_for(checkpoint) as e:
        yield e


@pytest.fixture(autouse=True)
def integrity(request):
    yield
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").check_integrity()


def prompts(n: int, shared: int = 40, own: int = 7, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, 256, (shared,), generator=g).tolist()
    return [head + torch.randint(3, 256, (own + i,), generator=g).tolist() for i in range(n)]


def greedy_ids(engine: Engine, batch: list[list[int]], **params) -> list[tuple[int, ...]]:
    return [o.output_ids for o in engine.generate(input_ids=batch, sampling_params={**GREEDY, **params})]


@pytest.mark.parametrize(
    "variant",
    [dict(disable_radix_cache=True), dict(chunked_prefill_size=5), dict(chunked_prefill_size=3, page_size=4),
     dict(schedule_policy="fcfs"), dict(schedule_policy="dfs-weight"), dict(schedule_policy="priority"),
     dict(max_prefill_tokens=16)],
    ids=["no-radix", "chunk5", "chunk3-page4", "fcfs", "dfs-weight", "priority", "small-prefill-budget"],
)
def test_greedy_outputs_do_not_depend_on_scheduling(engine, checkpoint, variant):
    batch = prompts(6)
    expected = greedy_ids(engine, batch)
    with engine_for(checkpoint, **variant) as other:
        assert greedy_ids(other, batch) == expected
        other.check_integrity()


def test_request_alone_equals_request_in_a_busy_batch(engine):
    batch = prompts(8, seed=1)
    together = greedy_ids(engine, batch)
    assert [greedy_ids(engine, [p])[0] for p in batch] == together


def test_cached_tokens_show_prefix_reuse(engine):
    batch = prompts(2, shared=500, own=5, seed=2)
    first = engine.generate(input_ids=batch[0], sampling_params=GREEDY)
    second = engine.generate(input_ids=batch[1], sampling_params=GREEDY)
    assert first.cached_tokens < 500 <= second.cached_tokens
    assert second.prompt_tokens - second.cached_tokens <= 5 + 1


def test_retraction_under_kv_pressure_keeps_outputs(engine, checkpoint):
    batch = prompts(6, shared=10, own=12, seed=3)
    params = {"max_new_tokens": 60}
    expected = greedy_ids(engine, batch, **params)
    with engine_for(checkpoint, cpu_kv_tokens=200, new_token_ratio=0.05, min_new_token_ratio=0.05) as tight:
        outputs = tight.generate(input_ids=batch, sampling_params={**GREEDY, **params})
        tight.check_integrity()
    assert [o.output_ids for o in outputs] == expected
    assert sum(o.num_retractions for o in outputs) > 0


def test_abort_midway_frees_everything(engine):
    async def run():
        request = engine.make_request(input_ids=prompts(1, seed=4)[0], stream=True,
                                      sampling_params={"max_new_tokens": 500, "ignore_eos": True, "temperature": 0})
        seen = 0
        async for output in engine.generate_stream(request):
            seen += 1
            if seen == 5:
                assert engine.abort(request.rid)
            if output.finished:
                return output

    final = asyncio.run(run())
    assert final.finish.type == "abort" and final.completion_tokens < 500
    assert engine.stats()["running"] == 0


def test_leaving_a_stream_early_aborts_the_request(engine):
    async def run():
        request = engine.make_request(input_ids=prompts(1, seed=5)[0], stream=True,
                                      sampling_params={"max_new_tokens": 500, "ignore_eos": True})
        async for output in engine.generate_stream(request):
            if len(output.output_ids) >= 3:
                break

    asyncio.run(run())
    for _ in range(100):
        if engine.stats()["running"] == 0:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert engine.stats()["running"] == 0


def test_streaming_is_cumulative_and_ends_like_generate(engine):
    prompt = prompts(1, seed=6)[0]

    async def run():
        request = engine.make_request(input_ids=prompt, stream=True, sampling_params=GREEDY)
        return [o async for o in engine.generate_stream(request)]

    chunks = asyncio.run(run())
    assert len(chunks) > 1 and chunks[-1].finished and not any(c.finished for c in chunks[:-1])
    for earlier, later in zip(chunks, chunks[1:]):
        assert later.text.startswith(earlier.text)
        assert later.output_ids[: len(earlier.output_ids)] == earlier.output_ids
    assert chunks[-1].output_ids == engine.generate(input_ids=prompt, sampling_params=GREEDY).output_ids


def test_n_samples_share_the_prompt(engine):
    outputs = engine.generate(input_ids=prompts(1, shared=60, seed=7)[0], sampling_params={**GREEDY, "n": 3})
    assert len(outputs) == 3
    assert outputs[0].output_ids == outputs[1].output_ids == outputs[2].output_ids
    assert max(o.cached_tokens for o in outputs) >= 60


def test_stop_strings_are_trimmed_also_across_tokens(engine):
    prompt = prompts(1, seed=8)[0]
    full = engine.generate(input_ids=prompt, sampling_params=GREEDY)
    words = full.text.split()
    stop = f"{words[3]} {words[4]}"  # spans two tokens
    cut = engine.generate(input_ids=prompt, sampling_params={**GREEDY, "stop": [stop]})
    assert cut.finish.type == "stop" and cut.finish.matched == stop
    assert cut.text == full.text[: full.text.index(stop)]


def test_stop_token_ids_and_min_new_tokens(engine):
    prompt = prompts(1, seed=9)[0]
    full = engine.generate(input_ids=prompt, sampling_params=GREEDY).output_ids
    stop_token = full[2]
    first = full.index(stop_token)
    cut = engine.generate(input_ids=prompt, sampling_params={**GREEDY, "stop_token_ids": [stop_token]})
    assert cut.output_ids == full[:first] and cut.finish.matched == stop_token
    scored = engine.generate(input_ids=prompt, sampling_params={**GREEDY, "stop_token_ids": [stop_token]},
                             return_logprob=True)
    assert len(scored.output_token_logprobs) == scored.completion_tokens == first  # the stop token is no output
    longer = engine.generate(input_ids=prompt, sampling_params={**GREEDY, "stop_token_ids": [stop_token],
                                                                "min_new_tokens": first + 2})
    assert len(longer.output_ids) >= first + 2


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(engine):
    batch = prompts(4, seed=10)
    params = {"temperature": 1.0, "max_new_tokens": 12, "ignore_eos": True, "seed": 1234}
    alone = engine.generate(input_ids=batch[2], sampling_params=params).output_ids
    in_batch = engine.generate(input_ids=batch, sampling_params=params)[2].output_ids
    other_seed = engine.generate(input_ids=batch[2], sampling_params={**params, "seed": 99}).output_ids
    assert alone == in_batch and alone != other_seed


def test_logprobs_match_a_direct_forward_pass(engine, checkpoint):
    prompt = prompts(1, seed=11)[0]
    out = engine.generate(input_ids=prompt, sampling_params={**GREEDY, "max_new_tokens": 4}, return_logprob=True,
                          logprob_start_len=3, top_logprobs_num=2)
    assert len(out.input_token_logprobs) == len(prompt) - 3 and out.input_token_logprobs[0][0] is None
    assert len(out.output_token_logprobs) == 4
    runner = ModelRunner(RuntimeArgs(model=str(checkpoint), device="cpu", dtype="float32", cpu_kv_tokens=512))
    with Sequences(runner, 1) as seqs:
        logits = seqs.extend([0], [prompt + list(out.output_ids)], all_logits=True)
    logprobs = torch.log_softmax(logits, -1)
    full = prompt + list(out.output_ids)
    for i, (lp, token, _) in enumerate(out.input_token_logprobs[1:], start=4):
        assert token == full[i] and lp == pytest.approx(float(logprobs[i - 1, token]), abs=1e-4)
    for j, ((lp, token, _), top) in enumerate(zip(out.output_token_logprobs, out.output_top_logprobs)):
        position = len(prompt) + j - 1
        assert lp == pytest.approx(float(logprobs[position, token]), abs=1e-4)
        assert top[0][1] == token  # greedy picks the most likely token
        assert len(top) == 2 and top[0][0] >= top[1][0]


def test_max_new_tokens_zero_only_prefills_and_caches(engine):
    prompt = prompts(1, shared=50, seed=12)[0]
    warm = engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": 0})
    assert warm.output_ids == () and warm.finish.type == "length"
    assert engine.generate(input_ids=prompt, sampling_params=GREEDY).cached_tokens >= len(prompt) - 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=[]), "empty"),
        (dict(input_ids=[1] * 2000), "context holds"),
        (dict(input_ids=[999999]), "token ids"),
        (dict(text="w1", input_ids=[1]), "exactly one"),
        (dict(input_ids=[1, 2], sampling_params={"top_p": 1.5}), "top_p"),
        (dict(input_ids=[1, 2], sampling_params={"max_new_tokens": -1}), "max_new_tokens"),
        (dict(input_ids=[1, 2], sampling_params={"bogus": 1}), "bogus"),
        (dict(input_ids=[1, 2], logprob_start_len=5), "logprob_start_len"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(engine, kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        engine.make_request(**kwargs)


def test_flush_cache(engine):
    engine.generate(input_ids=prompts(1, seed=13)[0], sampling_params=GREEDY)
    assert engine.stats()["cached_tokens"] > 0
    assert engine.flush_cache()
    assert engine.stats()["cached_tokens"] == 0
