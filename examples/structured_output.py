"""Structured output on the embedded SmolLM2-135M-Instruct: every answer below is guaranteed to parse.

    python examples/structured_output.py
    sglang-dsl run examples/structured_output.py --arg city=Rome

``gen(json_schema=...)`` takes a pydantic model (or a dict, or JSON text) and the output validates against it;
``gen(regex=...)`` matches the whole output; ``gen(grammar=...)`` takes a context-free grammar in lark's EBNF (or
llama.cpp's GBNF); ``gen(dtype=int)`` and ``select`` give a number and a label. The constraints compile once,
ahead of the first request, and are cached on disk for the next run (``sglang-dsl compile`` shows them)."""

import pydantic

import sglang_dsl as sgl


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=24)
    country: str = pydantic.Field(max_length=24)
    famous_for: list[str] = pydantic.Field(max_length=3)


ARITHMETIC = r"""
?start: sum
?sum: product (("+" | "-") product)*
?product: NUMBER (("*" | "/") NUMBER)*
NUMBER: /[1-9][0-9]?/
"""


@sgl.function
def city_facts(s, city="Paris"):
    s += sgl.system("You answer briefly and exactly in the format asked for.")
    s += sgl.user(f"Describe {city} as JSON: its name, its country and what it is famous for.")
    s += sgl.assistant(sgl.gen("facts", json_schema=City, max_tokens=96))
    s += sgl.user("On what date did you last visit it? Answer as YYYY-MM-DD.")
    s += sgl.assistant(sgl.gen("visit", regex=r"20[0-2][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"))
    s += sgl.user("How many days did you stay?")
    s += sgl.assistant(sgl.gen("days", dtype=int, max_tokens=4))
    s += sgl.user("Write an arithmetic expression that equals the number of days.")
    s += sgl.assistant(sgl.gen("expression", grammar=ARITHMETIC, max_tokens=16))
    s += sgl.user("Would you go back?")
    s += sgl.assistant(sgl.select("again", choices=["Yes.", "No."]))


if __name__ == "__main__":
    state = city_facts.run(city="Paris", temperature=0)
    facts = City.model_validate_json(state["facts"])
    print(f"facts:      {facts!r}")
    print(f"visit:      {state['visit']}")
    print(f"days:       {int(state['days'])}")
    print(f"expression: {state['expression']}")
    print(f"again:      {state['again']}")
