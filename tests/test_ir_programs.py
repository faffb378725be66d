"""Golden text forms of the IR of SGLang's test programs (reference §5), and their JSON round-trip.

Each program below has the shape of one of SGLang's compatibility programs. ``TRACES`` says how each is traced
(which arguments are given); the canonical text form of the traced graph must equal
``tests/golden/ir/<case>.txt``. To regenerate the files after an intended change, run
``SGLANG_DSL_UPDATE_GOLDEN=1 pytest tests/test_ir_programs.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sglang_dsl.ir.graph import Graph
from sglang_dsl.lang.choices import greedy_token_selection
from sglang_dsl.lang.function import function
from sglang_dsl.lang.primitives import (
    assistant, assistant_begin, assistant_end, gen, gen_int, gen_string, select, system, user,
)

GOLDEN = Path(__file__).parent / "golden" / "ir"
UPDATE = os.environ.get("SGLANG_DSL_UPDATE_GOLDEN") == "1"

REGEX_INT = r"[-+]?[0-9]+"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+"
REGEX_STR = r"\"[\w\d\s]*\""
REGEX_IPV4 = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"


@function
def few_shot_qa(s, question):
    s += "The following are questions with answers.\n"
    s += "Q: What is the capital of France?\nA: Paris\n"
    s += "Q: What is the capital of Germany?\nA: Berlin\n"
    s += "Q: " + question + "\n"
    s += "A:" + gen("answer", stop="\n", temperature=0)


@function
def multi_turn_chat(s, question_1, question_2):
    s += system("You are a helpful assistant.")
    s += user(question_1)
    s += assistant(gen("answer_1"))
    with s.user():
        s += question_2
    with s.assistant():
        s += gen("answer_2")


@function
def true_false_unknown(s, statement):
    s += "Decide whether the statement is True, False, or Unknown.\n"
    s += "Statement: The sky is green.\nAnswer: False\n"
    s += "Statement: " + statement + "\n"
    s += "Answer:" + select("answer", ["True", "False", "Unknown"])


@function
def decode_int(s):
    s += "The number of hours in a day is " + gen_int("hours") + "\n"
    s += "The number of days in a year is " + gen_int("days") + "\n"


@function
def decode_json_regex(s):
    s += "Describe the city of Paris as JSON.\n"
    with s.var_scope("json_output"):
        s += "{\n"
        s += '  "name": ' + gen(regex=REGEX_STR) + ",\n"
        s += '  "population": ' + gen(regex=REGEX_INT, stop=[" ", "\n"]) + ",\n"
        s += '  "area": ' + gen(regex=REGEX_INT, stop=[" ", "\n"]) + ",\n"
        s += '  "latitude": ' + gen(regex=REGEX_FLOAT, stop=[" ", "\n"]) + "\n"
        s += "}"


@function
def decode_json(s):
    s += "Describe the city of Paris as JSON.\n"
    with s.var_scope("json_output"):
        s += "{\n"
        s += '  "name": ' + gen_string() + ",\n"
        s += '  "population": ' + gen_int() + ",\n"
        s += '  "area": ' + gen(dtype=int) + ",\n"
        s += '  "country": ' + gen_string() + ",\n"
        s += '  "timezone": ' + gen(dtype=str) + "\n"
        s += "}"


@function
def json_schema(s):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    s += "A person, as JSON: " + gen("person", max_tokens=64, json_schema=schema)


@function
def dtype_gen(s):
    s += "Q: What is the full name of DNS?\n"
    s += "A: The full name of DNS is " + gen("str_res", dtype=str, stop="\n") + "\n"
    s += "Q: Which year was DNS invented?\n"
    s += "A: " + gen("int_res", dtype=int) + "\n"
    s += "Q: What is the value of pi?\n"
    s += "A: " + gen("float_res", dtype=float) + "\n"
    s += "Q: Is the sky blue?\n"
    s += "A: " + gen("bool_res", dtype=bool) + "\n"


@function
def grammar_sum(s):
    s += "A sum that equals 12: " + gen("sum", max_tokens=16, grammar='start: NUMBER ("+" NUMBER)*\nNUMBER: /[0-9]+/')


@function
def regex_ip(s):
    s += "Q: What is the IP address of the Google DNS servers?\n"
    s += "A: " + gen("answer", temperature=0, regex=REGEX_IPV4)


@function
def parallel_decoding(s, topic):
    tips = 3
    s += "Act as a helpful assistant.\n"
    s += "USER: Give some tips for " + topic + ".\n"
    s += f"ASSISTANT: Okay. Here are {tips} concise tips, each under 8 words:\n"
    for i in range(1, tips + 1):
        s += f"{i}." + gen(max_tokens=16, stop=[".", "\n"]) + ".\n"
    forks = s.fork(tips)
    for i in range(tips):
        forks[i] += f"Now, I expand tip {i + 1} into a detailed paragraph:\nTip {i + 1}:"
        forks[i] += gen("detailed_tip", 64, stop=["\n\n"])
    forks.join()
    s += "Here are these tips with detailed explanation:\n"
    for i in range(tips):
        s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
    s += "\nIn summary," + gen("summary", max_tokens=512)


@function
def parallel_encoding(s, question, contexts):
    forks = s.fork(len(contexts))
    forks += lambda i: f"Statement {i}: " + contexts[i] + "\n"
    forks.join(mode="concate_and_append")
    s += "Question: " + question + "\n"
    s += "ASSISTANT:" + gen("answer", max_tokens=64)


@function
def react(s, question):
    s += "Answer questions by thinking, searching and finishing.\n"
    s += "Question: " + question + "\n"
    for i in range(1, 5):
        s += f"Thought {i}:" + gen(stop=[".", "\n"]) + ".\n"
        s += f"Action {i}: " + select(f"action_{i}", choices=["Search", "Finish"])
        if s[f"action_{i}"] == "Search":
            s += "[" + gen(stop="]") + "]\n"
            s += f"Observation {i}:" + gen(stop=[".", "\n"]) + ".\n"
        else:
            s += "[" + gen("answer", stop="]") + "]\n"
            break


def calculate(expression: str) -> str:
    return f"{eval(expression)}"


@function
def tool_use(s, lhs, rhs):
    s += "Use calculate(expression) for arithmetic.\n"
    s += "Question: What is the product of " + str(lhs) + " and " + str(rhs) + "?\n"
    s += "Answer: The answer is calculate(" + gen("expression", stop=")") + ") = "
    with s.var_scope("answer"):
        s += calculate(s["expression"])


@function
def expert_answer(s, question):
    s += "Question: " + question + "\n"
    s += "A good person to answer this question is" + gen("expert", stop=[".", "\n"]) + ".\n"
    s += "For example," + s["expert"] + " would answer that " + gen("answer", stop=".") + "."


@function
def min_tokens(s, question):
    s += user(question)
    s += assistant(gen("answer", min_tokens=64, max_tokens=128))


@function
def greedy_choice(s):
    s += assistant_begin()
    s += "My favourite organ is the " + select("organ", ["heart", "brain"], choices_method=greedy_token_selection)
    s += assistant_end()


CONTEXTS = ["Noah is 12.", "Ava is 10.", "Liam is 14."]

# case name -> (program, arguments given at trace time)
TRACES: dict[str, tuple[Any, dict[str, Any]]] = {
    "few_shot_qa": (few_shot_qa, {}),
    "few_shot_qa_bound": (few_shot_qa, {"question": "What is the capital of Japan?"}),
    "multi_turn_chat": (multi_turn_chat, {}),
    "select": (true_false_unknown, {}),
    "decode_int": (decode_int, {}),
    "decode_json_regex": (decode_json_regex, {}),
    "decode_json": (decode_json, {}),
    "json_schema": (json_schema, {}),
    "dtype_gen": (dtype_gen, {}),
    "regex": (regex_ip, {}),
    "grammar": (grammar_sum, {}),
    "parallel_decoding": (parallel_decoding, {}),
    "parallel_encoding": (parallel_encoding, {"contexts": CONTEXTS}),
    "parallel_encoding_unknown_contexts": (parallel_encoding, {}),
    "react": (react, {}),
    "tool_use": (tool_use, {"lhs": 257, "rhs": 983}),
    "expert_answer": (expert_answer, {"question": "What is the capital of France?"}),
    "min_tokens": (min_tokens, {}),
    "greedy_choice": (greedy_choice, {}),
}


def traced(case: str) -> Graph:
    program, arguments = TRACES[case]
    return program.trace(**arguments)


@pytest.mark.parametrize("case", sorted(TRACES))
def test_golden_text_form(case: str) -> None:
    text = str(traced(case))
    path = GOLDEN / f"{case}.txt"
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with SGLANG_DSL_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{case}: the text form changed (SGLANG_DSL_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("case", sorted(TRACES))
def test_json_round_trip_is_exact(case: str) -> None:
    graph = traced(case)
    graph.lint()
    again = Graph.from_json(graph.to_json())
    assert again == graph
    assert str(again) == str(graph)
    assert again.to_json() == graph.to_json()


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(TRACES)
