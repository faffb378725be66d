"""What a run did at each node: run a graph's static part on a backend and collect per-node stats.

`run_graph` interprets the graph (`sglang_dsl.ir.interpreter`) on a fresh program state, remembering which
expression object each node appended; the executors record a `NodeRun` per expression they ran
(`sglang_dsl.lang.executor`), so each record is credited to its node by identity. A ``fork`` or ``join`` node
appends nothing: its time is its own work, after what it waits for has run (a fork caches the shared prefix
once its stream's queued nodes ran; a join merges the branches once they finished).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.interpreter import Interpreter
from sglang_dsl.ir.nodes import Fork, Join, Node
from sglang_dsl.lang import exprs
from sglang_dsl.lang.executor import Executor, NodeRun
from sglang_dsl.lang.params import SamplingParams
from sglang_dsl.lang.state import ProgramState

if TYPE_CHECKING:
    from backends.base import Backend

# Meta keys a backend may use for tokens a constraint forced in (jump-forward), first one present wins.
FORCED_KEYS = ("forced_tokens", "jump_forward_tokens")


@dataclass(frozen=True)
class NodeStats:
    """One node's share of a run: wall ``seconds``; for a request (gen, select) the prompt tokens it sent,
    how many of them the prefix cache served, the tokens generated, and the tokens a constraint forced (when
    the backend's meta reports them); ``None`` where the node made no request or the meta lacks the key.
    ``request_nodes`` > 1: the node ran in a fused segment, one request for that many nodes, and ``seconds`` is
    the whole request's time."""

    seconds: float
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    forced_tokens: int | None = None
    request_nodes: int = 1

    @property
    def computed_tokens(self) -> int | None:
        """Prompt tokens the runtime had to compute (not served from the cache)."""
        if self.prompt_tokens is None:
            return None
        return max(self.prompt_tokens - (self.cached_tokens or 0), 0)

    @property
    def notable(self) -> bool:
        """Worth showing in the node's box: it made a request, or took at least a millisecond."""
        return self.prompt_tokens is not None or self.seconds >= 0.001

    def lines(self) -> tuple[str, ...]:
        """Short lines for a box: the time and output tokens, then the prompt's cached/computed split."""
        head = [_duration(self.seconds)]
        if self.request_nodes > 1:
            head[0] += f" (one request, {self.request_nodes} nodes)"
        if self.completion_tokens is not None:
            head.append(f"{self.completion_tokens} generated")
        if self.forced_tokens is not None:
            head.append(f"{self.forced_tokens} forced")
        if self.prompt_tokens is None:
            return (" · ".join(head),)
        prompt = f"prompt {self.prompt_tokens}: {self.cached_tokens or 0} cached, {self.computed_tokens} computed"
        return " · ".join(head), prompt

    def summary(self) -> str:
        """All of `lines` on one line."""
        return " · ".join(self.lines())


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


@dataclass(frozen=True)
class RunResult:
    """``stats`` by node name (nodes that ran), the main stream's variables, and the whole run's wall time."""

    stats: dict[str, NodeStats]
    variables: dict[str, Any]
    seconds: float


def run_graph(graph: Graph, backend: Backend, arguments: Mapping[str, Any],
              sampling: Mapping[str, Any] | None = None) -> RunResult:
    """Run ``graph``'s static part on ``backend`` with ``arguments`` (``sampling``: the program's default
    sampling parameters, as ``run()`` takes them) and return per-node stats. Raises the program's error
    (`sglang_dsl.lang.errors.ProgramError`) if a node fails, ``TypeError`` for a missing argument."""
    executor = Executor(graph.name, backend, SamplingParams.build(**(sampling or {})))
    interpreter = _RecordingInterpreter(graph)
    started = time.perf_counter()
    states = interpreter.run(ProgramState(executor), arguments)
    executor.end()
    for state in states.values():
        state.sync()
    seconds = time.perf_counter() - started
    runs = [run for state in states.values() for run in state._ex.runs]
    stats = _credit(runs, interpreter.node_of, interpreter.own_seconds, graph)
    return RunResult(stats, states["main"].variables(), seconds)


class _RecordingInterpreter(Interpreter):
    """The interpreter, noting which node appended each expression and the own time of forks and joins."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        self.node_of: dict[int, str] = {}  # id(leaf) -> node name
        self.leaves: list[exprs.Expr] = []  # keeps every noted leaf alive, so its id stays its own
        self.own_seconds: dict[str, float] = {}

    def append(self, node: Node, expr: exprs.ExprLike) -> None:
        expr = exprs.as_expr(expr)
        for leaf in expr.flat():
            self.node_of[id(leaf)] = node.name
            self.leaves.append(leaf)
        super().append(node, expr)

    def run_node(self, node: Node) -> None:
        if not isinstance(node, (Fork, Join)):
            super().run_node(node)
            return
        waits_for = [self.states[node.stream]] if isinstance(node, Fork) else list(self.groups[node.fork])
        for state in waits_for:  # what the fork or join waits for first is not its own work
            state.sync()
        started = time.perf_counter()
        super().run_node(node)
        self.own_seconds[node.name] = time.perf_counter() - started


def _credit(runs: Iterable[NodeRun], node_of: Mapping[int, str], own_seconds: Mapping[str, float],
            graph: Graph) -> dict[str, NodeStats]:
    credited = [(run, node_of[id(run.leaf)]) for run in runs if id(run.leaf) in node_of]  # else a join's text
    request_nodes: dict[float, set[str]] = {}  # a fused segment's leaves share their request's start
    for run, name in credited:
        request_nodes.setdefault(run.started, set()).add(name)
    totals: dict[str, dict[str, Any]] = {}
    for run, name in credited:
        entry = totals.setdefault(name, {"seconds": 0.0})
        entry["seconds"] += run.seconds
        entry["request_nodes"] = max(entry.get("request_nodes", 1), len(request_nodes[run.started]))
        for key, value in _tokens(run.meta).items():
            entry[key] = entry.get(key, 0) + value
    for name, seconds in own_seconds.items():
        totals.setdefault(name, {"seconds": 0.0})["seconds"] += seconds
    order = {node.name: i for i, node in enumerate(graph)}
    return {name: NodeStats(**totals[name]) for name in sorted(totals, key=order.__getitem__)}


def _tokens(meta: Mapping[str, Any] | list | None) -> dict[str, int]:
    """The token counts in a backend meta (a list of metas for ``n > 1``: summed)."""
    if not meta:
        return {}
    if isinstance(meta, list):
        summed: dict[str, int] = {}
        for one in meta:
            for key, value in _tokens(one).items():
                summed[key] = summed.get(key, 0) + value
        return summed
    counts = {key: int(meta[key]) for key in ("prompt_tokens", "cached_tokens", "completion_tokens")
              if isinstance(meta.get(key), int)}
    forced = next((meta[k] for k in FORCED_KEYS if isinstance(meta.get(k), int)), None)
    if forced is not None:
        counts["forced_tokens"] = forced
    return counts
