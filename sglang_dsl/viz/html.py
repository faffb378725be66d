"""A self-contained HTML page of a `Picture`: inline SVG laid out by `sglang_dsl.viz.layout`, a legend,
tooltips (hover) and a details panel (click), and, after a run, a cached/computed token bar in every request's
box plus a table of the run. No scripts or styles are fetched: the page works offline."""

from __future__ import annotations

import json
from html import escape

from sglang_dsl.viz.layout import BOX_WIDTH, LINE_HEIGHT, PADDING, RUN_BAR, Layout, Placed, layout
from sglang_dsl.viz.model import (
    BORDER, CONSTRAINED_BORDER, FILLS, PREFIX_BORDER, PREFIX_FILL, Edge, Picture,
)

SEGMENT_COLOR = "#7c3aed"
CACHED_COLOR = "#16a34a"
COMPUTED_COLOR = "#f97316"
EDGE_COLOR = "#334155"
DATA_COLOR = "#94a3b8"

_STYLE = f"""
body {{ font: 14px system-ui, sans-serif; margin: 16px; color: #111827; background: #ffffff; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.summary {{ color: #374151; margin: 2px 0; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 10px 0; font-size: 12px; }}
.legend span.swatch {{ display: inline-block; width: 14px; height: 14px; border: 1px solid {BORDER};
  border-radius: 3px; vertical-align: -3px; margin-right: 4px; }}
.main {{ display: flex; gap: 16px; align-items: flex-start; }}
.main svg {{ flex: none; }}
svg text {{ font: 12px ui-monospace, monospace; fill: #111827; }}
svg text.title {{ font-weight: bold; }}
svg g.node {{ cursor: pointer; }}
svg g.node:hover rect.box {{ stroke-width: 3; }}
svg.no-reads .edge.data {{ display: none; }}
#details {{ min-width: 280px; max-width: 420px; border: 1px solid #d1d5db; border-radius: 6px; padding: 8px;
  font-size: 12px; white-space: pre-wrap; word-break: break-word; position: sticky; top: 8px; }}
table {{ border-collapse: collapse; margin-top: 16px; font-size: 12px; }}
td, th {{ border: 1px solid #d1d5db; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
"""

_SCRIPT = """
const details = JSON.parse(document.getElementById('node-details').textContent);
for (const g of document.querySelectorAll('g.node')) {
  g.addEventListener('click', () => {
    const rows = details[g.dataset.node] || [];
    document.getElementById('details').textContent = rows.map(([k, v]) => k + ': ' + v).join('\\n\\n');
  });
}
document.getElementById('show-reads').addEventListener('change', (event) => {
  document.querySelector('svg').classList.toggle('no-reads', !event.target.checked);
});
"""


def to_html(picture: Picture) -> str:
    """The whole page."""
    placed = layout(picture)
    details = {box.name: box.details for box in picture.boxes}
    blob = json.dumps(details, ensure_ascii=False).replace("</", "<\\/")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(picture.name)}: program graph</title>", f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(picture.name)}({escape(', '.join(picture.arguments))})</h1>",
        *[f'<p class="summary">{escape(line)}</p>' for line in _summaries(picture)],
        _legend(picture),
        '<div class="main">', _svg(picture, placed),
        '<div id="details">Click a node for its details.</div>', "</div>",
        _run_table(picture),
        f'<script type="application/json" id="node-details">{blob}</script>',
        f"<script>{_SCRIPT}</script>", "</body></html>", ""])


def _summaries(picture: Picture) -> list[str]:
    lines = [f"{len(picture.boxes)} nodes on {len(picture.streams)} stream(s)"]
    if picture.prefix_summary:
        lines.append(picture.prefix_summary)
    if picture.run_seconds is not None:
        lines.append(_run_line(picture))
    return lines


def _run_line(picture: Picture) -> str:
    stats = [b.stats for b in picture.boxes if b.stats is not None]
    prompt = sum(s.prompt_tokens or 0 for s in stats)
    cached = sum(s.cached_tokens or 0 for s in stats)
    generated = sum(s.completion_tokens or 0 for s in stats)
    return (f"run: {picture.run_seconds:.2f} s; prompt tokens {prompt} ({cached} cached, {prompt - cached} "
            f"computed); {generated} generated")


def _legend(picture: Picture) -> str:
    used = {b.style for b in picture.boxes}
    items = [f'<span><span class="swatch" style="background:{fill}"></span>{style}</span>'
             for style, fill in FILLS.items() if style in used]
    items.append(f'<span><span class="swatch" style="background:{PREFIX_FILL};border:2px solid {PREFIX_BORDER}">'
                 "</span>constant prefix (dashed: where it ends)</span>")
    items.append(f'<span><span class="swatch" style="border:2px solid {CONSTRAINED_BORDER}"></span>'
                 "constrained gen</span>")
    if picture.segments:
        items.append(f'<span><span class="swatch" style="border:2px dotted {SEGMENT_COLOR}"></span>'
                     "fused segment (one request with a segments backend)</span>")
    if picture.run_seconds is not None:
        items.append(f'<span><span class="swatch" style="background:{CACHED_COLOR}"></span>cached prompt tokens'
                     f'</span><span><span class="swatch" style="background:{COMPUTED_COLOR}"></span>'
                     "computed prompt tokens</span>")
    items.append('<span>→ program order / branch · ⇢ dotted: value read <label><input type="checkbox" '
                 'id="show-reads" checked>show</label></span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _svg(picture: Picture, placed: Layout) -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{placed.width:.0f}" height="{placed.height:.0f}" '
             f'viewBox="0 0 {placed.width:.0f} {placed.height:.0f}">',
             "<defs>", _marker("arrow", EDGE_COLOR), _marker("arrow-data", DATA_COLOR), "</defs>"]
    parts += _prefix_band(picture, placed)
    parts += _segment_outlines(picture, placed)
    parts += [_edge(edge, placed) for edge in picture.edges]
    parts += [_node(p) for p in placed.placed.values()]
    parts.append("</svg>")
    return "\n".join(parts)


def _marker(name: str, color: str) -> str:
    return (f'<marker id="{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>')


def _prefix_band(picture: Picture, placed: Layout) -> list[str]:
    """A shaded band behind the nodes of the constant prefix."""
    inside = [placed.placed[b.name] for b in picture.boxes if b.in_prefix]
    if not inside:
        return []
    left = min(p.x for p in inside) - 10
    top = min(p.y for p in inside) - 10
    right = max(p.x + p.width for p in inside) + 10
    bottom = max(p.bottom for p in inside) + 10
    return [f'<rect class="prefix" x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" '
            f'height="{bottom - top:.1f}" rx="10" fill="{PREFIX_FILL}" stroke="{PREFIX_BORDER}" '
            f'stroke-dasharray="6 4"/>']


def _segment_outlines(picture: Picture, placed: Layout) -> list[str]:
    """A dashed outline around each fused segment (its nodes are one stream's consecutive rows)."""
    outlines = []
    for i, segment in enumerate(picture.segments):
        inside = [placed.placed[name] for name in segment.nodes]
        left, top = min(p.x for p in inside) - 14, min(p.y for p in inside) - 14
        right, bottom = max(p.x + p.width for p in inside) + 14, max(p.bottom for p in inside) + 14
        outlines.append(
            f'<g class="segment"><title>fused segment {i + 1}: one request for {segment.calls} model calls with a '
            f'segments backend</title><rect x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" '
            f'height="{bottom - top:.1f}" rx="12" fill="none" stroke="{SEGMENT_COLOR}" stroke-width="1.5" '
            f'stroke-dasharray="2 4"/><text x="{right - 4:.1f}" y="{top - 4:.1f}" text-anchor="end" '
            f'style="font-size:10px;fill:{SEGMENT_COLOR}">segment {i + 1}: 1 request, {segment.calls} calls'
            "</text></g>")
    return outlines


def _edge(edge: Edge, placed: Layout) -> str:
    source, target = placed.placed[edge.source], placed.placed[edge.target]
    if edge.kind == "data":
        return _data_edge(edge, source, target)
    x1, y1, x2, y2 = source.center, source.bottom, target.center, target.y
    mid = (y1 + y2) / 2
    label = ""
    if edge.label:
        label = (f'<text x="{(x1 + x2) / 2 + 4:.1f}" y="{mid - 2:.1f}" style="font-size:10px;fill:#475569">'
                 f"{escape(edge.label)}</text>")
    return (f'<path class="edge {edge.kind}" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} '
            f'{x2:.1f},{y2:.1f}" fill="none" stroke="{EDGE_COLOR}" stroke-width="1.5" '
            f'marker-end="url(#arrow)"/>{label}')


def _data_edge(edge: Edge, source: Placed, target: Placed) -> str:
    """A dotted curve between the boxes' sides: facing sides across lanes, the right sides within one lane."""
    y1, y2 = source.y + source.height / 2, target.y + target.height / 2
    toward = 1 if target.center > source.center else -1
    if abs(target.center - source.center) < source.width:  # one lane: out to the right and back
        x1, x2 = source.x + source.width, target.x + target.width
        c1 = c2 = max(x1, x2) + 40
    else:
        x1, x2 = source.center + toward * source.width / 2, target.center - toward * target.width / 2
        c1, c2 = x1 + toward * 40, x2 - toward * 40
    return (f'<path class="edge data" d="M{x1:.1f},{y1:.1f} C{c1:.1f},{y1:.1f} {c2:.1f},{y2:.1f} '
            f'{x2:.1f},{y2:.1f}" fill="none" stroke="{DATA_COLOR}" stroke-dasharray="3 3" '
            f'marker-end="url(#arrow-data)"><title>reads {escape(edge.label)}</title></path>')


def _node(p: Placed) -> str:
    box = p.box
    stroke, width, dash = BORDER, 1, ""
    if box.constrained:
        stroke, width = CONSTRAINED_BORDER, 2.5
    if box.in_prefix or box.prefix_end:
        stroke, width = PREFIX_BORDER, 2.5
        dash = ' stroke-dasharray="6 3"' if box.prefix_end else ""
    tooltip = "\n".join(f"{k}: {v}" for k, v in box.details)
    parts = [f'<g class="node {box.style}" data-node="{escape(box.name)}"><title>{escape(tooltip)}</title>',
             f'<rect class="box" x="{p.x:.1f}" y="{p.y:.1f}" width="{p.width:.1f}" height="{p.height:.1f}" '
             f'rx="7" fill="{FILLS[box.style]}" stroke="{stroke}" stroke-width="{width}"{dash}/>']
    for i, line in enumerate(box.label_lines):
        css = ' class="title"' if i == 0 else ""
        y = p.y + PADDING + LINE_HEIGHT * (i + 1) - 3
        parts.append(f'<text{css} x="{p.x + 8:.1f}" y="{y:.1f}">{escape(line)}</text>')
    parts += _token_bar(p)
    parts.append("</g>")
    return "".join(parts)


def _token_bar(p: Placed) -> list[str]:
    """Cached (green) and computed (orange) prompt tokens of a request, as one bar across the box."""
    stats = p.box.stats
    if stats is None or not stats.prompt_tokens:
        return []
    full = BOX_WIDTH - 16
    cached = full * min(stats.cached_tokens or 0, stats.prompt_tokens) / stats.prompt_tokens
    y = p.bottom - PADDING - RUN_BAR + 2
    return [f'<rect class="cached" x="{p.x + 8:.1f}" y="{y:.1f}" width="{cached:.1f}" height="{RUN_BAR}" '
            f'fill="{CACHED_COLOR}"/>',
            f'<rect class="computed" x="{p.x + 8 + cached:.1f}" y="{y:.1f}" width="{full - cached:.1f}" '
            f'height="{RUN_BAR}" fill="{COMPUTED_COLOR}"/>']


def _run_table(picture: Picture) -> str:
    rows = [b for b in picture.boxes if b.stats is not None and b.stats.notable]
    if not rows:
        return ""
    head = "<tr><th>node</th><th>ms</th><th>prompt</th><th>cached</th><th>computed</th><th>generated</th>" \
           "<th>forced</th></tr>"
    body = []
    for box in rows:
        s = box.stats
        cells = [s.prompt_tokens, s.cached_tokens, s.computed_tokens, s.completion_tokens, s.forced_tokens]
        body.append(f"<tr><td>%{escape(box.name)} {escape(box.title)}</td><td>{s.seconds * 1000:.1f}</td>"
                    + "".join(f"<td>{'' if c is None else c}</td>" for c in cells) + "</tr>")
    return f'<table class="run">{head}{"".join(body)}</table>'
