"""Logit parity with Hugging Face transformers on tiny random models of every supported family."""

from __future__ import annotations

import pytest
import torch

from runtime.args import RuntimeArgs
from runtime.model_runner import ModelRunner
from runtime.sequences import Sequences
from tiny_models import FAMILIES, make_hf_model

MAX_REL_ERR = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module", params=list(FAMILIES))
def models(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    hf = make_hf_model(request.param, directory)
    runners = {
        page_size: ModelRunner(RuntimeArgs(model=str(directory), device="cpu", dtype="float32", page_size=page_size,
                                           cpu_kv_tokens=2048, max_running_requests=8))
        for page_size in (1, 4)
    }
    return hf, runners


def prompts(seed: int, lengths=(5, 17, 11, 1)) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=generator).tolist() for n in lengths]


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("page_size", [1, 4])
def test_batched_prefill_matches_transformers(models, page_size):
    hf, runners = models
    batch = prompts(0)
    with Sequences(runners[page_size], len(batch)) as seqs:
        ours = seqs.extend(list(range(len(batch))), batch, all_logits=True)
    reference = torch.cat([hf_logits(hf, p) for p in batch])
    assert rel_err(ours, reference) <= MAX_REL_ERR


@pytest.mark.parametrize("page_size", [1, 4])
def test_mixed_extend_and_decode_batches_match_transformers(models, page_size):
    """Sequences grow in uneven chunks; each step mixes sequences extending several tokens with ones decoding
    one, over prefixes that end mid-page."""
    hf, runners = models
    full = prompts(1, lengths=(23, 30, 14))
    chunk_plan = [[3, 9, 14], [1, 7, 5], [6, 1, 1], [13, 13, 1]]
    fed = [0, 0, 0]
    with Sequences(runners[page_size], len(full)) as seqs:
        for sizes in chunk_plan:
            which = [i for i, n in enumerate(sizes) if fed[i] + n <= len(full[i])]
            chunks = [full[i][fed[i] : fed[i] + sizes[i]] for i in which]
            ours = seqs.extend(which, chunks, all_logits=True)
            reference = torch.cat([hf_logits(hf, full[i][: fed[i] + sizes[i]])[-sizes[i] :] for i in which])
            assert rel_err(ours, reference) <= MAX_REL_ERR
            for i in which:
                fed[i] += sizes[i]


def test_memory_is_returned(models):
    _, runners = models
    runner = runners[4]
    free_pages, free_rows = runner.allocator.num_free_pages, runner.req_to_token.num_free_rows
    with Sequences(runner, 2) as seqs:
        seqs.extend([0, 1], prompts(2, lengths=(9, 3)))
        assert runner.allocator.num_free_pages == free_pages - 3 - 1
    assert runner.allocator.num_free_pages == free_pages
    assert runner.req_to_token.num_free_rows == free_rows


def test_greedy_generation_matches_transformers(models):
    from runtime.generate import GenerationParams, generate

    hf, runners = models
    batch = prompts(3, lengths=(4, 12, 7))
    ours = generate(runners[1], batch, GenerationParams(max_new_tokens=16, ignore_eos=True))
    for prompt, generation in zip(batch, ours):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
        assert list(generation.token_ids) == out[0, len(prompt) :].tolist()
