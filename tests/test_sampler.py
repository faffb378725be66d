"""The batched sampler: penalties, min_new_tokens, truncation, seeded draws and logprobs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime.sampler as sampler_module
from runtime.requests import SamplingParams
from runtime.sampler import SamplingBatch, sample, token_logprobs

SP = SamplingParams


def draw(logits, params, outputs=None, **kwargs):
    outputs = outputs if outputs is not None else [[] for _ in params]
    return sample(logits, SamplingBatch.build(params), outputs, **kwargs).tolist()


def seeded_counts(logits_row, params_kwargs, n=4000, step=0):
    """How often each token is drawn by ``n`` rows with the same logits and seeds 0..n-1."""
    params = [SP(seed=s, **params_kwargs) for s in range(n)]
    logits = logits_row.expand(n, -1).contiguous()
    tokens = sample(logits, SamplingBatch.build(params), [[0] * step for _ in range(n)])
    return torch.bincount(tokens, minlength=logits.shape[1]).float() / n


# ---- greedy, penalties, min_new_tokens -----------------------------------------------------------------------


def test_greedy_batch_is_argmax_and_leaves_logits_alone():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    assert draw(logits, [SP(temperature=0)] * 4 + [SP(top_k=1)]) == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)
    batch = SamplingBatch.build([SP(temperature=0)] * 2)
    assert batch.all_greedy and not batch.has_penalties and batch.sampled_index is None


def reference_penalties(logits, params, outputs, prompts):
    out = logits.clone()
    for i, p in enumerate(params):
        for token in range(logits.shape[1]):
            count = outputs[i].count(token)
            out[i, token] -= p.frequency_penalty * count + p.presence_penalty * (count > 0)
            if count or token in prompts[i]:
                r = p.repetition_penalty
                out[i, token] = out[i, token] / r if out[i, token] > 0 else out[i, token] * r
    return out


def test_penalties_match_a_per_token_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 30, generator=g) * 3
    params = [SP(frequency_penalty=0.5), SP(presence_penalty=-1.25), SP(repetition_penalty=1.7),
              SP(frequency_penalty=0.3, presence_penalty=0.2, repetition_penalty=0.6)]
    outputs = [[1, 1, 2, 7], [3, 3, 3], [4, 5], []]
    prompts = [[9], [10, 11], [0, 1, 29], [12, 13, 12]]
    batch = SamplingBatch.build(params)
    ours = sampler_module._apply_penalties(logits, batch, outputs, prompts)
    torch.testing.assert_close(ours, reference_penalties(logits, params, outputs, prompts))
    # a count tensor gives the same as lists of ids
    counts = torch.zeros(4, 30, dtype=torch.int32)
    for i, ids in enumerate(outputs):
        for t in ids:
            counts[i, t] += 1
    torch.testing.assert_close(sampler_module._apply_penalties(logits, batch, counts, prompts), ours)


def test_penalties_steer_greedy_choices():
    logits = torch.tensor([[5.0, 4.9, 0.0], [5.0, 4.9, 0.0], [5.0, 4.9, 0.0], [5.0, 4.9, 0.0]])
    params = [SP(temperature=0, frequency_penalty=0.05), SP(temperature=0, presence_penalty=0.2),
              SP(temperature=0, repetition_penalty=1.1), SP(temperature=0)]
    outputs = [[0, 0, 0], [0], [], [0, 0]]
    prompts = [[], [], [0], []]
    assert sample(logits, SamplingBatch.build(params), outputs, prompts).tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="prompt_ids"):
        sample(logits, SamplingBatch.build(params), outputs)


def test_neutral_rows_are_untouched_by_other_rows_penalties():
    logits = torch.randn(2, 40, generator=torch.Generator().manual_seed(2))
    batch = SamplingBatch.build([SP(repetition_penalty=1.5, frequency_penalty=1.0), SP()])
    out = sampler_module._apply_penalties(logits, batch, [[1, 2], [3, 4, 4]], [[5], [6]])
    assert torch.equal(out[1], logits[1])


def test_min_new_tokens_keeps_eos_and_stop_tokens_out():
    eos = {0}
    logits = torch.tensor([[9.0, 8.0, 7.0, 1.0]] * 4)
    params = [SP(temperature=0, min_new_tokens=2, stop_token_ids=(1,)), SP(temperature=0, min_new_tokens=2),
              SP(temperature=0, min_new_tokens=2, ignore_eos=True), SP(temperature=0)]
    batch = SamplingBatch.build(params)
    assert sample(logits, batch, [[], [5], [], []], eos_token_ids=eos).tolist() == [2, 1, 0, 0]
    # once a row has min_new_tokens tokens, EOS is allowed again
    assert sample(logits, batch, [[5, 5], [5, 5], [], []], eos_token_ids=eos).tolist() == [0, 0, 0, 0]
    # explicit steps override len(output_ids)
    assert sample(logits, batch, [[], [], [], []], eos_token_ids=eos, steps=[2, 1, 0, 0]).tolist() == [0, 1, 0, 0]
    # sampled rows are masked too: EOS never drawn while below min_new_tokens
    n = 500
    many = SamplingBatch.build([SP(seed=s, min_new_tokens=1) for s in range(n)])
    tokens = sample(torch.tensor([[3.0, 0.0, 0.0, 0.0]]).expand(n, -1), many, [[]] * n, eos_token_ids=eos)
    assert 0 not in tokens.tolist()


# ---- truncation and the distribution drawn from ---------------------------------------------------------------


def test_two_token_distribution_is_sampled_in_proportion():
    logits = torch.tensor([math.log(0.8), math.log(0.2)])
    freq = seeded_counts(logits, {})
    assert abs(float(freq[0]) - 0.8) < 0.03
    unseeded = sample(logits.expand(4000, -1), SamplingBatch.build([SP()] * 4000), [[]] * 4000)
    assert abs(float((unseeded == 0).float().mean()) - 0.8) < 0.03


def expected_distribution(logits, temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0):
    probs = (logits / temperature).softmax(-1)
    order = probs.argsort(descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    kept_mass = 0.0
    k_probs = probs[order[: top_k if top_k > 0 else len(order)]]
    k_probs = k_probs / k_probs.sum()
    for rank, token in enumerate(order[: len(k_probs)].tolist()):
        if kept_mass >= top_p:
            break
        keep[token] = True
        kept_mass += float(k_probs[rank])
    keep &= probs >= min_p * probs.max()
    out = torch.where(keep, probs, 0.0)
    return out / out.sum()


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=1.0), dict(temperature=2.0), dict(temperature=0.5), dict(top_k=3), dict(top_p=0.7),
     dict(top_k=4, top_p=0.8, temperature=1.5), dict(min_p=0.3), dict(top_p=0.9, min_p=0.2)],
)
def test_draws_follow_the_truncated_tempered_distribution(kwargs):
    logits = torch.tensor([2.0, 1.6, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    expected = expected_distribution(logits, **kwargs)
    freq = seeded_counts(logits, kwargs, n=20000)
    assert ((freq > 0) <= (expected > 0)).all(), (freq, expected)  # never a dropped token
    assert float((freq - expected).abs().max()) < 0.015, (freq, expected)


def test_truncation_ties_are_kept_together():
    logits = torch.tensor([1.0, 1.0, 1.0, 0.0])
    freq = seeded_counts(logits, dict(top_k=2), n=3000)
    assert float(freq[3]) == 0 and all(float(f) > 0.25 for f in freq[:3])


def test_mixed_batch_each_row_follows_its_own_parameters():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 100, generator=g) * 2
    params = [SP(temperature=0), SP(top_k=1, seed=4), SP(top_k=5, seed=1), SP(top_p=0.5), SP(min_p=0.5, seed=2),
              SP(temperature=0, frequency_penalty=1.0)]
    batch = SamplingBatch.build(params, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        tokens = sample(logits, batch, [[]] * 6).tolist()
        assert tokens[0] == int(logits[0].argmax()) and tokens[1] == int(logits[1].argmax())
        assert tokens[5] == int(logits[5].argmax())
        assert tokens[2] in logits[2].topk(5).indices.tolist()
        assert tokens[3] in torch.nonzero(expected_distribution(logits[3], top_p=0.5)).flatten().tolist()
        probs = logits[4].softmax(-1)
        assert probs[tokens[4]] >= 0.5 * probs.max()


def test_flags_skip_unused_features():
    batch = SamplingBatch.build([SP(temperature=0.7), SP(temperature=0.7, seed=1)])
    assert not (batch.has_top_k or batch.has_top_p or batch.has_min_p or batch.has_penalties)
    assert batch.greedy_index is None and batch.top_k_prefix is None
    assert SamplingBatch.build([SP(top_k=5), SP(top_k=9, top_p=0.5), SP()]).top_k_prefix == 9
    assert SamplingBatch.build([SP(top_k=5), SP(top_p=0.5)]).top_k_prefix is None  # needs a full sort


# ---- seeds ---------------------------------------------------------------------------------------------------


def run_steps(logits_per_step, params, row, steps=6):
    """Tokens of ``row`` over several steps, feeding back each row's tokens as its output."""
    batch = SamplingBatch.build(params, generator=torch.Generator().manual_seed(99))
    outputs = [[] for _ in params]
    for step in range(steps):
        tokens = sample(logits_per_step[step], batch, outputs).tolist()
        for ids, t in zip(outputs, tokens):
            ids.append(t)
    return outputs[row]


@pytest.mark.parametrize(
    "target",
    [SP(seed=1234, temperature=0.9, top_p=0.95, frequency_penalty=0.2), SP(seed=77, top_k=30), SP(seed=5),
     SP(seed=2**63 + 9, min_p=0.05, temperature=1.3)],
)
def test_a_seeded_row_samples_the_same_alone_and_in_any_batch(target):
    """Alone, the first two targets draw among their kept prefix only; next to untruncated rows, over the whole
    vocabulary: the draws agree either way."""
    g = torch.Generator().manual_seed(5)
    vocab = 300
    mine = torch.randn(6, vocab, generator=g)
    others = torch.randn(6, 7, vocab, generator=g)
    alone = run_steps([mine[s][None] for s in range(6)], [target], 0)
    neighbours = [SP(), SP(temperature=0), SP(seed=1235), SP(top_k=3, seed=9), SP(min_p=0.1), SP(top_p=0.3),
                  SP(repetition_penalty=1.0, presence_penalty=0.5)]
    for row in (0, 3, 7):
        params = neighbours[:row] + [target] + neighbours[row:]
        logits = [torch.cat([others[s][:row], mine[s][None], others[s][row:]]) for s in range(6)]
        assert run_steps(logits, params, row) == alone


def test_seeds_and_steps_change_the_draws():
    logits = torch.zeros(1, 1000)  # uniform: every draw is a fresh token
    firsts = {draw(logits, [SP(seed=s)])[0] for s in range(50)}
    assert len(firsts) > 40
    by_step = {sample(logits, SamplingBatch.build([SP(seed=7)]), [[0] * s]).item() for s in range(50)}
    assert len(by_step) > 40
    assert draw(logits, [SP(seed=7)]) == draw(logits, [SP(seed=7)])
    assert draw(logits, [SP(seed=-1)]) == draw(logits, [SP(seed=2**64 - 1)])  # seeds are taken mod 2**64


def test_seeded_draws_are_independent_across_seeds_and_tokens():
    """Chi-square of a uniform 64-token draw over 16000 seeds, and of pairs of consecutive seeds."""
    n, vocab = 16000, 64
    tokens = sample(torch.zeros(n, vocab), SamplingBatch.build([SP(seed=s) for s in range(n)]), [[]] * n)
    counts = torch.bincount(tokens, minlength=vocab).float()
    chi2 = float(((counts - n / vocab) ** 2 / (n / vocab)).sum())
    assert chi2 < 120  # 63 degrees of freedom: p < 1e-5 beyond ~120
    pairs = torch.bincount(tokens[0::2] % 8 * 8 + tokens[1::2] % 8, minlength=64).float()
    chi2 = float(((pairs - n / 2 / 64) ** 2 / (n / 2 / 64)).sum())
    assert chi2 < 120


def reference_uniform(seed, step, token):
    """The hash documented in runtime/sampler.py, in plain Python integers."""
    m = 0xFFFFFFFF

    def mix(h):
        h ^= h >> 16
        h = h * 0x21F0AAAD & m
        h ^= h >> 15
        h = h * 0x735A2D97 & m
        return h ^ (h >> 15)

    seed %= 2**64
    key = mix((seed & m) ^ mix((seed >> 32) ^ 0x9E3779B9))
    row = mix(key ^ mix((step + 0x632BE5AB) & m))
    h = mix(row ^ (token * 0x61C88647 & m))
    return ((h >> 9) + 0.5) / 2**23


@given(seed=st.integers(min_value=-(2**63), max_value=2**64 - 1), step=st.integers(0, 2**31))
@settings(max_examples=50, deadline=None)
def test_hash_matches_its_documented_definition(seed, step):
    keys = sampler_module._seed_keys(torch.tensor([sampler_module._as_int64(seed)]))
    tokens = [0, 1, 2, 3, 100, 49151, 2**31 - 1, 2**32 - 1]
    ours = sampler_module._seeded_uniform(keys, torch.tensor([step]), torch.tensor([tokens]))[0].tolist()
    assert ours == [reference_uniform(seed, step, t) for t in tokens]
    assert all(0 < u < 1 for u in ours)


def test_unseeded_rows_follow_the_batch_generator():
    logits = torch.zeros(3, 500)
    params = [SP(), SP(seed=3), SP()]
    a = sample(logits, SamplingBatch.build(params, generator=torch.Generator().manual_seed(1)), [[]] * 3).tolist()
    b = sample(logits, SamplingBatch.build(params, generator=torch.Generator().manual_seed(1)), [[]] * 3).tolist()
    c = sample(logits, SamplingBatch.build(params, generator=torch.Generator().manual_seed(2)), [[]] * 3).tolist()
    assert a == b and a[1] == c[1] and (a[0], a[2]) != (c[0], c[2])


def test_shape_errors():
    batch = SamplingBatch.build([SP(), SP()])
    with pytest.raises(ValueError, match="logits must be"):
        sample(torch.zeros(3, 4), batch, [[]] * 3)
    with pytest.raises(ValueError, match="output ids of 2 rows"):
        sample(torch.zeros(2, 4), batch, [[]])
    with pytest.raises(ValueError, match="steps are required"):
        sample(torch.zeros(2, 4), batch, torch.zeros(2, 4))


# ---- logprobs ------------------------------------------------------------------------------------------------


def test_token_logprobs_are_the_raw_log_softmax(monkeypatch):
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(7, 40, generator=g) * 4
    ids = torch.randint(0, 40, (7,), generator=g)
    monkeypatch.setattr(sampler_module, "_LOGPROB_CHUNK_ELEMENTS", 100)  # 2 rows per chunk
    lp, top_lp, top_ids = token_logprobs(logits, ids, top_k=5)
    reference = logits.log_softmax(-1)
    torch.testing.assert_close(lp, reference.gather(1, ids[:, None]).squeeze(1))
    values, indices = reference.topk(5)
    torch.testing.assert_close(top_lp, values)
    assert torch.equal(top_ids, indices)
    assert (top_lp[:, :-1] >= top_lp[:, 1:]).all()
    lp2, empty_lp, empty_ids = token_logprobs(logits.to(torch.bfloat16).float(), ids.tolist(), top_k=0)
    assert empty_lp.shape == (7, 0) and empty_ids.shape == (7, 0)
    assert token_logprobs(logits, ids, top_k=100)[1].shape == (7, 40)
