"""Programs drawn by the ``sglang-dsl viz`` tests (loaded as a program file, like the CLI loads one)."""

import sglang_dsl as sgl

SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}}}'


@sgl.function
def few_shot(s, question):
    """A constant few-shot header, then a gen, a regex gen, a select and a JSON-schema gen."""
    s += "Answer briefly.\nQ: What is 2+2?\nA: 4\nQ: Capital of France?\nA: Paris\n"
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=16, stop="\n")
    s += "\nConfidence (0-9): " + sgl.gen("confidence", regex=r"[0-9]")
    s += "\nTopic: " + sgl.select("topic", choices=["math", "geography", "other"])
    s += "\nAs JSON: " + sgl.gen("info", json_schema=SCHEMA, max_tokens=32)


@sgl.function
def tree(s, problem):
    """Nested forks: two approaches, each with two steps, gathered back."""
    s += "Problem: " + problem + "\n"
    approaches = s.fork(2)
    for i, branch in enumerate(approaches):
        branch += f"Approach {i}: " + sgl.gen("plan", max_tokens=8)
        steps = branch.fork(2)
        steps += sgl.gen("step", max_tokens=4)
        steps.join()
    approaches.join()
    s += "Best: " + sgl.select("best", choices=["0", "1"])


@sgl.function
def chat(s, topic):
    """Roles, a variable scope, and a concatenating join; the program's Python then reads a generated value,
    which ends the static part."""
    s += sgl.system("You are terse.")
    with s.user():
        with s.var_scope("request"):
            s += "Two facts about " + topic + "."
    with s.assistant():
        facts = s.fork(2)
        facts += sgl.gen("fact", max_tokens=12, stop="\n")
        facts.join(mode="concate_and_append")
    if s["fact"] == "":
        s += "(nothing)"


@sgl.function
def branches(s, word):
    """Small enough for a tiny model: a shared prefix, a fork of two gens, and a select."""
    s += "w1 w2 w3 w4 w5 w6 w7 w8 " + word
    forks = s.fork(2)
    forks += sgl.gen("more", max_tokens=3)
    forks.join()
    s += " w9" + sgl.select("pick", choices=["w1", "w2"])
