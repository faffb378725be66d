"""Graphviz DOT text of a `Picture`: ``dot -Tsvg`` (or ``-Tpng``) renders it.

The constant prefix is a cluster with an orange border; constrained gens have a blue border; fork branches
are labelled edges, merges into a join solid, data reads dotted (they do not constrain the layout)."""

from __future__ import annotations

from sglang_dsl.viz.model import (
    BORDER, CONSTRAINED_BORDER, FILLS, PREFIX_BORDER, PREFIX_FILL, Box, Edge, Picture,
)

_EDGE_STYLE = {
    "next": "", "branch": "", "merge": "", "data": ' style=dotted color="#94a3b8" constraint=false arrowsize=0.6',
}


def to_dot(picture: Picture) -> str:
    """The DOT text of ``picture``."""
    lines = [f"digraph {_quote(picture.name)} {{",
             "  rankdir=TB;",
             f"  graph [fontname=\"Helvetica\" fontsize=11 labelloc=t label={_quote(_caption(picture))}];",
             f"  node [shape=box style=\"rounded,filled\" fontname=\"Helvetica\" fontsize=10 color=\"{BORDER}\"];",
             "  edge [fontname=\"Helvetica\" fontsize=9];"]
    prefix = [b for b in picture.boxes if b.in_prefix]
    if prefix:
        lines += ["  subgraph cluster_prefix {",
                  f"    label={_quote('constant prefix' + _token_note(picture))}; style=\"rounded,filled\";",
                  f"    color=\"{PREFIX_BORDER}\"; fillcolor=\"{PREFIX_FILL}\"; fontcolor=\"{PREFIX_BORDER}\";"]
        lines += [f"    {_node(box)}" for box in prefix]
        lines.append("  }")
    lines += [f"  {_node(box)}" for box in picture.boxes if not box.in_prefix]
    lines += [f"  {_edge(edge)}" for edge in picture.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _caption(picture: Picture) -> str:
    caption = f"{picture.name}({', '.join(picture.arguments)})"
    if picture.run_seconds is not None:
        caption += f" · run {picture.run_seconds:.2f} s"
    return caption


def _token_note(picture: Picture) -> str:
    tokens = picture.prefix.tokens if picture.prefix is not None else None
    return "" if tokens is None else f" ({tokens} tokens)"


def _node(box: Box) -> str:
    label = "\\n".join(_escape(line) for line in box.label_lines)
    attrs = [f"label=\"{label}\"", f"fillcolor=\"{FILLS[box.style]}\"",
             f"tooltip={_quote('; '.join(f'{k}: {v}' for k, v in box.details))}"]
    if box.constrained:
        attrs.append(f"color=\"{CONSTRAINED_BORDER}\" penwidth=2")
    if box.in_prefix or box.prefix_end:
        attrs.append(f"color=\"{PREFIX_BORDER}\" penwidth=2")
    if box.prefix_end:
        attrs[-1] += " style=\"rounded,filled,dashed\""
    return f"{_quote(box.name)} [{' '.join(attrs)}];"


def _edge(edge: Edge) -> str:
    label = f" label={_quote(edge.label)}" if edge.label and edge.kind != "data" else ""
    attrs = (label + _EDGE_STYLE[edge.kind]).strip()
    return f"{_quote(edge.source)} -> {_quote(edge.target)}" + (f" [{attrs}];" if attrs else ";")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _quote(text: str) -> str:
    return f"\"{_escape(text)}\""
