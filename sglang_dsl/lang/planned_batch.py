"""``run_batch`` executing a batch plan (`sglang_dsl.compiler.batch_plan`).

`plan_for` traces the program once, hands its constraints to `Backend.prepare_constraints` (compiled while the
prefixes prefill) and plans the batch with the backend's tokenization (`Backend.prompt_codec`), chat template and
KV page size; it returns ``None`` where a plan cannot help (a backend without a prefix cache)
or cannot be made (the program fails to trace): the batch then runs eagerly as before. `submit_planned` queues
the plan's steps on a thread pool in plan order: each shared prefix is prefilled (``Backend.cache_prefix``)
after its parent and before any of its instances start, and instances start in the plan's depth-first order.
Prefills are hints: one that fails leaves its instances to compute the prefix themselves (their own requests
report a real failure)."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from sglang_dsl.compiler.batch_plan import BatchPlan, plan_batch
from sglang_dsl.compiler.codec import CHARACTERS
from sglang_dsl.lang import loop
from sglang_dsl.lang.state import ProgramState

if TYPE_CHECKING:
    from backends.base import Backend
    from sglang_dsl.lang.function import SglFunction

log = logging.getLogger(__name__)


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


def submit_planned(plan: BatchPlan, pool: ThreadPoolExecutor, backend: "Backend",
                   run: Callable[[int], ProgramState]) -> list[Future[ProgramState]]:
    """Queue ``plan``'s steps on ``pool`` (prefills through ``backend``; ``run(i)`` runs instance ``i``);
    returns the instances' futures in input order."""
    prefilled: dict[int, Future[None]] = {}
    runs: dict[int, Future[ProgramState]] = {}
    for kind, key in plan.order:
        if kind == "prefill":
            prefix = plan.prefixes[key]
            parent = prefilled.get(prefix.parent) if prefix.parent is not None else None
            prefilled[key] = pool.submit(_prefill, backend, prefix.text, parent)
        else:
            home = plan.instances[key].prefix
            runs[key] = pool.submit(_after, prefilled.get(home) if home is not None else None, run, key)
    return [runs[i] for i in range(len(plan.instances))]


def _prefill(backend: "Backend", text: str, parent: Future[None] | None) -> None:
    from backends.base import Prompt

    if parent is not None:
        parent.result()
    try:
        loop.run(backend.cache_prefix(Prompt(text)))
    except Exception as err:  # noqa: BLE001 -- a hint; the instances' own requests report real failures
        log.warning("prefilling a shared prefix of %d characters failed: %s", len(text), err)


def _after(prefill: Future[None] | None, run: Callable[[int], ProgramState], index: int) -> ProgramState:
    if prefill is not None:
        prefill.result()
    return run(index)
