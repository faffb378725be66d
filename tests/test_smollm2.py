"""The embedded SmolLM2-135M-Instruct (GGUF Q4_1) against transformers loading the same file."""

from __future__ import annotations

import pytest
import torch

from runtime.args import RuntimeArgs
from runtime.generate import GenerationParams, generate
from runtime.model_runner import ModelRunner
from runtime.sequences import Sequences
from runtime.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis to a child in two sentences.",
    "List three prime numbers greater than 10.",
    "Translate 'good morning' into Spanish.",
]
RAW_PROMPTS = [
    "The quick brown fox",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a kingdom far away,",
    "The three laws of thermodynamics are",
    "Paris, Berlin, Madrid, and",
]


@pytest.fixture(scope="module")
def runner(smollm2_source):
    return ModelRunner(RuntimeArgs(model=str(smollm2_source.path), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def tokenizer(smollm2_source):
    return load_tokenizer(smollm2_source)


@pytest.fixture(scope="module")
def hf_model(smollm2_source):
    from transformers import AutoModelForCausalLM

    path = smollm2_source.path
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    return [tokenizer.encode(c, add_special_tokens=False) for c in chats] + [tokenizer.encode(p) for p in RAW_PROMPTS]


def test_logits_match_transformers(runner, hf_model, prompts):
    with Sequences(runner, len(prompts)) as seqs:
        ours = seqs.extend(list(range(len(prompts))), prompts, all_logits=True)
    with torch.no_grad():
        reference = torch.cat([hf_model(torch.tensor([p])).logits[0] for p in prompts])
    assert float((ours - reference).abs().max() / reference.abs().max()) <= 1e-4


def test_greedy_continuations_match_transformers(runner, hf_model, tokenizer, prompts):
    eos = sorted(tokenizer.eos_token_ids)
    ours = generate(runner, prompts, GenerationParams(max_new_tokens=64), tokenizer.eos_token_ids)
    for prompt, generation in zip(prompts, ours):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=eos,
                                    pad_token_id=eos[0])
        expected = [t for t in out[0, len(prompt) :].tolist()]
        while expected and expected[-1] in eos:  # transformers keeps the EOS token; we report it as finish_reason
            expected.pop()
        assert list(generation.token_ids) == expected, tokenizer.decode(expected)
        assert generation.finish_reason == ("length" if len(expected) == 64 else "stop")


def test_batched_and_one_by_one_give_identical_tokens(runner, tokenizer, prompts):
    params = GenerationParams(max_new_tokens=32)
    batched = generate(runner, prompts, params, tokenizer.eos_token_ids)
    alone = [generate(runner, [p], params, tokenizer.eos_token_ids)[0] for p in prompts]
    assert batched == alone


def test_chat_answer_is_sensible(runner, tokenizer):
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    [answer] = generate(runner, [tokenizer.encode(chat, add_special_tokens=False)], GenerationParams(32),
                        tokenizer.eos_token_ids)
    assert "Paris" in tokenizer.decode(list(answer.token_ids))
    assert answer.finish_reason == "stop"


def test_seeded_sampling_is_reproducible(runner, tokenizer, prompts):
    params = GenerationParams(max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    first = generate(runner, prompts[:3], params, tokenizer.eos_token_ids)
    again = generate(runner, prompts[:3], params, tokenizer.eos_token_ids)
    greedy = generate(runner, prompts[:3], GenerationParams(max_new_tokens=16), tokenizer.eos_token_ids)
    assert first == again
    assert first != greedy
