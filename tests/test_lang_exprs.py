"""Expressions and primitives: what ``gen``, ``select``, roles and ``image`` build (no model needed)."""

from __future__ import annotations

import json

import pytest

import sglang_dsl as sgl
from sglang_dsl.lang.exprs import ExprList, Gen, Image, RoleBegin, RoleEnd, Select, Text, written_variables
from sglang_dsl.lang.params import SamplingParams


def test_plus_builds_one_flat_list_of_nodes():
    expr = "Q: " + sgl.gen("a", max_tokens=4) + "\n" + (sgl.select("b", ["x", "y"]) + "!")
    assert isinstance(expr, ExprList)
    assert [type(e) for e in expr.items] == [Text, Gen, Text, Select, Text]
    assert expr.label == "text('Q: ') + gen('a') + text('\\n') + select('b') + text('!')"


def test_gen_keeps_only_what_it_sets():
    node = sgl.gen("x", 16, stop="\n", temperature=0)
    assert node.params.given() == {"max_new_tokens": 16, "stop": ("\n",), "temperature": 0}
    merged = node.params.merged_over(SamplingParams(max_new_tokens=128, temperature=0.7, top_p=0.9))
    assert merged.given() == {"max_new_tokens": 16, "stop": ("\n",), "temperature": 0, "top_p": 0.9}
    assert merged.native_sampling() == {"max_new_tokens": 16, "stop": ["\n"], "temperature": 0, "top_p": 0.9}


def test_every_sglang_gen_argument_is_accepted():
    node = sgl.gen("x", max_tokens=8, min_tokens=2, n=1, stop=["a"], stop_token_ids=[5], stop_regex="z+",
                   temperature=0.5, top_p=0.9, top_k=20, min_p=0.1, frequency_penalty=0.1, presence_penalty=0.2,
                   ignore_eos=True, return_logprob=True, logprob_start_len=0, top_logprobs_num=2,
                   return_text_in_logprobs=True, json_schema={"type": "object"})
    assert node.params.native_logprobs() == {"return_logprob": True, "logprob_start_len": 0,
                                             "top_logprobs_num": 2, "return_text_in_logprobs": True}
    assert json.loads(node.params.json_schema) == {"type": "object"}
    assert node.params.native_sampling()["min_new_tokens"] == 2


def test_dtype_becomes_sglangs_regex_and_wins_over_regex():
    node = sgl.gen("n", dtype=int, regex="abc", stop="\n")
    assert node.params.dtype == "int" and node.params.regex is None
    assert node.params.native_sampling() == {"regex": r"[-+]?[0-9]+[ \n]*", "stop": ["\n", " "]}
    assert sgl.gen_int("n").params.dtype == "int"
    assert sgl.gen_string("s").params.dtype == "str"


def test_gen_with_choices_is_a_select():
    node = sgl.gen("c", choices=["a", "b"], choices_method=sgl.greedy_token_selection)
    assert node == Select("c", ("a", "b"), 0.0, sgl.greedy_token_selection)


@pytest.mark.parametrize("call, message", [
    (lambda: sgl.gen("x", regex="("), "does not compile"),
    (lambda: sgl.gen("x", dtype=list), "dtype must be one of"),
    (lambda: sgl.gen("x", json_schema="{nope"), "not valid JSON"),
    (lambda: sgl.select("x", []), "non-empty list"),
    (lambda: sgl.select("x", ["a"], temperature=-1), "temperature"),
    (lambda: sgl.gen() + 3, "can only append strings"),
])
def test_bad_arguments_fail_where_they_are_written(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_roles_and_variables():
    assert sgl.user("hi").items == (RoleBegin("user"), Text("hi"), RoleEnd("user"))
    assert sgl.assistant_begin() == RoleBegin("assistant") and sgl.system_end() == RoleEnd("system")
    expr = sgl.gen("a") + sgl.gen() + sgl.select("b", ["x"]) + sgl.gen("a")
    assert written_variables(expr) == ["a", "b", "a"]


def test_image_from_path_bytes_and_pil_like(tmp_path):
    png = b"\x89PNG\r\n\x1a\nrest"
    path = tmp_path / "cat.png"
    path.write_bytes(png)
    assert sgl.image(str(path)) == Image(png, "image/png", str(path))
    assert sgl.image(png).mime == "image/png"

    class FakePil:
        size = (1, 1)

        def save(self, buffer, format):
            buffer.write(png)

    assert sgl.image(FakePil()).data == png
    assert sgl.image(png).data_url().startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="cannot read"):
        sgl.image(str(tmp_path / "missing.png"))


def test_importing_the_language_loads_neither_torch_nor_the_runtime():
    import subprocess
    import sys

    code = ("import sys, sglang_dsl as sgl; sgl.gen('x'); "
            "print(sorted(m for m in ('torch', 'runtime', 'backends.local') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_default_backend_is_a_local_runtime_created_once(monkeypatch):
    import backends.local
    from sglang_dsl.lang import config

    created = []

    class FakeRuntime:
        def __init__(self):
            created.append(self)

    monkeypatch.setattr(backends.local, "Runtime", FakeRuntime)
    monkeypatch.setattr(sgl.global_config, "default_backend", None)
    assert config.default_backend() is config.default_backend() is created[0]
    assert len(created) == 1
