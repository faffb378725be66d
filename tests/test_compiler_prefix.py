"""Constant-prefix analysis (`sglang_dsl.compiler.prefix`) on traced programs."""

from __future__ import annotations

from sglang_dsl.compiler.prefix import constant_prefix
from sglang_dsl.lang.function import function
from sglang_dsl.lang.primitives import gen, select, system, user

HEADER = "Answer briefly.\nQ: 1+1?\nA: 2\n"


def words(text: str) -> list[str]:
    """A toy tokenizer: one token per space-separated piece."""
    return text.split(" ")


@function
def qa(s, question):
    s += HEADER
    s += "Q: " + question + "\n"
    s += "A:" + gen("answer", stop="\n")


@function
def constant_then_gen(s):
    s += "Say hi"
    s += gen("x", max_tokens=2)
    s += " and " + select("y", ["a", "b"])


@function
def all_constant(s):
    s += "just "
    with s.var_scope("v"):
        s += "text"


@function
def forked(s, topic):
    s += "Topic list:\n"
    forks = s.fork(2)
    forks += "Idea:" + gen("idea")
    forks.join()
    s += topic


@function
def chat(s, question):
    s += system("Be terse.")
    s += user(question)


class FakeTemplate:
    """Renders turns as ``<role>content</role>``."""

    image_token = None

    def render(self, messages, add_generation_prompt=False):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)


def test_prefix_stops_inside_the_text_reading_an_argument():
    graph = qa.trace()
    info = constant_prefix(graph)
    assert info.text == HEADER + "Q: "
    assert info.end == graph.nodes[2].name  # the text node reading %question
    assert graph.nodes[1].name in info and info.end not in info
    assert "question" in info.reason and info.tokens is None


def test_argument_given_at_trace_time_is_constant():
    info = constant_prefix(qa.trace(question="Why?"))
    assert info.text == HEADER + "Q: Why?\nA:"
    assert info.end == "gen_answer" and "gen" in info.reason


def test_tokens_drop_the_last_token_when_text_follows():
    info = constant_prefix(qa.trace(), encode=words)
    assert info.tokens == len(words(HEADER + "Q: ")) - 1


def test_tokens_keep_every_token_when_the_prefix_is_a_whole_prompt():
    graph = constant_then_gen.trace()
    info = constant_prefix(graph, encode=words)
    assert info.text == "Say hi" and info.end == "gen_x"
    assert info.tokens == 2


def test_a_fully_constant_program_has_no_end():
    info = constant_prefix(all_constant.trace(), encode=words)
    assert info.text == "just text" and info.end is None
    assert len(info.nodes) == 4 and info.tokens == 2  # text, scope begin, text, scope end


def test_empty_prefix():
    @function
    def starts_with_argument(s, x):
        s += x + " then text"

    info = constant_prefix(starts_with_argument.trace(), encode=words)
    assert info.text == "" and info.nodes == () and info.tokens == 0


def test_fork_ends_the_prefix():
    graph = forked.trace()
    info = constant_prefix(graph, encode=words)
    assert info.text == "Topic list:\n" and info.end == "fork"
    assert info.tokens == 2  # the fork caches exactly this text
    assert not any(name in info for name in ("join", "gen_idea"))


def test_roles_need_a_template():
    graph = chat.trace()
    assert constant_prefix(graph).end == graph.nodes[1].name  # the system role_begin
    info = constant_prefix(graph, template=FakeTemplate())
    assert info.text == "<system>Be terse.</system><user>"
    assert info.end == graph.nodes[5].name  # the text reading %question



def test_bound_prefix_substitutes_arguments_up_to_the_first_request():
    from sglang_dsl.compiler.prefix import bound_prefix

    graph = qa.trace()
    info = bound_prefix(graph, {"question": 7}, encode=words)
    assert info.text == HEADER + "Q: 7\nA:" and info.end == "gen_answer"
    assert info.tokens == len(words(info.text))  # the whole prompt of the gen
