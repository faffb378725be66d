"""Mermaid flowchart text of a `Picture` (paste it into Markdown that renders Mermaid).

Node ids are ``n0``, ``n1``... in program order; labels are quoted, with Mermaid's entity codes for the
characters its parser reserves. The constant prefix is a subgraph; arguments are parallelograms, roles
stadiums, forks and joins hexagons, the dynamic boundary a subroutine box; data reads are dotted edges."""

from __future__ import annotations

from sglang_dsl.viz.model import BORDER, CONSTRAINED_BORDER, FILLS, PREFIX_BORDER, PREFIX_FILL, Box, Picture

_SHAPES = {"argument": ('[/"', '"/]'), "role": ('(["', '"])'), "fork": ('{{"', '"}}'), "join": ('{{"', '"}}'),
           "boundary": ('[["', '"]]')}
_ARROWS = {"next": "-->", "branch": "-->", "merge": "-->", "data": "-.->"}
_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "|": "#124;", "`": "#96;"}


def to_mermaid(picture: Picture) -> str:
    """The Mermaid text of ``picture``."""
    ids = {box.name: f"n{i}" for i, box in enumerate(picture.boxes)}
    lines = ["flowchart TD"]
    prefix = [box for box in picture.boxes if box.in_prefix]
    if prefix:
        tokens = picture.prefix.tokens if picture.prefix is not None else None
        title = "constant prefix" + ("" if tokens is None else f" ({tokens} tokens)")
        lines.append(f'  subgraph prefix["{_escape(title)}"]')
        lines += [f"    {_node(ids[box.name], box)}" for box in prefix]
        lines.append("  end")
        lines.append(f"  style prefix fill:{PREFIX_FILL},stroke:{PREFIX_BORDER}")
    lines += [f"  {_node(ids[box.name], box)}" for box in picture.boxes if not box.in_prefix]
    for edge in picture.edges:
        label = f'|"{_escape(edge.label)}"|' if edge.label else ""
        lines.append(f"  {ids[edge.source]} {_ARROWS[edge.kind]}{label} {ids[edge.target]}")
    for style in FILLS:
        members = [ids[b.name] for b in picture.boxes if b.style == style]
        if members:
            lines.append(f"  classDef {style} fill:{FILLS[style]},stroke:{BORDER},color:#111827")
            lines.append(f"  class {','.join(members)} {style}")
    for box in picture.boxes:
        if box.in_prefix or box.prefix_end:
            dash = ",stroke-dasharray:4 3" if box.prefix_end else ""
            lines.append(f"  style {ids[box.name]} stroke:{PREFIX_BORDER},stroke-width:2px{dash}")
        elif box.constrained:
            lines.append(f"  style {ids[box.name]} stroke:{CONSTRAINED_BORDER},stroke-width:2px")
    return "\n".join(lines) + "\n"


def _node(node_id: str, box: Box) -> str:
    opening, closing = _SHAPES.get(box.style, ('["', '"]'))
    return f"{node_id}{opening}{'<br/>'.join(_escape(line) for line in box.label_lines)}{closing}"


def _escape(text: str) -> str:
    return "".join(_ENTITIES.get(c, c) for c in text)
