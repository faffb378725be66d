"""The engine on the embedded SmolLM2-135M-Instruct: scheduling choices leave greedy text unchanged."""

from __future__ import annotations

import pytest

from runtime.args import RuntimeArgs
from runtime.engine import Engine

pytestmark = pytest.mark.slow

SYSTEM = "You are a meticulous assistant. Answer briefly and precisely. " * 12
QUESTIONS = ["What is the capital of France?", "Name a primary color.", "What is 3 + 4?", "Say hello in German."]
GREEDY = {"temperature": 0, "max_new_tokens": 16}


def chats(tokenizer) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
            for q in QUESTIONS]


@pytest.fixture(scope="module")
def engine(smollm2_source):
    with Engine(RuntimeArgs(model=str(smollm2_source.path), device="cpu")) as e:
        yield e


def test_shared_system_prompt_is_computed_once(engine):
    texts = chats(engine.tokenizer)
    first = engine.generate(texts[0], GREEDY)
    rest = engine.generate(texts[1:], GREEDY)
    system_tokens = len(engine.tokenizer.encode(SYSTEM))
    assert first.cached_tokens < system_tokens <= min(o.cached_tokens for o in rest)
    assert "Paris" in first.text
    engine.check_integrity()


@pytest.mark.parametrize("variant", [dict(disable_radix_cache=True), dict(chunked_prefill_size=16)],
                         ids=["no-radix", "chunk16"])
def test_greedy_text_is_the_same_under_other_scheduling(engine, smollm2_source, variant):
    texts = chats(engine.tokenizer)
    expected = [o.text for o in engine.generate(texts, GREEDY)]
    alone = [engine.generate(t, GREEDY).text for t in texts]
    assert alone == expected
    with Engine(RuntimeArgs(model=str(smollm2_source.path), device="cpu", **variant)) as other:
        assert [o.text for o in other.generate(texts, GREEDY)] == expected
        other.check_integrity()
