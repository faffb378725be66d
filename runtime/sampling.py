"""Choosing the next token from logits, for a whole batch at once."""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token of each row of ``logits [B, V]``: argmax where ``temperature == 0``, else a draw from the
    tempered distribution restricted to the ``top_k`` most likely tokens (``top_k <= 0``: all) and to the
    smallest set whose mass reaches ``top_p``. Per-row parameters are ``[B]`` tensors on the logits' device."""
    greedy = logits.argmax(dim=-1)
    if bool((temperatures == 0).all()):
        return greedy
    scaled = logits / temperatures.clamp(min=1e-6)[:, None]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    keep = (top_k[:, None] <= 0) | (ranks < top_k[:, None])
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    keep &= mass_before < top_p[:, None]
    probs = torch.where(keep, probs, 0.0)
    choice = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator)
    drawn = order.gather(-1, choice).squeeze(-1)
    return torch.where(temperatures == 0, greedy, drawn)
