"""The page allocator: where new tokens land, and that pages come back."""

from __future__ import annotations

import pytest
import torch

from runtime.memory import OutOfSlotsError, PageAllocator


def lens(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@pytest.mark.parametrize("page_size", [1, 2, 4, 16])
def test_extend_keeps_each_page_to_one_sequence_and_positions_contiguous(page_size):
    allocator = PageAllocator(num_pages=64, page_size=page_size)
    seq_lens, last = lens(0, 0, 0), lens(0, 0, 0)
    owned: list[list[int]] = [[], [], []]
    for step in ([5, 1, 9], [1, 1, 1], [7, 3, 1], [1, 6, 2]):
        extend = lens(*step)
        slots = allocator.extend(last, seq_lens, extend).tolist()
        for i, chunk in enumerate(torch.tensor(slots).split(step)):
            owned[i] += chunk.tolist()
        seq_lens += extend
        last = torch.tensor([o[-1] for o in owned])
    all_slots = [s for o in owned for s in o]
    assert len(set(all_slots)) == len(all_slots) and 0 not in all_slots
    for slots in owned:
        for pos, slot in enumerate(slots):
            assert slot % page_size == pos % page_size  # position within the page is preserved
            if pos % page_size:
                assert slot == slots[pos - 1] + 1
    pages_of = [{s // page_size for s in o} for o in owned]
    assert not (pages_of[0] & pages_of[1]) and not (pages_of[1] & pages_of[2]) and not (pages_of[0] & pages_of[2])


def test_free_returns_pages_and_exhaustion_raises():
    allocator = PageAllocator(num_pages=5, page_size=4)
    slots = allocator.extend(lens(0), lens(0), lens(16))
    assert allocator.num_free_pages == 0
    with pytest.raises(OutOfSlotsError, match="need 1 KV pages, 0 free"):
        allocator.extend(slots[-1:], lens(16), lens(1))
    allocator.free_slots(slots)
    assert allocator.num_free_pages == 4
