"""A radix tree over token ids whose nodes own KV slots: prefix reuse across requests (RadixAttention).

Each edge holds a run of token ids (``key``) and the KV slots that hold them (``value``, one slot per token).
With ``page_size > 1`` only whole pages are cached: every key/value length is a multiple of ``page_size``,
nodes split only at page boundaries, and a node's children are keyed by their first page of tokens (by
their first token when ``page_size == 1``).

Ownership: a slot is either free in the allocator, owned by the tree (``cached_size``), or owned by a
running request. Requests pin their matched path with ``lock``; pinned tokens count as ``protected_size``,
the rest as ``evictable_size``. ``evict`` frees unpinned leaves, least recently used first, so ancestors
always outlive their descendants. The root holds no tokens and is never evicted.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from runtime.memory import PageAllocator

_ids = itertools.count()
_COMPARE_CHUNK = 64  # tokens compared per slice while looking for where two keys diverge


def _empty_slots() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


@dataclass(eq=False)
class Node:
    """One edge of the tree and the node below it; compared and hashed by identity."""

    key: tuple[int, ...]
    value: torch.Tensor
    parent: Node | None
    children: dict[int | tuple[int, ...], Node] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0
    uid: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        head = list(self.key[:8]) + (["..."] if len(self.key) > 8 else [])
        return f"{head} len={len(self.key)} lock={self.lock_ref} t={self.last_access}"


@dataclass(frozen=True)
class PrefixMatch:
    """The longest cached page-aligned prefix: its slots and the node where it ends (the root when empty)."""

    slots: torch.Tensor
    node: Node


class RadixCache:
    """Prefix cache over a ``PageAllocator``; ``disable=True`` keeps the interface but never reuses anything."""

    def __init__(self, allocator: PageAllocator, disable: bool = False):
        self.allocator = allocator
        self.page_size = allocator.page_size
        self.disable = disable
        self._clock = 0
        self.root = Node(key=(), value=_empty_slots(), parent=None)
        self.evictable_leaves: set[Node] = set()
        self._evictable = 0
        self._protected = 0

    # ---- sizes -------------------------------------------------------------------------------------------

    @property
    def evictable_size(self) -> int:
        """Cached slots on no locked path."""
        return self._evictable

    @property
    def protected_size(self) -> int:
        """Cached slots pinned by at least one lock."""
        return self._protected

    @property
    def cached_size(self) -> int:
        return self._evictable + self._protected

    # ---- lookup and insertion ----------------------------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of ``token_ids``, truncated to whole pages; never allocates.

        Splits an edge the match ends inside, so the returned node ends exactly at the prefix, and refreshes
        the access time of every node on the path."""
        if self.disable:
            return PrefixMatch(_empty_slots(), self.root)
        aligned = len(token_ids) // self.page_size * self.page_size
        node, _, values = self._walk(tuple(token_ids[:aligned]))
        return PrefixMatch(torch.cat(values) if values else _empty_slots(), node)

    def cache_prefix(
        self, token_ids: Sequence[int], slots: torch.Tensor, prefix_len: int, node: Node, *, finished: bool
    ) -> tuple[torch.Tensor, Node | None]:
        """Hand a request's computed KV to the tree.

        ``slots[i]`` holds the KV of ``token_ids[i]`` (equal lengths). The first ``prefix_len`` slots are
        the tree's own, reached through ``node``, which the request holds locked; the rest are the request's.
        Inserts the page-aligned part ``token_ids[:aligned]``, frees the request's slots for positions the
        tree already had (``slots[prefix_len:already_cached]``) and unlocks ``node``.

        ``finished``: also frees ``slots[aligned:]`` and returns ``(empty, None)``; the request owns nothing.
        Otherwise locks the node ending at ``aligned`` and returns ``(tree slots of token_ids[:aligned],
        that node)``: the request must use those slots as its first ``aligned`` ones (its new prefix_len)
        and keeps owning ``slots[aligned:]``, its partial last page.

        Disabled: ``prefix_len`` must be 0; finished frees all of ``slots``, unfinished returns
        ``(empty, root)`` and the request keeps all of its slots."""
        p = self.page_size
        assert len(slots) == len(token_ids), f"{len(slots)} slots for {len(token_ids)} tokens"
        assert prefix_len % p == 0 and prefix_len <= len(slots), f"bad prefix_len {prefix_len}"
        if self.disable:
            assert prefix_len == 0, "a disabled cache never hands out a prefix"
            if finished:
                self.allocator.free_slots(slots)
                return _empty_slots(), None
            return _empty_slots(), self.root
        aligned = len(token_ids) // p * p
        new_node, already_cached, values = self._insert(tuple(token_ids[:aligned]), slots[:aligned])
        assert already_cached >= prefix_len, "the request's locked prefix is no longer in the tree"
        self.unlock(node)
        duplicates = slots[prefix_len:already_cached]
        if finished:
            self.allocator.free_slots(torch.cat([duplicates, slots[aligned:]]))
            return _empty_slots(), None
        self.allocator.free_slots(duplicates)
        self.lock(new_node)
        return (torch.cat(values) if values else _empty_slots()), new_node

    def _insert(self, key: tuple[int, ...], slots: torch.Tensor) -> tuple[Node, int, list[torch.Tensor]]:
        """Make ``key`` cached, taking ``slots`` for the part not yet cached; returns (its last node, how
        many tokens were already cached, the tree's slot tensors along the path)."""
        node, matched, values = self._walk(key)
        if matched < len(key):
            leaf = Node(key=key[matched:], value=slots[matched:].clone(), parent=node, last_access=self._clock)
            node.children[self._child_key(key, matched)] = leaf
            self.evictable_leaves.discard(node)
            self.evictable_leaves.add(leaf)
            self._evictable += len(key) - matched
            node = leaf
            values.append(leaf.value)
        return node, matched, values

    def _walk(self, key: tuple[int, ...]) -> tuple[Node, int, list[torch.Tensor]]:
        """Follow ``key`` (page-aligned) down the tree as far as it is cached, splitting the edge it ends
        inside and touching the path. Returns (last node, matched length, slot tensors along the path)."""
        self._clock += 1
        node, pos, values = self.root, 0, []
        while pos < len(key):
            child = node.children.get(self._child_key(key, pos))
            if child is None:
                break
            n = self._match_len(child.key, key, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = self._clock
            values.append(child.value)
            node, pos = child, pos + n
        return node, pos, values

    def _child_key(self, key: tuple[int, ...], start: int) -> int | tuple[int, ...]:
        return key[start] if self.page_size == 1 else key[start : start + self.page_size]

    def _match_len(self, edge: tuple[int, ...], key: tuple[int, ...], start: int) -> int:
        """How many leading tokens of ``edge`` equal ``key[start:]``, rounded down to whole pages."""
        n = min(len(edge), len(key) - start)
        if edge[:n] == key[start : start + n]:
            return n
        i = 0
        while edge[i : i + _COMPARE_CHUNK] == key[start + i : start + i + _COMPARE_CHUNK]:
            i += _COMPARE_CHUNK
        while edge[i] == key[start + i]:
            i += 1
        return i // self.page_size * self.page_size

    def _split(self, child: Node, n: int) -> Node:
        """Cut ``child``'s edge after ``n`` tokens; the new upper node is returned and ``child`` keeps the
        lower part (so nodes that requests hold stay valid, at the same depth)."""
        assert child.parent is not None and 0 < n < len(child.key)
        upper = Node(
            key=child.key[:n], value=child.value[:n], parent=child.parent,
            lock_ref=child.lock_ref, last_access=child.last_access,
        )
        child.parent.children[self._child_key(child.key, 0)] = upper
        child.key, child.value, child.parent = child.key[n:], child.value[n:], upper
        upper.children[self._child_key(child.key, 0)] = child
        return upper

    # ---- locking -----------------------------------------------------------------------------------------

    def lock(self, node: Node) -> None:
        """Pin the path root..node against eviction (counted; pair with ``unlock``)."""
        while node is not self.root:
            assert node.parent is not None, "cannot lock a node that is no longer in the tree"
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
                self.evictable_leaves.discard(node)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        """Undo one ``lock(node)``."""
        while node is not self.root:
            assert node.lock_ref > 0 and node.parent is not None, "unlock without a matching lock"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
                if not node.children:
                    self.evictable_leaves.add(node)
            node = node.parent

    # ---- eviction ----------------------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` cached slots if that many are evictable, removing unlocked leaves
        least recently used first (a parent becomes a candidate once its last child goes). Returns the number
        of slots freed, which may exceed ``num_tokens`` by less than one leaf."""
        heap = [(leaf.last_access, leaf.uid, leaf) for leaf in self.evictable_leaves]
        heapq.heapify(heap)
        freed: list[torch.Tensor] = []
        num_freed = 0
        while num_freed < num_tokens and heap:
            leaf = heapq.heappop(heap)[2]
            freed.append(leaf.value)
            num_freed += len(leaf.value)
            parent = self._remove_leaf(leaf)
            if parent in self.evictable_leaves:
                heapq.heappush(heap, (parent.last_access, parent.uid, parent))
        if freed:
            self.allocator.free_slots(torch.cat(freed))
        return num_freed

    def _remove_leaf(self, leaf: Node) -> Node:
        parent = leaf.parent
        assert parent is not None
        del parent.children[self._child_key(leaf.key, 0)]
        self.evictable_leaves.discard(leaf)
        self._evictable -= len(leaf.key)
        leaf.parent = None
        if parent is not self.root and not parent.children and parent.lock_ref == 0:
            self.evictable_leaves.add(parent)
        return parent

    def reset(self) -> bool:
        """Free every cached slot and start empty; refused (False) while any node is locked. The root stays
        the same object, so requests holding it (prefix 0) are unaffected."""
        if self._protected:
            return False
        nodes = self._nodes()[1:]
        if nodes:
            self.allocator.free_slots(torch.cat([n.value for n in nodes]))
        for node in nodes:
            node.parent = None
        self.root.children.clear()
        self.evictable_leaves.clear()
        self._evictable = 0
        return True

    # ---- scheduling --------------------------------------------------------------------------------------

    def dfs_order(self, nodes: Sequence[Node]) -> list[int]:
        """Indices into ``nodes`` (each one waiting request's matched node) in depth-first tree order,
        visiting first the children with more requests beneath them (ties: the one holding the earliest
        index). A node's own requests come before its subtree's, in input order. Every node must still be
        in the tree (match again after evicting)."""
        on_node: dict[Node, list[int]] = {}
        for i, node in enumerate(nodes):
            on_node.setdefault(node, []).append(i)
        weight: dict[Node, list[int]] = {}  # node -> [requests beneath, earliest index beneath]
        for node, indices in on_node.items():
            top = node
            while node is not None:
                w = weight.setdefault(node, [0, indices[0]])
                w[0] += len(indices)
                w[1] = min(w[1], indices[0])
                top, node = node, node.parent
            assert top is self.root, "dfs_order got a node that is no longer in the tree"
        order: list[int] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            order += on_node.get(node, ())
            kids = [c for c in node.children.values() if c in weight]
            stack += sorted(kids, key=lambda c: (weight[c][0], -weight[c][1]))  # heaviest on top of the stack
        return order

    # ---- debugging ---------------------------------------------------------------------------------------

    def _nodes(self) -> list[Node]:
        """Every node, parents before children."""
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack += node.children.values()
        return out

    def check_integrity(self, in_use_slots: int) -> None:
        """Assert the accounting invariants; ``in_use_slots`` = slots running requests own outside the tree,
        counted in whole pages (a partly used page counts ``page_size``)."""
        p, alloc = self.page_size, self.allocator
        nodes = self._nodes()[1:]
        values = [n.value for n in nodes]
        cached = sum(len(v) for v in values)
        total = (alloc.num_pages - 1) * p
        assert alloc.num_free_slots + cached + in_use_slots == total, (
            f"slot accounting: free {alloc.num_free_slots} + cached {cached} + in use {in_use_slots} != {total}"
        )
        if values:
            every = torch.cat(values)
            assert every.unique().numel() == every.numel(), "a slot is owned twice in the tree"
            assert int(every.min()) >= p, "the tree owns a slot of the dummy page 0"
        assert self._evictable + self._protected == cached, "evictable + protected != cached"
        assert self._protected == sum(len(n.key) for n in nodes if n.lock_ref), "protected size is off"
        leaves = {n for n in nodes if not n.children and n.lock_ref == 0}
        assert self.evictable_leaves == leaves, "evictable_leaves != the unlocked leaves"
        for node in [self.root, *nodes]:
            for k, child in node.children.items():
                assert child.parent is node and self._child_key(child.key, 0) == k, "child link or key broken"
            if node is not self.root:
                n = len(node.key)
                assert n == len(node.value) and n > 0 and n % p == 0, f"key/value lengths {n}, {len(node.value)}"
                pages = node.value.view(-1, p)
                assert bool((pages == pages[:, :1] + torch.arange(p)).all()), "a node's value is not whole pages"
                assert bool((pages[:, 0] % p == 0).all()), "a node's value is not page-aligned"
                assert node.lock_ref >= sum(c.lock_ref for c in node.children.values()), "lock counts inconsistent"

    def pretty(self) -> str:
        """One line per node, indented by depth: first tokens, length, lock count, last access."""
        lines: list[str] = []
        stack = [(self.root, 0)]
        while stack:
            node, depth = stack.pop()
            lines.append(f"{'  ' * depth}{node!r}")
            stack += [(c, depth + 1) for c in reversed(node.children.values())]
        return "\n".join(lines)
