"""The readable text forms of plans: one line per step, nested by shared prefix, then the predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglang_dsl.compiler.batch_plan import BatchPlan

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
