"""Pictures of program graphs: ``sglang-dsl viz`` (Graphviz DOT, Mermaid, self-contained HTML).

`render` draws a traced `Graph` in one format, with the constant prefix (`sglang_dsl.compiler.prefix`)
highlighted, constraints and choices on their nodes, and optionally what a run did at each node
(`sglang_dsl.viz.overlay.run_graph`). `sglang_dsl.viz.model` builds the one picture all formats draw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

from sglang_dsl.viz.dot import to_dot
from sglang_dsl.viz.html import to_html
from sglang_dsl.viz.mermaid import to_mermaid
from sglang_dsl.viz.model import Picture, build

if TYPE_CHECKING:
    from sglang_dsl.compiler.prefix import PrefixInfo
    from sglang_dsl.ir.graph import Graph
    from sglang_dsl.viz.overlay import NodeStats

FORMATS: dict[str, Callable[[Picture], str]] = {"dot": to_dot, "mermaid": to_mermaid, "html": to_html}


def render(graph: Graph, format: str, prefix: PrefixInfo | None = None,
           stats: Mapping[str, NodeStats] | None = None, run_seconds: float | None = None) -> str:
    """``graph`` drawn in ``format`` (``dot``, ``mermaid`` or ``html``); see `sglang_dsl.viz.model.build`."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[format](build(graph, prefix, stats, run_seconds))


__all__ = ["FORMATS", "Picture", "build", "render"]
