"""The constraint pass: every ``gen``'s constraint compiled ahead of time, once per distinct constraint.

`constraint_specs` lists the distinct constraints of a graph as the runtime will see them (``dtype`` becomes
SGLang's regex of it, the one every request of a typed gen carries). `plan_constraints` compiles them with a
`ConstraintCompiler` (which caches in memory and on disk) and records each automaton's size and how long
compiling took; without a compiler it only lists them. At run time
the interpreter hands the specs to `Backend.prepare_constraints` before the first request, so compiling
overlaps with prefill (the local runtime compiles on its constraint worker; a request finds its matcher ready).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sglang_dsl.compiler.constraint import ConstraintCompiler, ConstraintSpec
from sglang_dsl.compiler.errors import ConstraintError
from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import Constraint, Gen


@dataclass(frozen=True)
class ConstraintPlan:
    """One distinct constraint: the ``nodes`` that use it, its ``spec_kind``/``source`` as compiled, and, once
    compiled, its automaton's ``states`` (a grammar's: its LALR parser states), the ``mask_bytes`` of its token
    masks (None for a grammar: its masks are made as decoding meets them) and ``compile_seconds`` (``reused``:
    served by the compiler's cache). ``error``: why it does not compile."""

    nodes: tuple[str, ...]
    kind: str
    spec_kind: str
    source: str
    states: int | None = None
    mask_bytes: int | None = None
    compile_seconds: float | None = None
    reused: bool = False
    error: str | None = None


def constraint_spec(constraint: Constraint) -> ConstraintSpec:
    """The runtime's spec of an IR constraint."""
    if constraint.kind == "dtype":
        from sglang_dsl.compiler.choices import dtype_regex

        return ConstraintSpec("regex", dtype_regex(constraint.value))
    return ConstraintSpec("ebnf" if constraint.kind == "grammar" else constraint.kind, constraint.value)


def constraint_specs(graph: Graph) -> dict[ConstraintSpec, tuple[str, ...]]:
    """The distinct constraints of ``graph``'s gens, in first-use order, with the nodes using each."""
    users: dict[ConstraintSpec, list[str]] = {}
    for node in graph:
        if isinstance(node, Gen) and node.constraint is not None:
            users.setdefault(constraint_spec(node.constraint), []).append(node.name)
    return {spec: tuple(nodes) for spec, nodes in users.items()}


def plan_constraints(graph: Graph, compiler: ConstraintCompiler | None = None) -> tuple[ConstraintPlan, ...]:
    """One `ConstraintPlan` per distinct constraint, compiled with ``compiler`` when given."""
    plans = []
    for spec, nodes in constraint_specs(graph).items():
        kind = graph[nodes[0]].constraint.kind  # type: ignore[attr-defined]
        plan = ConstraintPlan(nodes, kind, spec.kind, spec.source)
        plans.append(_compiled(plan, spec, compiler) if compiler is not None else plan)
    return tuple(plans)


def _compiled(plan: ConstraintPlan, spec: ConstraintSpec, compiler: ConstraintCompiler) -> ConstraintPlan:
    from dataclasses import replace

    hits = compiler.stats["memory_hits"] + compiler.stats["disk_hits"]
    started = time.perf_counter()
    try:
        matcher = compiler.compile(spec)
    except ConstraintError as err:
        return replace(plan, error=str(err))
    seconds = time.perf_counter() - started
    index, grammar = getattr(matcher, "index", None), getattr(matcher, "grammar", None)
    states = index.num_states if index is not None else len(grammar.actions) if grammar is not None else None
    return replace(plan, states=states, mask_bytes=getattr(matcher, "nbytes", None), compile_seconds=seconds,
                   reused=compiler.stats["memory_hits"] + compiler.stats["disk_hits"] > hits)
