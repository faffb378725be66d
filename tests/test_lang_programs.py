"""SGLang's frontend test programs (``sglang/test/test_programs.py``), unchanged but for ``import sglang_dsl as
sgl``, on the embedded SmolLM2-135M-Instruct through one shared local runtime.

Token budgets are small (the CPU is slow). Assertions that need a model larger than 135M are relaxed; each such
place says so in a comment. Tests that need constrained decoding (regex, json_schema, dtype) skip while the
runtime answers those with "not supported yet", and check that the refusal names the gen node."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest

import sglang_dsl as sgl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime(smollm2_source):
    rt = sgl.Runtime(model=str(smollm2_source.path), device="cpu", max_total_tokens=16384)
    previous = sgl.global_config.default_backend
    sgl.set_default_backend(rt)
    yield rt
    sgl.set_default_backend(previous)
    rt.shutdown()


@pytest.fixture(scope="module")
def constrained(runtime):
    """Skip unless the runtime enforces regex constraints; while it does not, its refusal must name the node."""
    @sgl.function
    def probe(s):
        s += "Number: " + sgl.gen("n", max_tokens=2, regex="[0-9]+")

    try:
        probe.run()
    except sgl.ProgramError as err:
        assert "program 'probe', node gen('n')" in str(err)
        pytest.skip(f"the runtime does not enforce constraints yet: {err}")


def test_few_shot_qa(runtime):
    @sgl.function
    def few_shot_qa(s, question):
        s += "The following are questions with answers.\n\n"
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: What is the capital of Germany?\nA: Berlin\n"
        s += "Q: What is the capital of Italy?\nA: Rome\n"
        s += "Q: " + question + "\n"
        s += "A:" + sgl.gen("answer", stop="\n", temperature=0, max_tokens=8)

    ret = few_shot_qa.run(question="What is the capital of the United States?")
    # SGLang asserts "washington"; SmolLM2-135M answers "New York" here, so only the shape is checked.
    assert ret["answer"].strip() and "\n" not in ret["answer"]
    rets = few_shot_qa.run_batch([{"question": "What is the capital of Japan?"},
                                  {"question": "What is the capital of the United Kingdom?"},
                                  {"question": "What is the capital city of China?"}], temperature=0.1)
    answers = [x["answer"].strip().lower() for x in rets]
    assert answers == ["tokyo", "london", "beijing"]


def test_mt_bench(runtime):
    @sgl.function
    def answer_mt_bench(s, question_1, question_2):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(question_1)
        s += sgl.assistant(sgl.gen("answer_1"))
        with s.user():
            s += question_2
        with s.assistant():
            s += sgl.gen("answer_2")

    ret = answer_mt_bench.run(question_1="Who are you?", question_2="Could you tell me a joke?",
                              temperature=0.7, max_new_tokens=12)
    assert len(ret.messages()) == 5
    assert [m["role"] for m in ret.messages()] == ["system", "user", "assistant", "user", "assistant"]
    assert ret.text().startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user")


def test_select(runtime):
    @sgl.function
    def true_or_false(s, statement):
        s += "Determine whether the statement below is True, False, or Unknown.\n\n"
        s += "Statement: The capital of France is Pairs.\nAnswer: True\n\n"
        s += "Statement: " + statement + "\n"
        s += "Answer:" + sgl.select("answer", ["True", "False", "Unknown"])

    for statement in ["The capital of Germany is Berlin.", "The capital of Spain is Beijing.",
                      "The capital of France is Paris."]:
        ret = true_or_false.run(statement=statement)
        # SGLang's SRT suite checks membership only (check_answer=False); so do we.
        assert ret["answer"] in ["True", "False", "Unknown"]
        meta = ret.get_meta_info("answer")
        assert len(meta["normalized_prompt_logprobs"]) == 3
        assert all(len(tokens) >= 1 for tokens in meta["input_token_logprobs"])


def test_select_heals_the_token_boundary(runtime):
    @sgl.function
    def capital(s):
        s += "The capital of France is " + sgl.select("city", ["Paris", "London"])

    meta = capital.run().get_meta_info("city")
    # "is " + "Paris" tokenizes as "is" + " Paris": the prompt's trailing-space token is re-scored as part of the
    # choice, so each choice is scored on the tokens the model would really produce.
    assert ["".join(entry[2] for entry in tokens) for tokens in meta["input_token_logprobs"]] == [" Paris", " London"]
    assert capital.run()["city"] == "Paris"


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized], ids=lambda m: m.name)
def test_select_methods_and_temperature(runtime, method):
    @sgl.function
    def capital(s):
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant("The capital of France is" + sgl.select("city", [" Paris", " London", " Madrid"],
                                                                   choices_method=method))

    ret = capital.run()
    assert ret["city"] == " Paris"
    meta = ret.get_meta_info("city")
    # Only the choice's own tokens are scored: " Paris" is one token, and no prompt token leaks in.
    assert [entry[2] for entry in meta["input_token_logprobs"][0]] == [" Paris"]
    sampled = {capital.run(temperature=5.0)["city"] for _ in range(2)}  # select works at any temperature
    assert sampled <= {" Paris", " London", " Madrid"}


def test_decode_int(runtime, constrained):
    @sgl.function
    def decode_int(s):
        s += "The number of hours in a day is " + sgl.gen_int("hours") + "\n"
        s += "The number of days in a year is " + sgl.gen_int("days") + "\n"

    ret = decode_int.run(temperature=0, max_new_tokens=6)  # SGLang samples at 0.1, where SmolLM2 may say 366
    assert int(ret["hours"]) == 24 and int(ret["days"]) == 365


def test_decode_json_regex(runtime, constrained):
    @sgl.function
    def decode_json(s):
        from sglang_dsl.lang.params import DTYPE_REGEX

        s += "Generate a JSON object to describe the basic city information of Paris.\n"
        with s.var_scope("json_output"):
            s += "{\n"
            s += '  "name": ' + sgl.gen(regex=DTYPE_REGEX["str"][0]) + ",\n"
            s += '  "population": ' + sgl.gen(regex=DTYPE_REGEX["int"][0], stop=[" ", "\n"]) + ",\n"
            s += '  "area": ' + sgl.gen(regex=DTYPE_REGEX["int"][0], stop=[" ", "\n"]) + ",\n"
            s += '  "latitude": ' + sgl.gen(regex=DTYPE_REGEX["float"][0], stop=[" ", "\n"]) + "\n"
            s += "}"

    ret = decode_json.run(temperature=0.0, max_new_tokens=16)
    js_obj = json.loads(ret["json_output"])
    assert isinstance(js_obj["name"], str) and isinstance(js_obj["population"], int)


def test_dtype_gen(runtime, constrained):
    @sgl.function
    def dtype_gen(s):
        s += "Q: What is the full name of DNS?\n"
        s += "A: The full names is " + sgl.gen("str_res", dtype=str, stop="\n") + "\n"
        s += "Q: Which year was DNS invented?\n"
        s += "A: " + sgl.gen("int_res", dtype=int) + "\n"
        s += "Q: What is the value of pi?\n"
        s += "A: " + sgl.gen("float_res", dtype=float) + "\n"
        s += "Q: Is the sky blue?\n"
        s += "A: " + sgl.gen("bool_res", dtype=bool) + "\n"

    state = dtype_gen.run(max_new_tokens=16)
    int(state["int_res"]), float(state["float_res"])
    assert state["bool_res"] in ("True", "False")
    state["int_res"] = 5
    assert state["int_res"] == 5


def test_regex(runtime, constrained):
    regex = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"

    @sgl.function
    def regex_gen(s):
        s += "Q: What is the IP address of the Google DNS servers?\n"
        s += "A: " + sgl.gen("answer", temperature=0, regex=regex, max_tokens=16)

    assert re.match(regex, regex_gen.run()["answer"])


def test_constraints_are_carried_to_the_runtime(runtime):
    """A json_schema reaches the runtime: it either constrains the output or is refused with an error that names
    the program and the node."""
    @sgl.function
    def person(s):
        s += "A person as JSON: " + sgl.gen("person", json_schema={"type": "object"}, max_tokens=8)

    try:
        assert person.run()["person"].lstrip().startswith("{")
    except sgl.ProgramError as err:
        assert str(err).startswith("program 'person', node gen('person'): ")


def test_expert_answer(runtime):
    @sgl.function
    def expert_answer(s, question):
        s += "Question: " + question + "\n"
        s += "A good person to answer this question is" + sgl.gen("expert", stop=[".", "\n"], max_tokens=12)
        s += ".\n"
        s += "For example," + s["expert"] + " would answer that " + sgl.gen("answer", stop=".", max_tokens=16)
        s += "."

    ret = expert_answer.run(question="What is the capital of France?", temperature=0.1)
    # SGLang asserts "paris" in the text; SmolLM2-135M's expert rarely names it, so check the shape instead.
    assert ret.text().startswith("Question: What is the capital of France?\nA good person")
    assert ret["expert"] in ret.text() and ret.text().count(ret["expert"]) == 2


def test_tool_use(runtime):
    def calculate(expression):
        return f"{eval(expression)}"

    @sgl.function
    def tool_use(s, lhs, rhs):
        s += "Please perform computations using a calculator. You can use calculate(expression) to get the results.\n"
        s += "For example,\ncalculate(1+2)=3\ncalculate(3*4)=12\n"
        s += "Question: What is the product of " + str(lhs) + " and " + str(rhs) + "?\n"
        s += "Answer: The answer is calculate(" + sgl.gen("expression", stop=")", max_tokens=12) + ") = "
        with s.var_scope("answer"):
            s += calculate(s["expression"])

    lhs, rhs = 257, 983
    state = tool_use(lhs=lhs, rhs=rhs, temperature=0)
    assert int(state["answer"]) == lhs * rhs


def test_react(runtime):
    @sgl.function
    def react(s, question):
        s += """Question: Which country does the founder of Microsoft live in?
Thought 1: I need to search for the founder of Microsoft.
Action 1: Search [Founder of Microsoft].
Observation 1: The founder of Microsoft is Bill Gates.
Thought 2: I need to search for the country where Bill Gates lives in.
Action 2: Search [Where does Bill Gates live].
Observation 2: Bill Gates lives in the United States.
Thought 3: The answer is the United States.
Action 3: Finish [United States].\n
"""
        s += "Question: " + question + "\n"
        for i in range(1, 4):
            s += f"Thought {i}:" + sgl.gen(stop=[".", "\n"], max_tokens=12) + ".\n"
            s += f"Action {i}: " + sgl.select(f"action_{i}", choices=["Search", "Finish"])
            if s[f"action_{i}"] == "Search":
                s += " [" + sgl.gen(stop="]", max_tokens=12) + "].\n"
                s += f"Observation {i}:" + sgl.gen(stop=[".", "\n"], max_tokens=12) + ".\n"
            else:
                s += " [" + sgl.gen("answer", stop="]", max_tokens=12) + "].\n"
                break

    ret = react.run(question="What country is the Eiffel Tower in?", temperature=0)
    # SGLang checks the answer's content (on OpenAI models); here the loop and selects must just run through.
    assert ret["action_1"] in ("Search", "Finish")
    assert "Thought 1:" in ret.text()


def test_parallel_decoding(runtime):
    max_tokens = 8

    @sgl.function
    def parallel_decoding(s, topic):
        s += "Act as a helpful assistant.\n"
        s += "USER: Give some tips for " + topic + ".\n"
        s += "ASSISTANT: Okay. Here are two concise tips, each under 8 words:\n"
        for i in range(1, 3):
            s += f"{i}." + sgl.gen(max_tokens=max_tokens, stop=[".", "\n"]) + ".\n"
        forks = s.fork(2)
        for i in range(2):
            forks[i] += f"Now, I expand tip {i + 1} into a detailed paragraph:\n"
            forks[i] += sgl.gen("detailed_tip", max_tokens, stop=["\n\n"])
        forks.join()
        s += "Here are the detailed tips:\n"
        for i in range(2):
            s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
        s += "\nIn summary," + sgl.gen("summary", max_tokens=max_tokens)

    ret = parallel_decoding.run(topic="writing a good blog post", temperature=0.3)
    assert isinstance(ret["summary"], str)
    assert isinstance(ret["detailed_tip"], list) and len(ret["detailed_tip"]) == 2
    fork_meta = [ret.get_meta_info("summary")]
    assert fork_meta[0]["cached_tokens"] > 0


def test_parallel_encoding(runtime):
    @sgl.function
    def parallel_encoding(s, question, context_0, context_1, context_2):
        s += "USER: I will ask a question based on some statements.\n"
        s += "ASSISTANT: Sure. I will give the answer.\n"
        s += "USER: Please memorize the following statements.\n"
        contexts = [context_0, context_1, context_2]
        forks = s.fork(len(contexts))
        forks += lambda i: f"Statement {i}: " + contexts[i] + "\n"
        forks.join(mode="concate_and_append")
        s += "Now, please answer the following question. Do not list options."
        s += "\nQuestion: " + question + "\n"
        s += "ASSISTANT:" + sgl.gen("answer", max_tokens=12)

    ret = parallel_encoding.run(question="Who is the father of Julian?", context_0="Ethan is the father of Liam.",
                                context_1="Noah is the father of Julian.", context_2="Oliver is the father of Carlos.",
                                temperature=0)
    # SGLang asserts "Noah" in the answer (an OpenAI-class model); the 135M model's answer varies, so check that the
    # branches' text was really appended to the parent (SGLang's own KV path hangs here).
    assert "Statement 0: Ethan is the father of Liam.\nStatement 1: Noah is the father of Julian.\n" \
           "Statement 2: Oliver is the father of Carlos.\nNow, please answer" in ret.text()


def test_image_is_refused_by_the_text_only_model(runtime, tmp_path):
    path = tmp_path / "example_image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")

    @sgl.function
    def image_qa(s, question):
        s += sgl.user(sgl.image(str(path)) + question)
        s += sgl.assistant(sgl.gen("answer"))

    with pytest.raises(sgl.UnsupportedFeatureError, match=r"node image\('.*example_image.png'\)"):
        image_qa.run(question="Please describe this image in simple words.", temperature=0, max_new_tokens=64)


def _qa_program():
    @sgl.function
    def qa(s, question):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer"))

    return qa


def test_stream_matches_the_non_streaming_text(runtime):
    qa = _qa_program()
    question = "Translate to German, French and Japanese: good morning, café, naïve."
    plain = qa.run(question=question, temperature=0, max_new_tokens=24)
    ret = qa.run(question=question, temperature=0, max_new_tokens=24, stream=True)
    pieces = list(ret.text_iter())
    assert "".join(pieces) == plain.text() == ret.text()
    assert len(pieces) > 2 and any(ord(c) > 127 for c in plain["answer"])  # multi-byte characters were streamed
    again = qa.run(question=question, temperature=0, max_new_tokens=24, stream=True)
    assert "".join(again.text_iter("answer")) == plain["answer"]


def test_stream_logprobs(runtime):
    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", return_logprob=True))

    async def consume():
        ret = qa.run(question="What is the capital of France?", stream=True, temperature=0, max_new_tokens=12)
        return ret, [item async for item in ret.text_async_iter("answer", return_meta_data=True)]

    ret, chunks = asyncio.run(consume())
    assert chunks and all(chunk for chunk, _ in chunks)
    previous, entries = 0, []
    for _, meta in chunks:
        assert meta["completion_tokens"] == meta["output_token_logprobs_length"]
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] - previous
        previous = meta["completion_tokens"]
        entries += meta["output_token_logprobs"]
    whole = ret.get_meta_info("answer")  # after the stream: every entry, once
    assert whole["output_token_logprobs"][: len(entries)] == entries
    assert len(whole["output_token_logprobs"]) == whole["output_token_logprobs_length"]


def test_streamed_logprobs_of_held_back_text_come_with_the_next_piece(runtime):
    check_held_back_logprobs(sgl)


def check_held_back_logprobs(frontend) -> None:
    """On ``frontend`` (``sglang_dsl`` or SGLang's ``sglang``), with its default backend: Japanese characters span
    several tokens, so some streamed steps add no text; the next piece carries their logprob entries."""
    @frontend.function
    def greet(s):
        s += frontend.user("Write 'good morning' in Japanese and Chinese.")
        s += frontend.assistant(frontend.gen("answer", return_logprob=True, max_tokens=24, temperature=0))

    async def consume():
        ret = greet.run(stream=True)
        return ret, [item async for item in ret.text_async_iter("answer", return_meta_data=True)]

    ret, chunks = asyncio.run(consume())
    assert "".join(piece for piece, _ in chunks) == ret["answer"]
    assert any(len(meta["output_token_logprobs"]) > 1 for _, meta in chunks)
    previous = 0
    for _, meta in chunks:
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] - previous
        previous = meta["completion_tokens"]


def test_gen_min_new_tokens(runtime):
    @sgl.function
    def convo(s):
        s += sgl.user("Say hi.")
        s += sgl.assistant(sgl.gen("answer", min_tokens=16, max_tokens=20))

    ret = convo.run()
    assert ret.get_meta_info("answer")["completion_tokens"] >= 16
    assert len(runtime.tokenizer.encode(ret["answer"], add_special_tokens=False)) >= 14


def test_n_samples(runtime):
    @sgl.function
    def sample(s):
        s += "A random fruit:" + sgl.gen("fruit", n=3, max_tokens=3, temperature=1.0)

    ret = sample.run()
    assert isinstance(ret["fruit"], list) and len(ret["fruit"]) == 3
    assert ret.text() == "A random fruit:" + ret["fruit"][0]


FEW_SHOT = "".join(f"Q: What is {a} plus {b}?\nA: {a + b}\n" for a in range(2, 12) for b in (3, 7))


def test_run_batch_prefills_the_shared_few_shot_prefix_once(runtime):
    @sgl.function
    def few_shot(s, a, b):
        s += FEW_SHOT + f"Q: What is {a} plus {b}?\nA:" + sgl.gen("answer", max_tokens=2, temperature=0)

    assert sgl.flush_cache()
    prefix_tokens = len(runtime.encode(FEW_SHOT))
    start = time.perf_counter()
    states = few_shot.run_batch([{"a": i, "b": i % 7} for i in range(200)], progress_bar=True)
    elapsed = time.perf_counter() - start
    metas = [s.get_meta_info("answer") for s in states]
    # The first program's prompt went to the cache before the batch started: every program, the first included,
    # reads the few-shot prefix from the cache and computes only its own question.
    assert all(m["cached_tokens"] >= prefix_tokens for m in metas)
    assert all(m["prompt_tokens"] - m["cached_tokens"] < 20 for m in metas)
    assert elapsed < 60


def test_a_bad_argument_fails_fast_and_leaves_no_thread(runtime):
    before = {t.ident for t in threading.enumerate()}

    @sgl.function
    def bad(s):
        s += "Hello" + sgl.gen("x", top_p=5.0, max_tokens=4)

    start = time.perf_counter()
    with pytest.raises(sgl.ProgramError, match=r"program 'bad', node gen\('x'\): InvalidRequestError: top_p"):
        bad.run()
    assert time.perf_counter() - start < 1.0
    time.sleep(0.1)
    assert {t.ident for t in threading.enumerate()} <= before


def test_a_body_exception_propagates_unchanged(runtime):
    @sgl.function
    def failing(s):
        s += "Hello" + sgl.gen("x", max_tokens=4096, ignore_eos=True)
        raise ZeroDivisionError("in the body")

    with pytest.raises(ZeroDivisionError, match="in the body"):
        failing.run()
    # Its queued gen was cancelled, or its request aborted: a request left running would take minutes, the
    # deadline leaves room for a loaded machine.
    deadline = time.monotonic() + 30
    while runtime.engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime.engine.stats()["running"] == 0


def test_zz_a_shut_down_runtime_fails_fast(runtime):
    """Runs last in this module: it shuts the shared runtime down."""
    runtime.shutdown()

    @sgl.function
    def after(s):
        s += "Hello" + sgl.gen("x", max_tokens=4)

    before = {t.ident for t in threading.enumerate()}
    start = time.perf_counter()
    with pytest.raises(sgl.ProgramError, match=r"program 'after', node gen\('x'\): the runtime has been shut down"):
        after.run()
    assert time.perf_counter() - start < 1.0
    assert {t.ident for t in threading.enumerate()} <= before
