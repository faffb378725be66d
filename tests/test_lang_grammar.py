"""``gen(grammar=...)``: a context-free grammar (lark EBNF or GBNF) constrains a gen's whole output on every
backend that takes the native ``ebnf`` parameter: the local runtime (on the embedded model, sampling at
temperature 1), our server through `RuntimeEndpoint` and through the OpenAI backend. Bad grammars fail where the
gen is written; the IR keeps the grammar."""

from __future__ import annotations

import lark
import pytest

import sglang_dsl as sgl
from sglang_dsl.ir.serialize import from_json, to_json

SUM = r"""
start: NUMBER ("+" NUMBER)~0..3
NUMBER: /[1-9][0-9]{0,2}/
"""
SUM_GBNF = r"""
root ::= number ("+" number)? ("+" number)? ("+" number)?
number ::= [1-9] [0-9]? [0-9]?
"""


def parses(grammar: str, text: str) -> bool:
    try:
        lark.Lark(grammar, parser="earley", lexer="dynamic_complete").parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


@sgl.function
def addition(s, grammar=SUM):
    s += "Write a sum of small numbers that equals 12: " + sgl.gen("sum", grammar=grammar, max_tokens=32)


@sgl.function
def chat_addition(s):
    s += sgl.user("Write a sum of small numbers that equals 12, like 5+7.")
    s += sgl.assistant(sgl.gen("sum", grammar=SUM, max_tokens=32))


def test_bad_grammars_fail_where_the_gen_is_written():
    with pytest.raises(ValueError, match=r"Unclosed parenthesis[\s\S]*start: \(\n +\^"):
        sgl.gen("x", grammar="start: (")
    with pytest.raises(TypeError, match="grammar must be the text"):
        sgl.gen("x", grammar={"start": "x"})
    with pytest.raises(ValueError, match="cannot be combined with regex"):
        sgl.gen("x", grammar=SUM, regex="[0-9]+")


def test_the_ir_keeps_the_grammar():
    graph = addition.trace(grammar=SUM)
    (gen,) = [node for node in graph if node.op == "gen"]
    assert (gen.constraint.kind, gen.constraint.value) == ("grammar", SUM)
    assert 'grammar="\\nstart: NUMBER' in str(graph)
    assert str(from_json(to_json(graph))) == str(graph)


@pytest.mark.slow
def test_on_the_embedded_model_every_sample_parses(smollm2_source):
    runtime = sgl.Runtime(model=str(smollm2_source.path), device="cpu")
    try:
        states = chat_addition.run_batch([{}] * 8, backend=runtime, temperature=1.0)
        grammar_states = addition.run_batch([{"grammar": SUM_GBNF}] * 4, backend=runtime, temperature=1.0)
    finally:
        runtime.shutdown()
    for state in states:
        assert parses(SUM, state["sum"]), state["sum"]
    for state in grammar_states:
        assert parses(SUM, state["sum"]), state["sum"]  # the GBNF grammar spells the same language


def test_over_http_natively_and_through_the_openai_api(tiny_byte_gguf):
    from runtime.args import RuntimeArgs
    from runtime.engine import Engine
    from runtime.server import BackgroundServer, create_app

    engine = Engine(RuntimeArgs(model=str(tiny_byte_gguf), device="cpu", dtype="float32", cpu_kv_tokens=4096))
    server = BackgroundServer(create_app(engine)).start()
    endpoint = sgl.RuntimeEndpoint(server.url)
    openai = sgl.OpenAI(engine.model_path, base_url=server.url + "/v1", api_key="none", is_chat_model=False)
    try:
        assert openai.capabilities.grammar
        for backend in (endpoint, openai):
            for state in addition.run_batch([{}] * 4, backend=backend, temperature=1.0):
                assert parses(SUM, state["sum"]), (backend, state["sum"])
    finally:
        endpoint.shutdown()
        openai.shutdown()
        server.stop()
        engine.shutdown()
