"""The plan of one program: the graph passes gathered into data the interpreter and the CLI read.

- constant prefix (`prefix.constant_prefix`): what every run shares;
- forks (`plan_forks`): each fork commits its stream's text to the prefix cache (``Backend.cache_prefix``) before
  its branches fan out, together with the head its branches start with alike (`fork_prefix`), so every
  branch's first request finds both cached; the plan names each branch's first model call, the constant text
  all branches append before it, and the join;
- selects (`plan_selects`): each select is scored over the prefix, prefilled once by a request that also returns
  every choice's first-token logprob (`choice_scoring`): then one batch of a scoring row per choice longer than
  one token, and a batch of a row per choice when the method needs unconditional likelihoods;
- constraints (`constraint_plan.plan_constraints`): compiled ahead of time, once each;
- segments (`segments.mark_segments`): straight-line runs that a segments-capable backend runs as one request.

`ProgramPlan.requests` counts the runtime requests one run makes per node (a prefill per fork with several
branches, one per gen sample, a prefill and the scoring batches per select); `fused_requests` the same with
each segment as one request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sglang_dsl.compiler.choice_methods import METHODS_BY_NAME, common_length
from sglang_dsl.compiler.codec import PromptCodec
from sglang_dsl.compiler.constraint import ConstraintCompiler
from sglang_dsl.compiler.constraint_plan import ConstraintPlan, plan_constraints
from sglang_dsl.compiler.fork_prefix import branch_heads, shared_head
from sglang_dsl.compiler.plan_data import PlanJson
from sglang_dsl.compiler.prefix import PrefixInfo, constant_prefix
from sglang_dsl.compiler.segments import Segment, mark_segments
from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import Fork, Gen, Join, Select, Text


@dataclass(frozen=True)
class ForkPlan:
    """Fork ``fork`` of ``stream`` into ``n`` branches: each branch appends ``shared_text`` (constant, the same on
    every branch) and more before its first model call (``first_calls``, one per branch, ``None`` for a branch
    that makes none); with ``commit_prefix`` the stream's text and the stable tokens of ``shared_text`` are
    prefilled once before the branches fan out (`fork_prefix.committed_prefix`). ``join``/``join_mode``/``gathered``
    describe how the branches come back (``None``: never joined)."""

    fork: str
    stream: str
    n: int
    commit_prefix: bool
    shared_text: str
    first_calls: tuple[str | None, ...]
    join: str | None
    join_mode: str | None
    gathered: tuple[str, ...]


@dataclass(frozen=True)
class SelectPlan:
    """Select ``node``: its choices scored in one batched extend over the prefix (``choice_tokens``: each
    choice's token count alone, with a codec), in ``requests`` runtime requests: the prefix's prefill, a scoring
    row per choice longer than a token or merging with the text before it (`_scoring_rows`; per choice without a
    token-level codec), and one per choice more when ``unconditional``."""

    node: str
    stream: str
    choices: tuple[str, ...]
    method: str
    unconditional: bool
    requests: int
    choice_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ProgramPlan(PlanJson):
    """Everything the passes found in one program's graph (see the module docstring). ``nodes``: the graph's
    size; ``requests``: runtime requests of one run without fusion; ``boundary``: why the static part ends
    early (``None``: the whole program is static)."""

    program: str
    arguments: tuple[str, ...]
    granularity: str
    prefix: PrefixInfo
    forks: tuple[ForkPlan, ...]
    selects: tuple[SelectPlan, ...]
    constraints: tuple[ConstraintPlan, ...]
    segments: tuple[Segment, ...]
    nodes: int
    requests: int
    boundary: str | None

    @property
    def fused_requests(self) -> int:
        """Requests when every segment runs as one request (the engine scores its selects itself)."""
        select_requests = {s.node: s.requests for s in self.selects}
        saved = 0
        for segment in self.segments:
            selects = [name for name in segment.nodes if name in select_requests]
            inside = segment.calls - len(selects) + sum(select_requests[name] for name in selects)
            saved += inside - 1
        return self.requests - saved

    def __str__(self) -> str:
        from sglang_dsl.compiler.plan_text import format_program_plan

        return format_program_plan(self)


def plan_program(graph: Graph, codec: PromptCodec | None = None, *, template: Any = None,
                 compiler: ConstraintCompiler | None = None) -> ProgramPlan:
    """Run every pass over ``graph`` (see the module docstring)."""
    forks, selects = plan_forks(graph), plan_selects(graph, codec)
    gens = sum(dict(n.params).get("n") or 1 for n in graph if isinstance(n, Gen))
    requests = gens + sum(s.requests for s in selects) + sum(f.commit_prefix for f in forks)
    boundary = graph.boundary
    return ProgramPlan(
        graph.name, graph.arguments, codec.granularity if codec is not None else "char",
        constant_prefix(graph, codec.encode if codec is not None else None, template=template),
        forks, selects, plan_constraints(graph, compiler), mark_segments(graph), len(graph), requests,
        boundary.reason if boundary is not None else None)


def plan_forks(graph: Graph) -> tuple[ForkPlan, ...]:
    joins = {node.fork: node for node in graph if isinstance(node, Join)}
    plans = []
    for fork in (node for node in graph if isinstance(node, Fork)):
        calls = tuple(next((n.name for n in graph.stream_nodes(branch) if isinstance(n, (Gen, Select))), None)
                      for branch in fork.branches)
        join = joins.get(fork.name)
        plans.append(ForkPlan(fork.name, fork.stream, fork.n, fork.n > 1, shared_head(branch_heads(graph, fork)),
                              calls, join.name if join else None, join.mode if join else None,
                              join.vars if join else ()))
    return tuple(plans)


def plan_selects(graph: Graph, codec: PromptCodec | None = None) -> tuple[SelectPlan, ...]:
    plans = []
    for node in (n for n in graph if isinstance(n, Select)):
        method = METHODS_BY_NAME.get(node.method)
        unconditional = bool(method and method.requires_unconditional_logprobs)
        tokens = tuple(len(codec.encode(c)) for c in node.choices) if codec is not None else None
        rows = _scoring_rows(codec, _text_before(graph, node), node.choices)
        plans.append(SelectPlan(node.name, node.stream, node.choices, node.method, unconditional,
                                1 + rows + len(node.choices) * unconditional, tokens))
    return tuple(plans)


def _text_before(graph: Graph, select: Select) -> str:
    """The constant text its stream appends right before ``select`` ("" when that is not known)."""
    before = ""
    for node in graph.stream_nodes(select.stream):
        if node is select:
            return before
        before = node.parts[-1] if isinstance(node, Text) and isinstance(node.parts[-1], str) else ""
    return before


def _scoring_rows(codec: PromptCodec | None, before: str, choices: tuple[str, ...]) -> int:
    """The scoring rows of a select after ``before`` (`choice_scoring`): a choice needs one when it is longer
    than a token or its first token merges with ``before``'s last; every choice does without a token codec."""
    if codec is None or codec.granularity != "token":
        return len(choices)
    head = list(codec.encode(before))
    rows = 0
    for choice in choices:
        ids = list(codec.encode(before + choice))
        rows += common_length(head, ids) < len(head) or len(ids) - len(head) > 1
    return rows
