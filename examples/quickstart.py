"""Quickstart: a small sglang-dsl program on the embedded SmolLM2-135M-Instruct (no setup, no server).

    python examples/quickstart.py
    sglang-dsl run examples/quickstart.py --arg city=Rome --text

A two-turn chat: the model answers, then ``select`` picks one of two replies by likelihood, then ``fork`` asks
two follow-up questions in parallel over the shared conversation (computed once, in the radix cache) and
``join`` gathers their answers."""

import sglang_dsl as sgl


@sgl.function
def city_guide(s, city="Paris"):
    s += sgl.system("You are a concise travel guide. Answer in one sentence.")
    s += sgl.user("I am visiting " + city + ". What is one place I must see?")
    s += sgl.assistant(sgl.gen("must_see", max_tokens=40, stop="\n"))
    s += sgl.user("Is it best visited in the morning or in the evening?")
    s += sgl.assistant(sgl.select("when", choices=["In the morning.", "In the evening."]))
    tips = s.fork(2)
    for branch, topic in zip(tips, ["food", "transport"]):
        branch += sgl.user("Give me one short tip about " + topic + " in " + city + ".")
        branch += sgl.assistant(sgl.gen("tip", max_tokens=40, stop="\n"))
    tips.join()


if __name__ == "__main__":
    state = city_guide.run(city="Paris", temperature=0)
    for message in state.messages():
        print(f"{message['role']:>9}: {message['content']}")
    for topic, tip in zip(["food", "transport"], state["tip"]):
        print(f"{'tip':>9}: ({topic}) {tip}")
    print(f"\nselect scores: {state.get_meta_info('when')['normalized_prompt_logprobs']}")
