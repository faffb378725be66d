"""Batch planning for ``run_batch``: compute every prefix the batch shares once, in an order the cache keeps.

`plan_batch` binds each instance's arguments into the traced graph (`prefix.bound_prefix`): the text before its
first request (when that is a fork's commit, with the head the branches share, `fork_prefix`). The prompts, as
token ids, form a trie; every trie node where instances part ways after sharing at least ``min_shared_tokens``
more tokens than their enclosing group is a `SharedPrefix`, prefilled once (``Backend.cache_prefix``) before its
instances run. The plan's `BatchPlan.order` walks the trie depth-first, subgroups with the longest shared prefix
first, so a group's prefix is used while it is cached and a batch larger than the KV pool finishes one subtree
before the next evicts it.

A shared prefix must survive re-tokenization: its text, decoded from the trie's ids, must encode to exactly those
ids (else it is shortened until it does), so prefilling the text caches tokens the instances' prompts start
with. The plan predicts what the runtime will report for the first request of each instance and for each
prefill: ``cached_tokens`` is the deepest planned prefix, page-aligned, and never the prompt's last token (the
runtime computes its logits). Matches beyond the planned prefixes (instances that happen to share a few tokens
and run one after the other) can only add hits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Sequence

from sglang_dsl.compiler.choice_methods import common_length
from sglang_dsl.compiler.codec import CHARACTERS, PromptCodec, stable_prefix
from sglang_dsl.compiler.fork_prefix import branch_heads, committed_prefix
from sglang_dsl.compiler.plan_data import PlanJson
from sglang_dsl.compiler.prefix import bound_prefix
from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import Fork, Gen, Select

DEFAULT_MIN_SHARED_TOKENS = 2  # a shared prefix must add this many tokens to its group's to be worth a request


@dataclass(frozen=True)
class SharedPrefix:
    """A prefix prefilled once for ``instances``. ``text`` is the whole prefix (its ``tokens`` ids);
    ``parent`` the enclosing shared prefix; ``cached_tokens`` how much of it the parent caches (predicted)."""

    id: int
    parent: int | None
    text: str
    tokens: int
    cached_tokens: int
    instances: tuple[int, ...]

    @property
    def new_tokens(self) -> int:
        return self.tokens - self.cached_tokens


@dataclass(frozen=True)
class InstancePlan:
    """One batch entry (``index`` in input order): its first request (node ``request``, ``None`` when the
    program makes none before its boundary) with ``prompt_tokens`` of which ``cached_tokens`` are predicted to
    come from the deepest shared prefix ``prefix``."""

    index: int
    request: str | None
    prefix: int | None
    prompt_tokens: int
    cached_tokens: int

    @property
    def new_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


Step = tuple[Literal["prefill", "run"], int]


@dataclass(frozen=True)
class BatchPlan(PlanJson):
    """The plan of one ``run_batch``. ``order``: ``("prefill", prefix id)`` and ``("run", instance index)`` in
    execution order (every prefix before its instances). ``granularity``: ``token`` or ``char`` (what the
    counts count). ``ideal_tokens``: the distinct tokens of all first prompts (each distinct prefix once)."""

    program: str
    granularity: str
    page_size: int
    prefixes: tuple[SharedPrefix, ...]
    instances: tuple[InstancePlan, ...]
    order: tuple[Step, ...]
    ideal_tokens: int

    @property
    def prefill_tokens(self) -> int:
        """Tokens the plan predicts the runtime computes for the prefills and first requests."""
        return sum(p.new_tokens for p in self.prefixes) + sum(i.new_tokens for i in self.instances)

    @property
    def cached_tokens(self) -> int:
        """Predicted cache hits of the prefills and first requests."""
        return sum(p.cached_tokens for p in self.prefixes) + sum(i.cached_tokens for i in self.instances)

    @property
    def requests(self) -> int:
        """Runtime requests the plan adds (one prefill per shared prefix)."""
        return len(self.prefixes)

    def __str__(self) -> str:
        from sglang_dsl.compiler.plan_text import format_batch_plan

        return format_batch_plan(self)


def plan_batch(graph: Graph, batch: Sequence[Mapping[str, Any]], codec: PromptCodec = CHARACTERS, *,
               template: Any = None, page_size: int = 1,
               min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS) -> BatchPlan:
    """The plan of running ``graph`` once per argument mapping in ``batch`` (see the module docstring).
    ``codec`` tokenizes as the backend does; ``template`` renders chat roles; ``page_size`` is the runtime's KV
    page size (cache hits are whole pages)."""
    if page_size < 1 or min_shared_tokens < 1:
        raise ValueError("page_size and min_shared_tokens must be positive")
    requests: list[str | None] = []
    prompts: list[tuple[int, ...]] = []
    for arguments in batch:
        info = bound_prefix(graph, arguments, template=template)
        end = graph[info.end] if info.end is not None else None
        text = info.text
        if isinstance(end, Fork) and end.n > 1:  # the fork commits its branches' shared head too
            text = committed_prefix(codec, text, branch_heads(graph, end, arguments))
        ids = tuple(codec.encode(text)) if text else ()
        whole = isinstance(end, (Gen, Select, Fork))
        requests.append(info.end if whole else None)
        prompts.append(ids if whole else ids[:-1])
    builder = _Builder(prompts, codec, page_size, min_shared_tokens)
    builder.build()
    instances = tuple(
        InstancePlan(i, requests[i], builder.home.get(i), len(prompts[i]),
                     builder.hit(builder.depth_of(builder.home.get(i)), len(prompts[i])))
        for i in range(len(prompts)))
    return BatchPlan(graph.name, codec.granularity, page_size, tuple(builder.prefixes), instances,
                     tuple(builder.order), _distinct_tokens(prompts))


class _Builder:
    """Walks the sorted prompts as a trie: a contiguous range of them shares their first and last one's common
    prefix; splitting the range by the next token gives the subgroups."""

    def __init__(self, prompts: list[tuple[int, ...]], codec: PromptCodec, page_size: int, min_shared: int):
        self.prompts, self.codec, self.page_size, self.min_shared = prompts, codec, page_size, min_shared
        self.sorted = sorted(range(len(prompts)), key=lambda i: prompts[i])
        self.prefixes: list[SharedPrefix] = []
        self.order: list[Step] = []
        self.home: dict[int, int] = {}  # instance -> deepest shared prefix

    def depth_of(self, prefix: int | None) -> int:
        return 0 if prefix is None else self.prefixes[prefix].tokens

    def hit(self, cached: int, prompt_tokens: int) -> int:
        """Tokens of a prompt the runtime takes from a cache holding its first ``cached`` tokens."""
        return min(cached, prompt_tokens - 1) // self.page_size * self.page_size if prompt_tokens else 0

    def build(self) -> None:
        """Plan every prompt, depth-first without recursion (a batch can nest groups arbitrarily deep)."""
        stack = [self.group(0, len(self.sorted), None)]
        while stack:
            here, subgroups, singles = stack[-1]
            subgroup = next(subgroups, None)
            if subgroup is not None:
                stack.append(self.group(*subgroup, here))
                continue
            stack.pop()
            for index in singles:
                if here is not None:
                    self.home[index] = here
                self.order.append(("run", index))

    def group(self, lo: int, hi: int, parent: int | None) -> tuple[int | None, Iterator[tuple[int, int]], list[int]]:
        """Start planning the sorted prompts ``lo:hi`` (at least one), all inside ``parent``: its shared prefix
        (prefilled now, if worth it), its subgroups (longest shared prefix first) and its lone prompts."""
        first, last = self.prompts[self.sorted[lo]], self.prompts[self.sorted[hi - 1]]
        shared = common_length(first, last)
        here = parent
        if hi - lo >= 2 and shared - self.depth_of(parent) >= self.min_shared:
            here = self.shared_prefix(first[:shared], parent, lo, hi)
        ranges = sorted(self.split(lo, hi, shared), key=lambda r: -self.shared_length(*r))
        singles = [self.sorted[r_lo] for r_lo, r_hi in ranges if r_hi - r_lo == 1]
        return here, iter([r for r in ranges if r[1] - r[0] >= 2]), singles

    def split(self, lo: int, hi: int, depth: int) -> list[tuple[int, int]]:
        """The ranges of ``lo:hi`` that agree on the token at ``depth`` (prompts ending there: one range each)."""
        ranges, start = [], lo
        for k in range(lo + 1, hi + 1):
            if k == hi or self.key(k, depth) != self.key(start, depth) or self.key(k, depth) is None:
                ranges.append((start, k))
                start = k
        return ranges

    def key(self, k: int, depth: int) -> int | None:
        prompt = self.prompts[self.sorted[k]]
        return prompt[depth] if depth < len(prompt) else None

    def shared_length(self, lo: int, hi: int) -> int:
        return common_length(self.prompts[self.sorted[lo]], self.prompts[self.sorted[hi - 1]]) if hi - lo > 1 \
            else -1

    def shared_prefix(self, ids: tuple[int, ...], parent: int | None, lo: int, hi: int) -> int | None:
        """Add the prefilled prefix ``ids`` (shortened until its text re-encodes to itself); ``parent`` when too
        little is left of it."""
        text, length = stable_prefix(self.codec, ids)
        if length - self.depth_of(parent) < self.min_shared:
            return parent
        members = tuple(sorted(self.sorted[lo:hi]))
        prefix = SharedPrefix(len(self.prefixes), parent, text, length,
                              self.hit(self.depth_of(parent), length), members)
        self.prefixes.append(prefix)
        self.order.append(("prefill", prefix.id))
        return prefix.id


def _distinct_tokens(prompts: Sequence[Sequence[int]]) -> int:
    """Nodes of the trie of ``prompts``: each distinct prefix's last token, counted once."""
    ordered = sorted(prompts)
    total, previous = 0, ()
    for ids in ordered:
        total += len(ids) - common_length(previous, ids)
        previous = ids
    return total
