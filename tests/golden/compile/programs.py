"""Programs whose ``sglang-dsl compile`` output is kept as golden text (tests/test_compile_cli.py)."""

import sglang_dsl as sgl


@sgl.function
def capitals(s, question):
    s += "Answer in one word.\nQ: What is the capital of France?\nA: Paris\n"
    s += "Q: " + question + "\nA:" + sgl.gen("answer", stop="\n", regex=r"[A-Z][a-z]+")


@sgl.function
def ideas(s, topic):
    s += "Brainstorm about " + topic + ".\n"
    forks = s.fork(2)
    forks += "Idea " + sgl.gen("idea", max_tokens=8, stop="\n")
    for branch in forks:
        branch += "\nWhy it works: " + sgl.gen("why", max_tokens=16)
    forks.join()
    s += "Best idea:" + sgl.gen("best", max_tokens=8)


@sgl.function
def sentiment(s, review):
    s += "Review: " + review + "\n"
    s += "Sentiment:" + sgl.select("label", ["positive", "negative", "neutral"])
    s += "\nScore (1-5): " + sgl.gen("score", dtype=int, max_tokens=2)
    s += "\nConfidence: " + sgl.select("confidence", ["high", "low"],
                                       choices_method=sgl.unconditional_likelihood_normalized)


@sgl.function
def assistant(s, question):
    s += sgl.system("You are terse.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16))
