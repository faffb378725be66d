"""Shortest completions: how few tokens an automaton needs from each state to reach a complete output.

The token budget rule (`docs/constraints.md`) keeps a constrained gen valid when its tokens run out: a token is
allowed only if what it leaves to do still fits in the tokens that remain after it. These are the distances it
reads: exact token counts for a regex's states (`token_distances`, from the states each state's tokens lead to),
and bounds for automata too large to index eagerly (`byte_distances`) and for grammar terminals
(`completion_tokens`: the shortest remaining text, tokenized greedily).
"""

from __future__ import annotations

import weakref

import numpy as np

from sglang_dsl.compiler.automaton import ByteDFA

UNREACHABLE = np.iinfo(np.int32).max // 2  # distance of a state from which acceptance cannot be reached
_BYTE_DISTANCES: "weakref.WeakKeyDictionary[ByteDFA, np.ndarray]" = weakref.WeakKeyDictionary()


def token_distances(num_states: int, src: np.ndarray, dst: np.ndarray, accepting: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Given the edges ``src[i] -> dst[i]`` (a token leads from one state to another), ``distances[s]``: the
    fewest edges from ``s`` to an accepting state, and ``thresholds[s]``: the largest finite distance among the
    states ``s`` leads to (0 when none). Breadth first from the accepting states, backwards, one level at a
    time."""
    distances = np.full(num_states, UNREACHABLE, dtype=np.int32)
    distances[accepting[:num_states]] = 0
    order = np.argsort(dst, kind="stable")
    dst_sorted, src_sorted = dst[order], src[order]
    bounds = np.searchsorted(dst_sorted, np.arange(num_states + 1))
    frontier = np.flatnonzero(distances == 0)
    level = 0
    while frontier.size:
        level += 1
        starts, counts = bounds[frontier], bounds[frontier + 1] - bounds[frontier]
        total = int(counts.sum())
        if total == 0:
            break
        offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        preds = np.unique(src_sorted[offsets + np.arange(total)])
        frontier = preds[distances[preds] == UNREACHABLE]
        distances[frontier] = level
    thresholds = np.zeros(num_states, dtype=np.int32)
    if src.size:
        ahead = distances[dst]
        finite = ahead < UNREACHABLE
        np.maximum.at(thresholds, src[finite], ahead[finite])
    return distances, thresholds


def byte_distances(dfa: ByteDFA, usable: np.ndarray) -> np.ndarray:
    """``[S]`` int32: the fewest bytes from each state to acceptance, reading only the bytes ``usable`` marks
    (``[256]`` bool: the bytes that are tokens on their own, so the count bounds the tokens needed)."""
    s = dfa.num_states
    sub = dfa.transitions[:s][:, usable].astype(np.int64)
    src = np.repeat(np.arange(s, dtype=np.int64), sub.shape[1])
    dst = sub.reshape(-1)
    keep = dst != dfa.dead
    distances, _ = token_distances(s, src[keep], dst[keep], dfa.accepting)
    return distances


def shortest_completion(dfa: ByteDFA, state: int) -> bytes | None:
    """The shortest bytes leading ``state`` to acceptance (the smallest byte first among equals), or None."""
    distances = _BYTE_DISTANCES.get(dfa)
    if distances is None:  # with the dead state's distance at the end, so that a row of targets indexes it
        distances = _BYTE_DISTANCES[dfa] = np.append(byte_distances(dfa, np.ones(256, dtype=bool)), UNREACHABLE)
    if distances[state] >= UNREACHABLE:
        return None
    out = bytearray()
    while not dfa.accepting[state]:
        row = dfa.transitions[state]
        byte = int(np.flatnonzero(distances[row] == distances[state] - 1)[0])
        out.append(byte)
        state = int(row[byte])
    return bytes(out)


def greedy_token_count(by_bytes: dict[bytes, int], data: bytes, longest: int) -> int | None:
    """How many tokens spell ``data`` taking the longest token at each step (an upper bound on the fewest), or
    None when some byte is no token."""
    count, i = 0, 0
    while i < len(data):
        for size in range(min(longest, len(data) - i), 0, -1):
            if data[i : i + size] in by_bytes:
                break
        else:
            return None
        i += size
        count += 1
    return count
