"""The two-level KV memory: a request-to-token table, a page allocator, and the per-layer KV buffers.

A *slot* is one token's place in the KV buffers; slots come in pages of ``page_size`` consecutive slots
(``page_size=1`` by default, which makes every token its own page). Page 0 is reserved as a dummy that
padded tokens may write to, so a valid slot is never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class KVCacheSpec:
    """How much KV memory to make and its layout."""

    num_pages: int
    page_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def num_slots(self) -> int:
        return self.num_pages * self.page_size

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize


class KVCache:
    """Per-layer K and V buffers of shape ``[num_slots, num_kv_heads, head_dim]``, indexed by slot."""

    def __init__(self, spec: KVCacheSpec):
        self.spec = spec
        shape = (spec.num_slots, spec.num_kv_heads, spec.head_dim)
        self.k = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        self.v = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]

    def store(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer][slots] = k.to(self.spec.dtype)
        self.v[layer][slots] = v.to(self.spec.dtype)

    def paged(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's buffers viewed as ``[num_pages, page_size, num_kv_heads, head_dim]``."""
        shape = (self.spec.num_pages, self.spec.page_size, self.spec.num_kv_heads, self.spec.head_dim)
        return self.k[layer].view(shape), self.v[layer].view(shape)


class OutOfSlotsError(RuntimeError):
    """The page allocator cannot satisfy a request; the caller may evict or retract and retry."""


class PageAllocator:
    """Hands out and takes back KV pages; free pages live in a host tensor so allocation never syncs."""

    def __init__(self, num_pages: int, page_size: int):
        self.page_size = page_size
        self.num_pages = num_pages
        self._free = torch.arange(1, num_pages, dtype=torch.int64)

    @property
    def num_free_pages(self) -> int:
        return int(self._free.numel())

    @property
    def num_free_slots(self) -> int:
        return self.num_free_pages * self.page_size

    def alloc_pages(self, n: int) -> torch.Tensor:
        if n > self._free.numel():
            raise OutOfSlotsError(f"need {n} KV pages, {self._free.numel()} free")
        pages, self._free = self._free[:n], self._free[n:]
        return pages

    def free_slots(self, slots: torch.Tensor) -> None:
        """Return the pages holding ``slots`` (a page is freed once, however many of its slots are given)."""
        if not slots.numel():
            return
        pages = slots.cpu().to(torch.int64)
        if self.page_size > 1:  # numpy's unique: torch's parallel sort is slow on small CPUs
            pages = torch.from_numpy(np.unique(pages.numpy() // self.page_size))
        self._free = torch.cat([self._free, pages])

    def extend(self, last_slots: torch.Tensor, seq_lens: torch.Tensor, extend_lens: torch.Tensor) -> torch.Tensor:
        """Slots for ``extend_lens[i]`` new tokens after ``seq_lens[i]`` existing ones of each sequence.

        ``last_slots[i]`` is the slot of sequence i's last existing token (ignored when ``seq_lens[i]==0``).
        New tokens fill the rest of the sequence's last page, then new pages. Host tensors in, host tensor out,
        flattened in sequence order."""
        p = self.page_size
        total = int(extend_lens.sum())
        seq_of_token = torch.repeat_interleave(torch.arange(len(seq_lens)), extend_lens, output_size=total)
        starts = torch.cumsum(extend_lens, 0) - extend_lens
        positions = seq_lens[seq_of_token] + torch.arange(total) - starts[seq_of_token]
        needs_page = positions % p == 0
        slots = torch.empty(total, dtype=torch.int64)
        new_pages = self.alloc_pages(int(needs_page.sum()))
        slots[needs_page] = new_pages * p
        # Other tokens follow the previous token's slot: within the sequence's old last page, or within a
        # page started earlier in this extend.
        page_start = torch.cummax(torch.where(needs_page, torch.arange(total), -1), 0).values
        in_old_page = page_start < starts[seq_of_token]
        after_old = last_slots[seq_of_token] + positions - seq_lens[seq_of_token] + 1
        after_new = slots[page_start.clamp(min=0)] + positions % p
        return torch.where(in_old_page, after_old, after_new)


class ReqToTokenPool:
    """A table ``[max_requests, max_context_len]`` mapping (request row, position) to KV slot, on the device."""

    def __init__(self, max_requests: int, max_context_len: int, device: torch.device):
        self.table = torch.zeros((max_requests, max_context_len), dtype=torch.int32, device=device)
        self._free_rows = list(range(max_requests))

    @property
    def max_context_len(self) -> int:
        return self.table.shape[1]

    @property
    def num_free_rows(self) -> int:
        return len(self._free_rows)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free_rows):
            raise OutOfSlotsError(f"need {n} request rows, {len(self._free_rows)} free")
        rows, self._free_rows = self._free_rows[:n], self._free_rows[n:]
        return rows

    def free(self, rows: list[int]) -> None:
        self._free_rows.extend(rows)

    def write(self, rows_per_token: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None:
        self.table[rows_per_token, positions] = slots.to(torch.int32)
