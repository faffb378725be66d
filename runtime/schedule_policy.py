"""Which waiting requests go first: cache-aware orders (longest cached prefix, depth-first over the radix tree)
and cache-agnostic ones (arrival, priority)."""

from __future__ import annotations

from runtime.radix_cache import PrefixMatch, RadixCache
from runtime.req import Req

SCHEDULE_POLICIES = ("lpm", "dfs-weight", "fcfs", "priority")


def prefix_key(req: Req, cache_limit: int | None = None) -> list[int]:
    """The tokens whose KV a request may take from the cache: everything but its last fill token (whose logits
    must be computed), and nothing past ``logprob_start_len`` when it wants input logprobs."""
    ids = req.fill_ids[: req.fill_len - 1]
    if req.wants_input_logprobs:
        ids = ids[: req.request.logprobs.logprob_start_len]
    return ids[:cache_limit] if cache_limit is not None else ids


def order_waiting(waiting: list[Req], cache: RadixCache, policy: str, queue_limit: int) -> tuple[list[Req], dict[str, PrefixMatch]]:
    """The waiting queue in scheduling order, and the prefix match of every request that was matched."""
    if policy == "priority":
        return sorted(waiting, key=lambda r: (-r.request.priority, r.arrival)), {}
    if policy == "fcfs" or len(waiting) > queue_limit:
        return sorted(waiting, key=lambda r: r.arrival), {}
    matches = {r.rid: cache.match_prefix(prefix_key(r)) for r in waiting}
    if policy == "lpm":
        return sorted(waiting, key=lambda r: (-len(matches[r.rid].slots), r.arrival)), matches
    by_arrival = sorted(waiting, key=lambda r: r.arrival)
    order = cache.dfs_order([matches[r.rid].node for r in by_arrival])
    return [by_arrival[i] for i in order], matches
