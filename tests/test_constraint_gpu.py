"""Constraint masks applied on an NVIDIA GPU: the packed rows are copied to the device and unpacked there, and
the masked logits equal the CPU path's."""

from __future__ import annotations

import random
import time

import pytest
import torch

from runtime.constraint import RequestConstraint, apply_constraint_masks
from runtime.requests import SamplingParams
from sglang_dsl.compiler.automaton import regex_to_dfa
from sglang_dsl.compiler.matcher import RegexMatcher
from sglang_dsl.compiler.token_index import TokenIndex
from sglang_dsl.compiler.vocabulary import Vocabulary

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs an NVIDIA GPU", allow_module_level=True)


def synthetic_vocab(size: int) -> Vocabulary:
    rng = random.Random(0)
    alphabet = "abcdefghij0123456789 .@-"
    tokens = [None, None] + [bytes([b]) for b in range(256)]
    while len(tokens) < size:
        tokens.append("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6))).encode())
    return Vocabulary(tokens, frozenset({1}))


@pytest.mark.parametrize("vocab_size, padded", [(5000, 5120), (49152, 49152), (128256, 128256)])
def test_gpu_masks_equal_cpu_masks(vocab_size, padded):
    vocab = synthetic_vocab(vocab_size)
    matchers = [RegexMatcher(TokenIndex.build(regex_to_dfa(p), vocab))
                for p in [r"[a-j]+@[a-j]+\.(com|org)", r"[0-9]{1,4}( [0-9]{1,4})*", r".{0,12}"]]
    constraints = []
    for i in range(12):
        if i % 4 == 3:
            constraints.append(None)
            continue
        c = RequestConstraint(matchers[i % 3], SamplingParams(ignore_eos=i % 5 == 0, stop_token_ids=(0,)), False)
        for token in [b"a", b"1", b"x"][i % 3: i % 3 + 1]:
            nxt = c.matcher.advance(c.state, vocab.by_bytes[token])
            if nxt is not None:
                c.state = nxt
        constraints.append(c)
    logits = torch.randn(len(constraints), padded)
    expected = apply_constraint_masks(logits, constraints)
    got = apply_constraint_masks(logits.cuda(), constraints)
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), expected)
    # timing: packed rows -> device -> bias -> add, for a batch of 1 and of 32
    for batch in (1, 32):
        rows = [c for c in constraints if c is not None][:batch] * (batch // 9 + 1)
        rows = rows[:batch]
        x = torch.randn(batch, padded, device="cuda")
        for _ in range(5):
            apply_constraint_masks(x, rows)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(50):
            apply_constraint_masks(x, rows)
        torch.cuda.synchronize()
        print(f"V={vocab_size} batch={batch}: {(time.perf_counter() - started) / 50 * 1e6:.0f} us per step")
