"""A fixed set of sequences living in a model runner's KV memory, extended step by step."""

from __future__ import annotations

import torch

from runtime.forward_batch import ForwardBatch
from runtime.model_runner import ModelRunner


class Sequences:
    """``count`` sequences, each with a request row and the KV slots of the tokens fed so far.

    ``extend`` feeds new tokens to any subset of them in one forward pass. Use as a context manager (or call
    ``release``) so every row and slot returns to the runner."""

    def __init__(self, runner: ModelRunner, count: int):
        self.runner = runner
        self.rows = torch.tensor(runner.req_to_token.alloc(count))
        self.lens = torch.zeros(count, dtype=torch.int64)
        self.last_slots = torch.zeros(count, dtype=torch.int64)

    def extend(self, which: list[int], tokens: list[list[int]], all_logits: bool = False) -> torch.Tensor:
        """Feed ``tokens[j]`` to sequence ``which[j]``; logits of each one's last new token (or of all)."""
        idx = torch.tensor(which, dtype=torch.int64)
        extend_lens = torch.tensor([len(t) for t in tokens], dtype=torch.int64)
        if int((self.lens[idx] + extend_lens).max()) > self.runner.context_length:
            raise ValueError(f"a sequence would exceed the context length {self.runner.context_length}")
        slots = self.runner.allocator.extend(self.last_slots[idx], self.lens[idx], extend_lens)
        batch = ForwardBatch.build(
            torch.tensor([t for seq in tokens for t in seq]), self.rows[idx], self.lens[idx], extend_lens,
            slots, self.runner.device,
        )
        logits = self.runner.forward(batch, all_logits=all_logits)
        self.lens[idx] += extend_lens
        self.last_slots[idx] = slots[torch.cumsum(extend_lens, 0) - 1]
        return logits

    def release(self) -> None:
        table = self.runner.req_to_token.table
        for row, length in zip(self.rows.tolist(), self.lens.tolist()):
            self.runner.allocator.free_slots(table[row, :length])
        table[self.rows] = 0
        self.runner.req_to_token.free(self.rows.tolist())
        self.lens.zero_()

    def __enter__(self) -> "Sequences":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
