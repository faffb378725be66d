"""The viz formats rendered by the real tools: Graphviz renders the DOT, Mermaid (its npm bundle, in headless
Chromium) parses and draws the Mermaid text, and headless Chromium screenshots of the HTML page show every
node in its fill colour and the edges between them.

Each test skips, saying why, when its tool is missing; ``.ci/run`` installs them (``.ci/viz-tools``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import viz_programs
from sglang_dsl.compiler.prefix import constant_prefix
from sglang_dsl.viz import build, render
from sglang_dsl.viz.html import CACHED_COLOR, COMPUTED_COLOR, EDGE_COLOR
from sglang_dsl.viz.layout import layout
from sglang_dsl.viz.model import FILLS
from sglang_dsl.viz.overlay import NodeStats

CASES = ["few_shot", "tree", "chat"]
MERMAID_VERSION = "11.17.2"
MERMAID = Path(os.environ.get("SGLANG_DSL_NPM_CACHE", Path.home() / ".cache" / "sglang-dsl" / "npm")) / \
    f"mermaid-{MERMAID_VERSION}" / "mermaid.min.js"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def traced(case: str):
    """The case's graph and its constant prefix."""
    graph = getattr(viz_programs, case).trace()
    return graph, constant_prefix(graph)


def chromium(*args: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(shutil.which("dot") is None, reason="no Graphviz dot on PATH (apt-get install graphviz)")
@pytest.mark.parametrize("case", CASES)
def test_graphviz_renders_the_dot(case: str) -> None:
    graph, prefix = traced(case)
    picture = build(graph, prefix)
    done = subprocess.run(["dot", "-Tsvg"], input=render(graph, "dot", prefix), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert done.stdout.count('class="node"') == len(graph)
    assert done.stdout.count('class="edge"') == len(picture.edges)
    assert ('class="cluster"' in done.stdout) == any(b.in_prefix for b in picture.boxes)


@needs_chromium
@pytest.mark.skipif(not MERMAID.exists(), reason=f"no Mermaid bundle at {MERMAID} (.ci/viz-tools fetches it)")
def test_mermaid_parses_and_renders_in_chromium(tmp_path: Path) -> None:
    shutil.copy(MERMAID, tmp_path / "mermaid.min.js")
    texts = {case: render(traced(case)[0], "mermaid", traced(case)[1]) for case in CASES}
    page = tmp_path / "mermaid.html"
    page.write_text(_MERMAID_PAGE.replace("TEXTS", json.dumps(texts)))
    dom = chromium("--virtual-time-budget=30000", "--dump-dom", page.as_uri())
    results = json.loads(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1))
    for case in CASES:
        graph = traced(case)[0]
        assert results[case] == {"nodes": len(graph)}, f"{case}: {results[case]}"


_MERMAID_PAGE = """<!DOCTYPE html><html><body><pre id="out">pending</pre>
<script src="mermaid.min.js"></script>
<script>
const texts = TEXTS;
mermaid.initialize({startOnLoad: false});
(async () => {
  const results = {};
  for (const [name, text] of Object.entries(texts)) {
    try {
      await mermaid.parse(text);
      const {svg} = await mermaid.render('graph_' + name, text);
      results[name] = {nodes: (svg.match(/<g class="node /g) || []).length};
    } catch (err) {
      results[name] = {error: String(err.message || err)};
    }
  }
  document.getElementById('out').textContent = JSON.stringify(results);
})();
</script></body></html>"""


@needs_chromium
def test_html_screenshot_shows_nodes_and_edges(tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="pillow reads the screenshot (the dev extra installs it)")
    from PIL import Image

    graph, prefix = traced("tree")
    stats = {"gen_plan": NodeStats(0.5, prompt_tokens=20, cached_tokens=15, completion_tokens=8)}
    picture = build(graph, prefix, stats, run_seconds=1.0)
    page = render(graph, "html", prefix, stats, 1.0)
    where = tmp_path / "where.html"  # the same page, reporting where its SVG sits, and clicked on a node
    where.write_text(page.replace("</body>", _WHERE_AND_CLICK + "</body>"))
    placed = layout(picture)
    size = f"--window-size={int(placed.width) + 500},{int(placed.height) + 400}"
    dom = chromium(size, "--dump-dom", where.as_uri())
    origin = json.loads(re.search(r"<title>(.*?)</title>", dom).group(1))
    assert dom.count('<g class="node') == len(graph) and dom.count('class="edge') == len(picture.edges)
    details = re.search(r'<div id="details">(.*?)</div>', dom, re.S).group(1)
    assert 'ir: gen("plan", max_new_tokens=8)' in details.replace("&quot;", '"')
    assert "prompt 20: 15 cached, 5 computed" in details
    assert re.search(r'<svg[^>]* class="no-reads"', dom)  # the checkbox hides the value reads

    shot = tmp_path / "tree.png"
    (tmp_path / "tree.html").write_text(page)
    chromium(f"--screenshot={shot}", size, (tmp_path / "tree.html").as_uri())
    image = Image.open(shot).convert("RGB")

    def pixel(x: float, y: float) -> tuple[int, int, int]:
        return image.getpixel((int(origin["x"] + x), int(origin["y"] + y)))

    for p in placed.placed.values():  # above the title line, inside the border: the node's own fill
        assert _near(pixel(p.x + p.width - 12, p.y + 5), FILLS[p.box.style]), f"%{p.box.name} is not drawn"
    for edge in picture.edges:
        source, target = placed.placed[edge.source], placed.placed[edge.target]
        if edge.kind == "next" and source.center == target.center:
            column = [pixel(source.center + dx, y) for dx in (-1, 0, 1)
                      for y in range(int(source.bottom) + 2, int(target.y) - 8)]
            assert any(_near(c, EDGE_COLOR, 90) for c in column), f"no edge %{edge.source} -> %{edge.target}"
    bar = placed.placed["gen_plan"]
    bar_y = bar.bottom - 12
    assert _near(pixel(bar.x + 20, bar_y), CACHED_COLOR) and _near(pixel(bar.x + bar.width - 20, bar_y),
                                                                     COMPUTED_COLOR)
    background = sum(1 for c in image.getdata() if c == (255, 255, 255))
    assert background < image.width * image.height * 0.9  # a picture, not a blank page


_WHERE_AND_CLICK = """<script>
document.title = JSON.stringify(document.querySelector('svg').getBoundingClientRect());
document.querySelector('g.node[data-node="gen_plan"]').dispatchEvent(new MouseEvent('click'));
document.getElementById('show-reads').click();
</script>"""


def _near(color: tuple[int, int, int], hex_color: str, tolerance: int = 24) -> bool:
    target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return sum(abs(a - b) for a, b in zip(color, target)) <= tolerance
