"""The radix prefix cache: matching, splitting, duplicate freeing, locking, LRU eviction, DFS order, and a
stateful property test against a dict-of-pages reference model."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runtime.memory import OutOfSlotsError, PageAllocator
from runtime.radix_cache import Node, RadixCache


def make(page_size: int = 1, num_pages: int = 64, disable: bool = False) -> RadixCache:
    return RadixCache(PageAllocator(num_pages, page_size), disable=disable)


def compute(cache: RadixCache, slots: torch.Tensor, n: int) -> torch.Tensor:
    """``slots`` extended by ``n`` freshly allocated ones, as a forward pass would."""
    last = slots[-1:] if len(slots) else torch.zeros(1, dtype=torch.int64)
    new = cache.allocator.extend(last, torch.tensor([len(slots)]), torch.tensor([n]))
    return torch.cat([slots, new])


def owned(slots: torch.Tensor, prefix_len: int, page_size: int) -> int:
    """Slots a request owns outside the tree, in whole pages."""
    return int(torch.unique(slots[prefix_len:] // page_size).numel()) * page_size


def run_to_finish(cache: RadixCache, tokens: list[int]) -> torch.Tensor:
    """A whole request lifecycle: match + lock, compute the rest, cache as finished. Returns its slots."""
    m = cache.match_prefix(tokens)
    cache.lock(m.node)
    slots = compute(cache, m.slots, len(tokens) - len(m.slots))
    cache.check_integrity(owned(slots, len(m.slots), cache.page_size))
    cache.cache_prefix(tokens, slots, len(m.slots), m.node, finished=True)
    cache.check_integrity(0)
    return slots


def node_paths(cache: RadixCache) -> set[tuple[int, ...]]:
    """The token path to every node but the root, read without touching access times."""
    out, stack = set(), [(cache.root, ())]
    while stack:
        node, prefix = stack.pop()
        out.add(prefix + node.key)
        stack += [(c, prefix + node.key) for c in node.children.values()]
    return out - {()}


def usable(cache: RadixCache) -> int:
    return (cache.allocator.num_pages - 1) * cache.page_size


def test_match_on_empty_tree():
    cache = make()
    m = cache.match_prefix([1, 2, 3])
    assert m.slots.dtype == torch.int64 and m.slots.numel() == 0 and m.node is cache.root
    assert cache.cached_size == 0 and cache.evict(10) == 0
    cache.check_integrity(0)


def test_insert_then_match_full_and_partial_splits_the_node():
    cache = make()
    slots = run_to_finish(cache, [1, 2, 3, 4, 5])
    assert cache.cached_size == cache.evictable_size == 5
    full = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert full.slots.tolist() == slots.tolist() and full.node.key == (1, 2, 3, 4, 5)
    partial = cache.match_prefix([1, 2, 3, 9])
    cache.check_integrity(0)
    assert partial.slots.tolist() == slots[:3].tolist()
    assert partial.node.key == (1, 2, 3) and list(partial.node.children.values()) == [full.node]
    assert full.node.key == (4, 5) and full.node.parent is partial.node  # the held node keeps its depth
    assert cache.match_prefix([1, 2, 3, 4, 5]).slots.tolist() == slots.tolist()
    assert cache.cached_size == 5
    assert cache.pretty().splitlines() == [
        "[] len=0 lock=0 t=0", "  [1, 2, 3] len=3 lock=0 t=5", "    [4, 5] len=2 lock=0 t=5",
    ]


def test_page_size_4_caches_whole_pages_only():
    cache = make(page_size=4)
    tokens = list(range(10, 20))  # 2 full pages + 2 tokens
    slots = run_to_finish(cache, tokens)
    assert cache.cached_size == 8  # the partial page was freed at finish
    assert cache.allocator.num_free_slots == usable(cache) - 8
    assert cache.match_prefix(tokens).slots.tolist() == slots[:8].tolist()
    assert cache.match_prefix(tokens[:7]).slots.tolist() == slots[:4].tolist()  # query truncated to pages
    assert cache.match_prefix(tokens[:3]).slots.numel() == 0
    diverged = cache.match_prefix(tokens[:6] + [0, 0])  # differs inside the 2nd page: split at the page edge
    cache.check_integrity(0)
    assert diverged.slots.tolist() == slots[:4].tolist() and diverged.node.key == tuple(tokens[:4])


def test_page_size_4_unfinished_keeps_the_partial_page():
    cache = make(page_size=4)
    tokens = list(range(10))
    m = cache.match_prefix(tokens)
    cache.lock(m.node)
    slots = compute(cache, m.slots, 10)
    canon, node = cache.cache_prefix(tokens, slots, 0, m.node, finished=False)
    assert canon.tolist() == slots[:8].tolist() and node.lock_ref == 1
    assert cache.protected_size == 8 and cache.evictable_size == 0
    cache.check_integrity(4)  # the request still owns the page of its last 2 tokens
    assert cache.evict(100) == 0
    # Next chunk: 3 more tokens fill the partial page and start a new one.
    tokens += [10, 11, 12]
    slots = compute(cache, torch.cat([canon, slots[8:]]), 3)
    assert slots[10].item() == slots[9].item() + 1  # continued inside the request's own page
    canon, node = cache.cache_prefix(tokens, slots, 8, node, finished=False)
    assert canon.tolist() == slots[:12].tolist() and cache.protected_size == 12
    cache.check_integrity(4)
    cache.cache_prefix(tokens, slots, 12, node, finished=True)
    cache.check_integrity(0)
    assert cache.evictable_size == 12 and cache.protected_size == 0


@pytest.mark.parametrize("page_size", [1, 4])
def test_duplicate_insert_frees_the_duplicates(page_size):
    cache = make(page_size=page_size)
    tokens = list(range(3 * page_size))
    a, b = cache.match_prefix(tokens), cache.match_prefix(tokens)  # both miss: both compute everything
    slots_a = compute(cache, a.slots, len(tokens))
    slots_b = compute(cache, b.slots, len(tokens))
    cache.check_integrity(2 * len(tokens))
    cache.cache_prefix(tokens, slots_a, 0, a.node, finished=True)
    cache.check_integrity(len(tokens))
    canon, node = cache.cache_prefix(tokens, slots_b, 0, b.node, finished=False)
    assert canon.tolist() == slots_a.tolist()  # B now reads A's KV; B's own copy went back to the allocator
    assert cache.cached_size == len(tokens)
    cache.check_integrity(0)
    # B goes on with a longer sequence; only the new part is inserted.
    longer = tokens + list(range(100, 100 + page_size))
    slots_b = compute(cache, canon, page_size)
    cache.cache_prefix(longer, slots_b, len(tokens), node, finished=True)
    cache.check_integrity(0)
    assert cache.match_prefix(longer).slots.tolist() == slots_b.tolist()


def test_lock_protects_from_eviction():
    cache = make()
    run_to_finish(cache, [1, 2, 3, 4])
    run_to_finish(cache, [1, 2, 7, 8])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.lock(m.node)
    assert cache.protected_size == 4 and cache.evictable_size == 2
    cache.check_integrity(0)
    assert cache.evict(100) == 2  # only [7, 8]; [1, 2] is on the locked path
    cache.check_integrity(0)
    assert cache.match_prefix([1, 2, 7, 8]).slots.numel() == 2
    assert not cache.reset()
    cache.unlock(m.node)
    assert cache.evictable_size == 4 and cache.protected_size == 0
    assert cache.evict(1) == 2 and cache.evict(1) == 2 and cache.cached_size == 0
    cache.check_integrity(0)
    assert cache.allocator.num_free_slots == usable(cache)


def test_lru_least_recently_matched_leaf_goes_first_and_ancestors_outlive_descendants():
    cache = make()
    a, b, c = [1, 2, 3, 4], [1, 2, 5, 6], [7, 8]
    run_to_finish(cache, a)
    run_to_finish(cache, b)
    run_to_finish(cache, c)
    cache.match_prefix(a)  # now a's leaf and the shared [1, 2] are the most recent; b's leaf the least
    remaining = []
    for _ in range(4):
        assert cache.evict(1) == 2
        cache.check_integrity(0)
        remaining.append(node_paths(cache))  # (a match here would refresh what it looks at)
    # b's leaf, then c, then a's leaf, and only then the shared [1, 2] (same access time as a's leaf).
    assert remaining == [{(1, 2), (1, 2, 3, 4), (7, 8)}, {(1, 2), (1, 2, 3, 4)}, {(1, 2)}, set()]


def test_evict_returns_what_it_freed():
    cache = make()
    run_to_finish(cache, list(range(5)))
    run_to_finish(cache, list(range(10, 13)))
    free = cache.allocator.num_free_slots
    assert cache.evict(4) == 5  # whole leaves: the older one (5 slots) is enough
    assert cache.allocator.num_free_slots == free + 5
    assert cache.evict(1000) == 3 and cache.cached_size == 0
    cache.check_integrity(0)


def test_reset_refuses_while_locked():
    cache = make(page_size=2)
    run_to_finish(cache, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2])
    cache.lock(m.node)
    assert not cache.reset() and cache.cached_size == 4
    cache.unlock(m.node)
    assert cache.reset() and cache.cached_size == 0 and cache.match_prefix([1, 2, 3, 4]).slots.numel() == 0
    cache.check_integrity(0)
    assert cache.allocator.num_free_slots == usable(cache)
    with pytest.raises(AssertionError, match="no longer in the tree"):
        cache.lock(m.node)


def test_disabled_cache_never_reuses():
    cache = make(page_size=2, disable=True)
    tokens = [1, 2, 3, 4, 5]
    m = cache.match_prefix(tokens)
    assert m.node is cache.root and m.slots.numel() == 0
    cache.lock(m.node)
    slots = compute(cache, m.slots, len(tokens))
    canon, node = cache.cache_prefix(tokens, slots, 0, m.node, finished=False)
    assert canon.numel() == 0 and node is cache.root  # the request keeps all of its slots
    cache.check_integrity(6)
    assert cache.match_prefix(tokens).slots.numel() == 0
    assert cache.cache_prefix(tokens, slots, 0, node, finished=True)[1] is None
    cache.check_integrity(0)
    assert cache.cached_size == 0 and cache.allocator.num_free_slots == usable(cache)


def test_long_edges_diverging_past_one_compare_chunk():
    for page_size in (1, 4):
        cache = make(page_size=page_size, num_pages=400)
        tokens = list(range(300))
        slots = run_to_finish(cache, tokens)
        m = cache.match_prefix(tokens[:150] + [-1] * 50)
        cache.check_integrity(0)
        expect = 150 // page_size * page_size
        assert m.slots.tolist() == slots[:expect].tolist() and len(m.node.key) == expect


def test_dfs_order_visits_heavier_subtrees_first():
    cache = make()
    for tokens in ([1, 2, 3, 4], [1, 2, 5, 6], [7, 8]):
        run_to_finish(cache, tokens)
    n34, n56, n78 = (cache.match_prefix(t).node for t in ([1, 2, 3, 4], [1, 2, 5, 6], [7, 8]))
    n12, root = n34.parent, cache.root
    assert n12 is n56.parent and n12.key == (1, 2)
    nodes = [n78, n34, n56, n34, root, n12, n56, n56]
    # root's own request, then [1,2] (6 requests beneath): itself, [5,6] (3) before [3,4] (2); then [7,8].
    assert cache.dfs_order(nodes) == [4, 5, 2, 6, 7, 1, 3, 0]
    # Equal weights: the subtree holding the earliest request goes first.
    assert cache.dfs_order([n56, n78, n34]) == [0, 2, 1]
    assert cache.dfs_order([]) == []


def test_check_integrity_names_the_broken_invariant():
    cache = make()
    run_to_finish(cache, [1, 2, 3])
    with pytest.raises(AssertionError, match="slot accounting"):
        cache.check_integrity(1)
    node = cache.match_prefix([1, 2, 3]).node
    node.lock_ref = 1  # locked without going through lock(): the accounting no longer agrees
    with pytest.raises(AssertionError, match="protected size"):
        cache.check_integrity(0)


# ---- stateful property test -------------------------------------------------------------------------------

_rng = random.Random(0)
BASES = [[_rng.randrange(3) for _ in range(24)] for _ in range(4)]
tokens_strategy = st.builds(
    lambda base, cut, suffix: BASES[base][:cut] + suffix,
    st.integers(0, len(BASES) - 1), st.integers(0, 24), st.lists(st.integers(0, 2), max_size=10),
)


@dataclass(eq=False)
class Req:
    tokens: list[int]
    slots: torch.Tensor  # KV slots of tokens[:len(slots)]
    prefix_len: int  # leading slots that are the tree's
    node: Node  # held locked


class CacheMachine(RuleBasedStateMachine):
    """Random request lifecycles against ``model``: page-aligned cached prefix -> the slots of its last page,
    recorded when that page was first inserted."""

    page_size = 1
    num_pages = 48

    def __init__(self):
        super().__init__()
        self.cache = RadixCache(PageAllocator(self.num_pages, self.page_size))
        self.model: dict[tuple[int, ...], list[int]] = {}
        self.reqs: list[Req] = []

    # -- the reference model --

    def cached_len(self, tokens: list[int]) -> int:
        p, n = self.page_size, 0
        while n + p <= len(tokens) and tuple(tokens[: n + p]) in self.model:
            n += p
        return n

    def model_slots(self, tokens: list[int], n: int) -> list[int]:
        return [s for k in range(self.page_size, n + 1, self.page_size) for s in self.model[tuple(tokens[:k])]]

    def model_insert(self, tokens: list[int], slots: torch.Tensor) -> None:
        p = self.page_size
        for k in range(p, len(tokens) // p * p + 1, p):
            self.model.setdefault(tuple(tokens[:k]), slots[k - p : k].tolist())

    def tree_contents(self) -> dict[tuple[int, ...], list[int]]:
        """What the tree holds, in the model's form."""
        p, out = self.page_size, {}
        stack = [(self.cache.root, ())]
        while stack:
            node, prefix = stack.pop()
            for k in range(0, len(node.key), p):
                out[prefix + node.key[: k + p]] = node.value[k : k + p].tolist()
            stack += [(c, prefix + node.key) for c in node.children.values()]
        return out

    def evict(self, n: int) -> None:
        before, evictable = self.tree_contents(), self.cache.evictable_size
        freed = self.cache.evict(n)
        after = self.tree_contents()
        assert after.items() <= before.items()
        assert freed == (len(before) - len(after)) * self.page_size >= min(n, evictable)
        self.model = after
        for req in self.reqs:
            assert self.cached_len(req.tokens[: req.prefix_len]) == req.prefix_len  # locked: kept

    def pick(self, data) -> Req:
        return self.reqs[data.draw(st.integers(0, len(self.reqs) - 1))]

    # -- one request's steps, as a scheduler would take them --

    def start(self, tokens: list[int]) -> Req:
        m = self.cache.match_prefix(tokens)
        assert m.slots.tolist() == self.model_slots(tokens, self.cached_len(tokens))
        self.cache.lock(m.node)
        req = Req(tokens, m.slots, len(m.slots), m.node)
        self.reqs.append(req)
        return req

    def compute(self, req: Req, n: int) -> bool:
        """Allocate KV for up to ``n`` more tokens, evicting if short; False if the pool is exhausted."""
        n = min(n, len(req.tokens) - len(req.slots))
        for attempt in range(2):
            try:
                req.slots = compute(self.cache, req.slots, n)
                return True
            except OutOfSlotsError:
                if attempt == 0:
                    self.evict(n + self.page_size)
        return False

    def cache_unfinished(self, req: Req) -> None:
        done = req.tokens[: len(req.slots)]
        aligned = len(done) // self.page_size * self.page_size
        self.model_insert(done, req.slots)
        canon, node = self.cache.cache_prefix(done, req.slots, req.prefix_len, req.node, finished=False)
        assert canon.tolist() == self.model_slots(done, aligned)
        assert (node is self.cache.root) == (aligned == 0) and (aligned == 0 or node.lock_ref >= 1)
        req.slots, req.prefix_len, req.node = torch.cat([canon, req.slots[aligned:]]), aligned, node

    def finish(self, req: Req) -> None:
        self.reqs.remove(req)
        done = req.tokens[: len(req.slots)]
        self.model_insert(done, req.slots)
        assert self.cache.cache_prefix(done, req.slots, req.prefix_len, req.node, finished=True)[1] is None

    # -- rules --

    @rule(tokens=tokens_strategy)
    def match_only(self, tokens):
        m = self.cache.match_prefix(tokens)
        assert m.slots.tolist() == self.model_slots(tokens, self.cached_len(tokens))

    @rule(tokens=tokens_strategy, chunk=st.integers(1, 16))
    def serve_whole_request(self, tokens, chunk):
        """Match, then chunked prefill (caching each chunk), then finish."""
        req = self.start(tokens)
        while len(req.slots) < len(tokens) and self.compute(req, chunk):
            self.consistent()
            self.cache_unfinished(req)
            self.consistent()
        self.finish(req)

    @precondition(lambda self: len(self.reqs) < 4)
    @rule(tokens=tokens_strategy)
    def new_request(self, tokens):
        self.start(tokens)

    @precondition(lambda self: 0 < len(self.reqs) < 4)
    @rule(data=st.data(), suffix=st.lists(st.integers(0, 2), max_size=6))
    def fork_request(self, data, suffix):
        """A new request sharing a running one's prompt (as a DSL fork does): both compute it, so whoever
        caches second must give its copy back."""
        self.start(self.pick(data).tokens + suffix)

    @precondition(lambda self: self.reqs)
    @rule(data=st.data(), n=st.integers(1, 12))
    def compute_some(self, data, n):
        self.compute(self.pick(data), n)

    @precondition(lambda self: self.reqs)
    @rule(data=st.data())
    def cache_some_unfinished(self, data):
        self.cache_unfinished(self.pick(data))

    @precondition(lambda self: self.reqs)
    @rule(data=st.data())
    def finish_some(self, data):
        self.finish(self.pick(data))

    @precondition(lambda self: self.cache.evictable_size)
    @rule(n=st.integers(1, 40))
    def evict_some(self, n):
        self.evict(n)

    @precondition(lambda self: self.cache.cached_size)
    @rule(really=st.integers(0, 3))
    def reset(self, really):
        """(Only one time in four, so the tree gets to grow.)"""
        if really:
            return
        expect = all(req.prefix_len == 0 for req in self.reqs)
        assert self.cache.reset() == expect
        if expect:
            self.model.clear()

    # -- checked after every step --

    @invariant()
    def consistent(self):
        p = self.page_size
        in_use = sum(owned(r.slots, r.prefix_len, p) for r in self.reqs)
        self.cache.check_integrity(in_use)
        assert self.tree_contents() == self.model
        pages = {s // p for r in self.reqs for s in r.slots[r.prefix_len :].tolist()}
        pages |= {s // p for v in self.model.values() for s in v}
        assert len(pages) == in_use // p + len(self.model), "a page has two owners"
        locked = {tuple(r.tokens[:k]) for r in self.reqs for k in range(p, r.prefix_len + 1, p)}
        assert self.cache.protected_size == len(locked) * p


class CacheMachinePage4(CacheMachine):
    page_size = 4
    num_pages = 16


_settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
TestRadixCachePage1 = CacheMachine.TestCase
TestRadixCachePage1.settings = _settings
TestRadixCachePage4 = CacheMachinePage4.TestCase
TestRadixCachePage4.settings = _settings
