"""``run_batch`` executing a batch plan (`sglang_dsl.compiler.batch_plan`).

`plan_for` traces the program once, hands its constraints to `Backend.prepare_constraints` (compiled while the
prefixes prefill) and plans the batch with the backend's tokenization (`Backend.prompt_codec`), chat template and
KV page size; it returns ``None`` where a plan cannot help (a backend without a prefix cache)
or cannot be made (the program fails to trace): the batch then runs eagerly as before. `submit_planned` queues
the plan's steps on a thread pool in plan order: each shared prefix is prefilled (``Backend.cache_prefix``)
after its parent and before any of its instances start, and instances start in the plan's depth-first order.
Prefills are hints: one that fails leaves its instances to compute the prefix themselves (their own requests
report a real failure). With the runtime's KV pool size known, `KvWindow` holds groups back until they fit, so a
batch larger than the pool runs group after group instead of evicting prefixes before their instances read
them."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from sglang_dsl.compiler.batch_plan import BatchPlan, SharedPrefix, plan_batch
from sglang_dsl.compiler.codec import CHARACTERS
from sglang_dsl.lang import loop
from sglang_dsl.lang.state import ProgramState

if TYPE_CHECKING:
    from backends.base import Backend
    from sglang_dsl.lang.function import SglFunction

log = logging.getLogger(__name__)
# The share of the KV pool a plan fills with prompts; the rest is for generated tokens and the runtime's reserve.
KV_HEADROOM = 0.75


def plan_for(function: "SglFunction", arguments: list[dict[str, Any]], backend: "Backend") -> BatchPlan | None:
    """The plan of running ``function`` over ``arguments`` on ``backend``, or ``None`` (see the module doc)."""
    if not backend.capabilities.prefix_cache:
        return None
    try:
        graph = function.trace()
    except Exception as err:  # noqa: BLE001 -- an untraceable program simply runs eagerly
        log.debug("run_batch of %s runs unplanned: tracing failed (%s)", function.name, err)
        return None
    _prepare_constraints(graph, backend)
    codec = backend.prompt_codec() or CHARACTERS
    return plan_batch(graph, arguments, codec, template=backend.chat_template(), page_size=_page_size(backend))


def _page_size(backend: "Backend") -> int:
    """The backend's KV page size (cache hits come in whole pages), 1 when it does not say."""
    try:
        return int(backend.server_info().get("page_size") or 1)
    except Exception as err:  # noqa: BLE001 -- only the predictions depend on it
        log.debug("no page size from %s: %s", backend.name, err)
        return 1


def _prepare_constraints(graph, backend: "Backend") -> None:
    """Hand the program's constraints to the backend to compile while the prefixes prefill."""
    from sglang_dsl.compiler.constraint_plan import constraint_specs
    from sglang_dsl.compiler.errors import ConstraintError

    try:
        specs = list(constraint_specs(graph))
    except ConstraintError as err:  # the gen's own request reports it, naming the node
        log.debug("constraints of %s are not compiled ahead: %s", graph.name, err)
        return
    if specs:
        backend.prepare_constraints(specs)


def kv_budget(plan: BatchPlan, backend: "Backend") -> int | None:
    """The share of the KV pool the plan's prompt tokens may fill (`KV_HEADROOM`; ``None``: the pool is unknown,
    or the plan does not count tokens)."""
    if plan.granularity != "token":
        return None
    try:
        return int(int(backend.server_info().get("max_total_num_tokens") or 0) * KV_HEADROOM) or None
    except Exception:  # noqa: BLE001 -- without it, groups are not held back
        return None


def submit_planned(plan: BatchPlan, pool: ThreadPoolExecutor, backend: "Backend",
                   run: Callable[[int], ProgramState], budget: int | None = None) -> list[Future[ProgramState]]:
    """Queue ``plan``'s steps on ``pool`` (prefills through ``backend``; ``run(i)`` runs instance ``i``);
    returns the instances' futures in input order. With a KV ``budget`` (tokens), a group starts only when it
    fits beside the groups still running that are not its ancestors (`KvWindow`)."""
    window = KvWindow(plan, budget) if budget else None
    prefilled: dict[int, Future[None]] = {}
    runs: dict[int, Future[ProgramState]] = {}
    for kind, key in plan.order:
        if kind == "prefill":
            prefix = plan.prefixes[key]
            parent = prefilled.get(prefix.parent) if prefix.parent is not None else None
            prefilled[key] = pool.submit(_prefill, backend, prefix, parent, window)
        else:
            home = plan.instances[key].prefix
            runs[key] = pool.submit(_after, prefilled.get(home) if home is not None else None, run, key, window)
    return [runs[i] for i in range(len(plan.instances))]


def _prefill(backend: "Backend", prefix: SharedPrefix, parent: Future[None] | None,
             window: "KvWindow | None") -> None:
    from backends.base import Prompt

    if parent is not None:
        parent.result()
    if window is not None:
        window.enter(("prefix", prefix.id))
    try:
        loop.run(backend.cache_prefix(Prompt(prefix.text)))
    except Exception as err:  # noqa: BLE001 -- a hint; the instances' own requests report real failures
        log.warning("prefilling a shared prefix of %d characters failed: %s", len(prefix.text), err)


def _after(prefill: Future[None] | None, run: Callable[[int], ProgramState], index: int,
           window: "KvWindow | None") -> ProgramState:
    if prefill is not None:
        prefill.result()
    if window is not None and prefill is None:
        window.enter(("instance", index))
    try:
        return run(index)
    finally:
        if window is not None:
            window.finished(index)


Unit = tuple[str, int]  # ("prefix", id): a shared prefix with its direct instances; ("instance", i): a lone one


class KvWindow:
    """Holds groups back so that the KV of the groups running together fits the pool, and none is evicted
    before its instances have read it. A unit (a shared prefix and the instances directly under it, or an
    instance under no prefix) needs the tokens it computes; it stays in flight until every instance below it
    finished. A unit enters when the units in flight that are not its ancestors (whose KV it reuses) leave it
    room, or when none are in flight. Units enter in plan order and wait only for units queued before them, so
    a thread pool running the plan's steps in order never deadlocks."""

    def __init__(self, plan: BatchPlan, budget: int) -> None:
        self.plan, self.budget = plan, budget
        self.changed = threading.Condition()
        self.in_flight: dict[Unit, int] = {}  # unit -> its tokens
        self.pending: dict[Unit, int] = {}  # unit -> instances below it still running

    def size(self, unit: Unit) -> int:
        kind, key = unit
        if kind == "instance":
            return self.plan.instances[key].new_tokens
        return self.plan.prefixes[key].new_tokens + sum(i.new_tokens for i in self.plan.instances
                                                        if i.prefix == key)

    def ancestors(self, unit: Unit) -> set[Unit]:
        out: set[Unit] = set()
        parent = self.plan.prefixes[unit[1]].parent if unit[0] == "prefix" else None
        while parent is not None:
            out.add(("prefix", parent))
            parent = self.plan.prefixes[parent].parent
        return out

    def enter(self, unit: Unit) -> None:
        size, ancestors = self.size(unit), self.ancestors(unit)
        below = 1 if unit[0] == "instance" else len(self.plan.prefixes[unit[1]].instances)

        def room() -> bool:
            others = [tokens for u, tokens in self.in_flight.items() if u not in ancestors]
            return not others or sum(others) + size <= self.budget

        with self.changed:
            self.changed.wait_for(room)
            self.in_flight[unit], self.pending[unit] = size, below

    def finished(self, index: int) -> None:
        """Instance ``index`` ended: the units it was below lose one pending instance."""
        prefix = self.plan.instances[index].prefix
        units = [("instance", index)] if prefix is None else [("prefix", prefix), *self.ancestors(("prefix", prefix))]
        with self.changed:
            for unit in units:
                if unit in self.pending:
                    self.pending[unit] -= 1
                    if self.pending[unit] == 0:
                        del self.pending[unit], self.in_flight[unit]
            self.changed.notify_all()
