"""Constrained decoding in the engine: masks applied before sampling, EOS only where the constraint accepts, the
request ends when nothing more can follow, compiles run off the scheduler thread and are cached (memory and
disk), bad constraints are refused up front, jump-forward saves decode steps. A tiny random byte-level model
checks the mechanics; the embedded SmolLM2 checks real outputs at temperature 1."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from runtime.args import RuntimeArgs
from runtime.engine import Engine
from runtime.requests import InvalidRequestError
from sglang_dsl.compiler.constraint import ConstraintCompiler, ConstraintSpec

SAMPLE = {"temperature": 1.0, "max_new_tokens": 48}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from gguf_fixtures import byte_level_vocab, write_tiny_gguf

    path = tmp_path_factory.mktemp("tiny-byte-level") / "tiny.gguf"
    write_tiny_gguf(path, vocab=byte_level_vocab(vocab_size=400), max_position_embeddings=1024)
    return path


def tiny_engine(path, cache_dir, **overrides) -> Engine:
    args = dict(model=str(path), device="cpu", dtype="float32", cpu_kv_tokens=8192, max_running_requests=16)
    engine = Engine(RuntimeArgs(**{**args, **overrides}))
    engine.constraints._cache_dir = cache_dir
    return engine


@pytest.fixture(scope="module")
def engine(tiny_gguf, tmp_path_factory):
    with tiny_engine(tiny_gguf, tmp_path_factory.mktemp("constraint-cache")) as e:
        yield e


@pytest.fixture(autouse=True)
def integrity(request):
    yield
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").check_integrity()


def fullmatch(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text, re.ASCII) is not None


BOUNDED = [
    r"[-+]?[0-9]{1,6}",
    r"(yes|no|maybe)",
    r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)",
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r'\{"name": "[A-Za-z ]{1,12}", "age": [0-9]{1,3}\}',
    r"(ab|cd){2,4}[.!?]",
]


@pytest.mark.parametrize("pattern", BOUNDED)
def test_random_model_outputs_always_match_bounded_regexes(engine, pattern):
    outputs = engine.generate(["w1 w2"] * 8, {**SAMPLE, "regex": pattern})
    for out in outputs:
        assert out.finish.type == "stop", out
        assert fullmatch(pattern, out.text), out.text


def test_unbounded_regex_ends_by_eos_or_length_and_eos_only_where_it_accepts(engine):
    pattern = r"[a-z]+( [a-z]+)*\."
    outputs = engine.generate(["hello"] * 12, {**SAMPLE, "regex": pattern, "max_new_tokens": 24})
    for out in outputs:
        if out.finish.type == "stop":
            assert fullmatch(pattern, out.text), out.text
        else:
            assert out.finish.type == "length"
            assert re.fullmatch(r"[a-z]+( [a-z]+)* ?[a-z]*\.?", out.text, re.ASCII), out.text


def test_a_complete_match_ends_the_request_without_eos(engine):
    out = engine.generate("x", {"temperature": 0, "max_new_tokens": 30, "regex": "(yes|no)"})
    assert out.text in ("yes", "no") and out.finish.type == "stop" and out.finish.matched is None


def test_ignore_eos_keeps_going_until_the_constraint_or_the_length_ends_it(engine):
    outs = engine.generate(["a"] * 4, {**SAMPLE, "regex": r"[0-9]+", "ignore_eos": True, "max_new_tokens": 10})
    for out in outs:
        assert out.finish.type == "length" and out.completion_tokens == 10 and out.text.isdigit()
    outs = engine.generate(["a"] * 4, {**SAMPLE, "regex": r"[0-9]{3}", "ignore_eos": True})
    assert all(o.finish.type == "stop" and len(o.text) == 3 for o in outs)


def test_constrained_rows_do_not_disturb_free_rows_in_the_same_batch(engine):
    free = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    alone = engine.generate(["w1 w2 w3", "another prompt"], free)
    futures = []
    for text, params in [("w1 w2 w3", free), ("x", {**SAMPLE, "regex": r"[0-9]{5}"}), ("another prompt", free),
                         ("y", {**SAMPLE, "regex": r"(red|green|blue)"})]:
        request = engine.make_request(text=text, sampling_params=params)
        futures.append(engine._submit_future(request))
    mixed = [f.result() for f in futures]
    assert [mixed[0].output_ids, mixed[2].output_ids] == [alone[0].output_ids, alone[1].output_ids]
    assert fullmatch(r"[0-9]{5}", mixed[1].text) and mixed[3].text in ("red", "green", "blue")


@pytest.mark.parametrize("params, message", [
    ({"regex": r"a(?=b)"}, "look-ahead"),
    ({"regex": r"(a)\1"}, "back-references"),
    ({"regex": r"foo\b"}, "word boundaries"),
    ({"regex": r"[a-"}, "unterminated character set"),
])
def test_bad_constraints_are_refused_when_the_request_is_made(engine, params, message):
    with pytest.raises(InvalidRequestError, match=message) as err:
        engine.make_request(text="hi", sampling_params=params)
    assert "^" in str(err.value).splitlines()[-1]


def test_a_constraint_that_cannot_compile_aborts_its_request(engine):
    out = engine.generate("hi", {**SAMPLE, "regex": r"a[^\s\S]b"})
    assert out.finish.type == "abort" and "matches no string" in out.finish.message


def test_requests_wait_for_their_compile_and_can_be_aborted_meanwhile(engine):
    gate: Future = Future()
    original = engine.constraints.compile
    engine.constraints.compile = lambda spec: gate
    try:
        request = engine.make_request(text="hi", sampling_params={**SAMPLE, "regex": r"[0-9]{2}"})
        done = engine._submit_future(request)
        other = engine.generate("free", {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True})
        assert other.completion_tokens == 4 and not done.done()  # the scheduler kept serving
        assert engine.stats()["waiting"] == 0
        assert engine.abort(request.rid)
        assert done.result(timeout=10).finish.type == "abort"
        # and one that is released when its compile finishes
        request = engine.make_request(text="hi", sampling_params={**SAMPLE, "regex": r"[0-9]{2}"})
        gate2: Future = Future()
        engine.constraints.compile = lambda spec: gate2
        done = engine._submit_future(request)
        time.sleep(0.2)
        assert not done.done()
        threading.Thread(target=lambda: gate2.set_result(original(ConstraintSpec("regex", r"[0-9]{2}")).result())
                         ).start()
        out = done.result(timeout=30)
        assert fullmatch(r"[0-9]{2}", out.text)
    finally:
        engine.constraints.compile = original


def test_steps_with_constrained_rows_record_their_mask_time(engine):
    count = "sglang_dsl_constraint_mask_seconds_count"
    before = engine.metrics.value(count)
    engine.generate("free", {**SAMPLE, "max_new_tokens": 5})
    assert engine.metrics.value(count) == before
    out = engine.generate("digits", {**SAMPLE, "regex": r"[0-9]{6}"})
    steps = engine.metrics.value(count) - before
    assert fullmatch(r"[0-9]{6}", out.text) and 1 <= steps <= len(out.output_ids)
    assert engine.metrics.value("sglang_dsl_constraint_mask_seconds_sum") > 0


def test_compiles_are_cached_in_memory_and_on_disk(engine, tmp_path):
    compiler = engine.constraints.compiler
    pattern = r"[A-Z][a-z]{2,9} [A-Z][a-z]{2,9}"
    before = dict(compiler.stats)
    engine.generate(["a", "b", "c"], {**SAMPLE, "regex": pattern})
    engine.generate("d", {**SAMPLE, "regex": pattern})
    assert compiler.stats["compiled"] - before["compiled"] == 1
    # a new process (here: a new compiler on the same directory) loads it from disk
    fresh = ConstraintCompiler(compiler.vocab, compiler.cache_dir)
    spec = ConstraintSpec("regex", pattern)
    started = time.perf_counter()
    matcher = fresh.compile(spec)
    assert fresh.stats["disk_hits"] == 1 and time.perf_counter() - started < 0.5
    original = compiler.compile(spec)
    assert (matcher.index.masks == original.index.masks).all()
    # a damaged entry (cut short) is compiled again, not trusted
    (entry,) = Path(compiler.cache_dir).glob(f"{compiler.key(spec)}.*")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    again = ConstraintCompiler(compiler.vocab, compiler.cache_dir)
    assert (again.compile(spec).index.masks == original.index.masks).all()
    assert again.stats["compiled"] == 1 and again.stats["disk_hits"] == 0
    # and a different tokenizer (vocabulary) never shares an entry
    other_vocab = type(compiler.vocab)(list(compiler.vocab.token_bytes[:-1]) + [b"zz"], compiler.vocab.eos_token_ids)
    assert ConstraintCompiler(other_vocab, compiler.cache_dir).key(spec) != compiler.key(spec)


LONG_KEYS = {
    "type": "object", "additionalProperties": False,
    "required": ["customer_identifier", "shipping_destination_country", "requires_signature_on_delivery",
                 "number_of_packages_in_this_shipment"],
    "properties": {
        "customer_identifier": {"type": "string", "pattern": "^[a-z]{3}$"},
        "shipping_destination_country": {"enum": ["France", "Germany", "Luxembourg"]},
        "requires_signature_on_delivery": {"type": "boolean"},
        "number_of_packages_in_this_shipment": {"type": "integer", "minimum": 1, "maximum": 9},
    },
}


def count_steps(engine, prompt: str, params: dict, jump: bool):
    """Scheduler steps (forward passes) to finish one request, and its output."""
    counter = [0]
    original_step = engine.scheduler.step

    def counting_step():
        counter[0] += 1
        original_step()

    engine.scheduler.step = counting_step
    engine.scheduler.jump_forward = jump
    try:
        out = engine.generate(prompt, params)
    finally:
        engine.scheduler.step = original_step
        engine.scheduler.jump_forward = True
    return counter[0], out


@pytest.mark.parametrize("kind", ["regex", "json_schema"])
def test_jump_forward_appends_forced_text_in_one_extend_step(engine, kind):
    import json

    import jsonschema

    if kind == "regex":
        constraint = (r'\{"customer_identifier": "[a-z]{3}", "shipping_destination_country": "(France|Germany)", '
                      r'"requires_signature_on_delivery": (true|false)\}')
    else:
        constraint = json.dumps(LONG_KEYS)
    params = {"temperature": 0, "max_new_tokens": 200, kind: constraint}
    steps = {}
    for jump in (True, False):
        steps[jump], out = count_steps(engine, "order:", params, jump)
        assert out.finish.type == "stop", out
        if kind == "regex":
            assert fullmatch(constraint, out.text), out.text
        else:
            jsonschema.validate(json.loads(out.text), LONG_KEYS)
    print(f"{kind}: scheduler steps with / without jump-forward:", steps)
    assert steps[True] * 2 < steps[False], steps


TICKET = {
    "type": "object", "additionalProperties": False, "required": ["title", "priority", "labels", "estimate"],
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 12},
        "priority": {"enum": ["low", "medium", "high"]},
        "labels": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "estimate": {"type": "integer", "minimum": 1, "maximum": 40},
        "owner": {"type": ["string", "null"], "format": "date"},
    },
}


def test_json_schema_outputs_validate(engine):
    import json

    import jsonschema

    outs = engine.generate(["ticket:"] * 8, {**SAMPLE, "max_new_tokens": 200, "json_schema": json.dumps(TICKET)})
    for out in outs:
        assert out.finish.type == "stop", out
        jsonschema.validate(json.loads(out.text), TICKET)


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"a": {"type": "string", "format": "ipv6"}}}, "#/properties/a/format"),
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, "#/properties/a/uniqueItems"),
    ({"type": "object", "propertyNames": {"maxLength": 3}}, "#/propertyNames"),
])
def test_bad_schemas_are_refused_with_their_json_path(engine, schema, message):
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        engine.make_request(text="hi", sampling_params={"json_schema": schema})


BOUNDED_ARITHMETIC = r"""
start: term (OP term) ~ 0..3
term: NUMBER | "(" NUMBER (OP NUMBER) ~ 1..2 ")"
OP: "+" | "-" | "*" | "/"
NUMBER: /[0-9]{1,3}/
"""


def parses(grammar: str, text: str) -> bool:
    import lark

    from sglang_dsl.compiler.lark_grammar import load_grammar

    try:
        lark.Lark(load_grammar(grammar).source, parser="earley", lexer="dynamic_complete").parse(text)
        return True
    except lark.exceptions.LarkError:
        return False


def test_ebnf_outputs_parse(engine):
    outs = engine.generate(["calc:"] * 8, {**SAMPLE, "max_new_tokens": 80, "ebnf": BOUNDED_ARITHMETIC})
    for out in outs:
        assert out.finish.type == "stop" and parses(BOUNDED_ARITHMETIC, out.text), out.text
    gbnf = 'root ::= "answer: " ("yes" | "no") "."'
    outs = engine.generate(["q"] * 4, {**SAMPLE, "ebnf": gbnf})
    assert all(o.text in ("answer: yes.", "answer: no.") for o in outs)


def test_bad_grammars_are_refused_when_the_request_is_made(engine):
    with pytest.raises(InvalidRequestError, match="LALR"):
        engine.make_request(text="hi", sampling_params={"ebnf": 'start: a | b\na: "x"\nb: "x"'})


def test_word_level_tokenizers_cannot_be_constrained(tmp_path):
    from tiny_models import write_word_tokenizer

    from runtime.constraint import ConstraintManager
    from runtime.model_files import ModelSource
    from runtime.requests import SamplingParams
    from runtime.tokenizer import load_tokenizer

    write_word_tokenizer(tmp_path)
    manager = ConstraintManager(load_tokenizer(ModelSource("hf", tmp_path)), cache_dir=None)
    with pytest.raises(InvalidRequestError, match="byte-level BPE or SentencePiece"):
        manager.spec_of(SamplingParams(regex="[0-9]+"))


# ---- the embedded SmolLM2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_source, tmp_path_factory):
    with Engine(RuntimeArgs(model=str(smollm2_source.path), device="cpu")) as e:
        e.constraints._cache_dir = tmp_path_factory.mktemp("smollm2-constraints")
        yield e


def chat(engine, question: str) -> str:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": question}])


@pytest.mark.slow
def test_smollm2_json_from_a_pydantic_model_always_parses(smollm2):
    from typing import Literal, Optional

    import pydantic

    class Character(pydantic.BaseModel):
        name: pydantic.constr(min_length=1, max_length=16)
        age: pydantic.conint(ge=0, le=120)
        role: Literal["wizard", "warrior", "thief"]
        weapon: Optional[pydantic.constr(max_length=12)]
        skills: pydantic.conlist(pydantic.constr(min_length=1, max_length=10), min_length=1, max_length=3)
        alive: bool

    from sglang_dsl.compiler.json_schema import schema_to_json_text

    prompt = chat(smollm2, "Describe a fantasy character as JSON with name, age, role, weapon, skills and alive.")
    outs = smollm2.generate([prompt] * 12, {"temperature": 1.0, "max_new_tokens": 256,
                                            "json_schema": schema_to_json_text(Character)})
    for out in outs:
        assert out.finish.type == "stop", out
        Character.model_validate_json(out.text)


@pytest.mark.slow
def test_smollm2_arithmetic_from_a_grammar_always_parses(smollm2):
    prompt = chat(smollm2, "Write an arithmetic expression that equals 42.")
    outs = smollm2.generate([prompt] * 12, {"temperature": 1.0, "max_new_tokens": 80, "ebnf": BOUNDED_ARITHMETIC})
    for out in outs:
        assert out.finish.type == "stop" and parses(BOUNDED_ARITHMETIC, out.text), out.text


@pytest.mark.slow
@pytest.mark.parametrize("question, pattern, max_new_tokens", [
    ("Pick a number between 1 and 1000.", r"[-+]?[0-9]+", 12),
    ("What is the email address of the support team of example.com?",
     r"[a-z0-9._]{1,20}@[a-z0-9-]{1,12}\.(com|org|net|edu)", 64),
    ("When did the first person land on the moon? Answer with a date.",
     r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", 32),
])
def test_smollm2_outputs_match_at_temperature_one(smollm2, question, pattern, max_new_tokens):
    outs = smollm2.generate([chat(smollm2, question)] * 12,
                            {"temperature": 1.0, "max_new_tokens": max_new_tokens, "regex": pattern})
    for out in outs:
        assert fullmatch(pattern, out.text), (out.text, out.finish)
    smollm2.check_integrity()
