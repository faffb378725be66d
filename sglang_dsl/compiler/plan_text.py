"""The readable text forms of plans: one line per step, nested by shared prefix, then the predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglang_dsl.compiler.batch_plan import BatchPlan
    from sglang_dsl.compiler.constraint_plan import ConstraintPlan
    from sglang_dsl.compiler.program_plan import ProgramPlan

SNIPPET = 48  # characters of a prefix's text shown (its middle elided beyond that)


def snippet(text: str, limit: int = SNIPPET) -> str:
    """``repr`` of ``text``, its middle elided when longer than ``limit`` characters."""
    if len(text) > limit:
        head = limit // 2
        return repr(text[:head]) + "..." + repr(text[len(text) - (limit - head):])
    return repr(text)


def format_batch_plan(plan: "BatchPlan") -> str:
    unit = "tokens" if plan.granularity == "token" else "chars"
    lines = [f"batch plan {plan.program}: {len(plan.instances)} instances, {len(plan.prefixes)} shared prefixes "
             f"({plan.granularity} granularity, page size {plan.page_size})"]
    depth: dict[int | None, int] = {None: 0}
    for kind, key in plan.order:
        if kind == "prefill":
            prefix = plan.prefixes[key]
            depth[key] = depth[prefix.parent] + 1
            parent_text = plan.prefixes[prefix.parent].text if prefix.parent is not None else ""
            new_text = prefix.text[len(parent_text):] if prefix.text.startswith(parent_text) else prefix.text
            indent = "  " * depth[key]
            lines.append(f"{indent}prefill #{key} +{snippet(new_text)}: {prefix.tokens} {unit}, "
                         f"{prefix.cached_tokens} cached, for {len(prefix.instances)} instances")
        else:
            instance = plan.instances[key]
            indent = "  " * (depth[instance.prefix] + 1)
            request = f"%{instance.request}" if instance.request else "(no request)"
            lines.append(f"{indent}run [{key}] {request}: {instance.prompt_tokens} {unit}, "
                         f"{instance.cached_tokens} cached")
    lines.append(f"predicted: {plan.prefill_tokens} {unit} prefilled (ideal {plan.ideal_tokens}), "
                 f"{plan.cached_tokens} cached, {plan.requests} prefill requests")
    return "\n".join(lines)


def format_program_plan(plan: "ProgramPlan") -> str:
    unit = "tokens" if plan.granularity == "token" else "chars"
    lines = [f"plan {plan.program}({', '.join(plan.arguments)}): {plan.nodes} nodes, {plan.requests} runtime "
             f"requests per run, {plan.fused_requests} with segments fused"]
    prefix = plan.prefix
    size = f"{prefix.tokens} {unit}" if prefix.tokens is not None else f"{len(prefix.text)} chars"
    end = f"ends at %{prefix.end}" if prefix.end else "the whole program"
    lines.append(f"  constant prefix {snippet(prefix.text)}: {size}, {len(prefix.nodes)} nodes, {end} "
                 f"({prefix.reason})")
    for fork in plan.forks:
        commit = ("no commit (one branch)" if not fork.commit_prefix else
                  "prefix and shared head committed before fan-out" if fork.shared_text else
                  "prefix committed before fan-out")
        calls = " ".join(f"%{c}" if c else "-" for c in fork.first_calls)
        join = (f"join %{fork.join} {fork.join_mode}" + (f" [{', '.join(fork.gathered)}]" if fork.gathered else "")
                if fork.join else "never joined")
        lines.append(f"  fork %{fork.fork} on {fork.stream} into {fork.n}: {commit}; branches share "
                     f"{snippet(fork.shared_text)}; first calls {calls}; {join}")
    for select in plan.selects:
        tokens = f", choice tokens {' '.join(map(str, select.choice_tokens))}" if select.choice_tokens else ""
        lines.append(f"  select %{select.node} on {select.stream}: {len(select.choices)} choices scored in one "
                     f"batched extend ({select.method}{', unconditional' if select.unconditional else ''}), "
                     f"{select.requests} requests{tokens}")
    for constraint in plan.constraints:
        lines.append(f"  constraint {constraint.kind} {snippet(constraint.source)} for "
                     f"{' '.join('%' + n for n in constraint.nodes)}: {_compiled(constraint)}")
    for segment in plan.segments:
        lines.append(f"  segment on {segment.stream}: {' '.join('%' + n for n in segment.nodes)} "
                     f"({segment.calls} model call{'s' if segment.calls > 1 else ''})")
    if plan.boundary:
        lines.append(f"  dynamic boundary: {plan.boundary} (eager execution from there)")
    return "\n".join(lines)


def _compiled(constraint: "ConstraintPlan") -> str:
    if constraint.error:
        return f"does not compile: {constraint.error}"
    if constraint.compile_seconds is None:
        return "not compiled (no tokenizer)"
    parts = []
    if constraint.states is not None:
        parts.append(f"{constraint.states} {'parser ' if constraint.spec_kind == 'ebnf' else ''}states")
    if constraint.mask_bytes is not None:
        parts.append(f"{constraint.mask_bytes / 1024:.1f} KiB of masks")
    how = "reused from cache" if constraint.reused else "compiled"
    return ", ".join([*parts, f"{how} in {constraint.compile_seconds * 1000:.1f} ms"])
