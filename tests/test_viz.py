"""``sglang-dsl viz``: golden DOT and Mermaid text, what the picture marks (prefix, constraints, choices,
branches), the HTML page's structure, the CLI, and the run overlay on a scripted backend (no model).

Regenerate the golden files after an intended change with ``SGLANG_DSL_UPDATE_GOLDEN=1 pytest
tests/test_viz.py`` and review the diff."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

import viz_programs
from backends.base import Backend, Capabilities, GenerateCall, Generation, SelectCall
from sglang_dsl.cli import main
from sglang_dsl.compiler.prefix import constant_prefix
from sglang_dsl.lang.choices import ChoicesDecision
from sglang_dsl.viz import build, render
from sglang_dsl.viz.overlay import NodeStats, run_graph

GOLDEN = Path(__file__).parent / "golden" / "viz"
UPDATE = os.environ.get("SGLANG_DSL_UPDATE_GOLDEN") == "1"
PROGRAMS = Path(viz_programs.__file__)
CASES = ["few_shot", "tree", "chat"]
SUFFIX = {"dot": "dot", "mermaid": "mmd"}


def picture_of(case: str, stats=None):
    graph = getattr(viz_programs, case).trace()
    return graph, build(graph, constant_prefix(graph), stats)


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
@pytest.mark.parametrize("case", CASES)
def test_golden_text(case: str, fmt: str) -> None:
    graph = getattr(viz_programs, case).trace()
    text = render(graph, fmt, constant_prefix(graph))
    path = GOLDEN / f"{case}.{SUFFIX[fmt]}"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with SGLANG_DSL_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{case} {fmt} changed (SGLANG_DSL_UPDATE_GOLDEN=1 to accept)"


def test_prefix_constraints_and_choices_are_marked() -> None:
    graph, picture = picture_of("few_shot")
    assert [b.name for b in picture.boxes if b.in_prefix] == ["1"]
    assert [b.name for b in picture.boxes if b.prefix_end] == ["2"]
    assert [b.name for b in picture.boxes if b.constrained] == ["gen_confidence", "gen_info"]
    assert picture.box("gen_confidence").lines == ("regex: [0-9]",)
    assert picture.box("gen_info").lines[0].startswith('json_schema: {"type":"object"')
    assert picture.box("select_topic").lines[0] == "choices: math | geography | other"
    assert "71 characters" in picture.prefix_summary and "%2 reads %question" in picture.prefix_summary
    dot = render(graph, "dot", constant_prefix(graph))
    cluster = dot.split("subgraph cluster_prefix {")[1].split("}")[0]
    assert '"1" [' in cluster and '"2" [' not in cluster  # only the node wholly inside the prefix


def test_fused_segments_are_outlined() -> None:
    graph, picture = picture_of("few_shot")
    (segment,) = picture.segments
    assert segment.calls == 4 and segment.nodes[0] == "1" and segment.nodes[-1] == "gen_info"
    assert all(picture.box(name).segment == 0 for name in segment.nodes)
    page = render(graph, "html", constant_prefix(graph))
    assert page.count('<g class="segment">') == 1 and "segment 1: 1 request, 4 calls" in page
    assert picture_of("tree")[1].segments == ()  # each branch's one gen is an ordinary request


def test_forks_and_joins_are_branches() -> None:
    _, picture = picture_of("tree")
    edges = {(e.source, e.target, e.kind, e.label) for e in picture.edges}
    assert ("fork", "3", "branch", "branch 0") in edges and ("fork", "9", "branch", "branch 1") in edges
    assert ("fork_1", "gen_step", "branch", "branch 0") in edges
    assert {("gen_step", "join", "merge", ""), ("gen_step_1", "join", "merge", "")} <= edges
    assert {("join", "join_2", "merge", ""), ("join_1", "join_2", "merge", "")} <= edges
    assert not any(e[:2] == ("fork", "join_2") for e in edges)  # branches replace the fork's own next edge
    assert ("problem", "1", "data", "problem") in edges


def test_boundary_and_concatenating_join() -> None:
    _, picture = picture_of("chat")
    assert picture.box("boundary").style == "boundary"
    assert picture.box("join").title == "join (concate_and_append)"
    assert ("join", "14", "next", "") in {(e.source, e.target, e.kind, e.label) for e in picture.edges}


def test_html_is_self_contained_and_lays_out_without_overlap() -> None:
    graph, picture = picture_of("tree")
    page = render(graph, "html", constant_prefix(graph))
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<link" not in page and " src=" not in page
    assert page.count('<g class="node') == len(graph)
    assert page.count('class="edge') == len(picture.edges)
    from sglang_dsl.viz.layout import layout

    boxes = list(layout(picture).placed.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a.x + a.width <= b.x or b.x + b.width <= a.x or a.bottom <= b.y or b.bottom <= a.y
            assert apart, f"%{a.box.name} overlaps %{b.box.name}"


def test_labels_escape_what_each_format_reserves() -> None:
    from sglang_dsl.ir.graph import Graph
    from sglang_dsl.ir.nodes import Text

    graph = Graph("odd", [Text(name="t", parts=('say "hi" <b> & #1 | `x` \\n',))])
    mermaid = render(graph, "mermaid")
    assert 'say #quot;hi#quot; #lt;b#gt; #amp; #35;1 #124; #96;x#96; \\n' in mermaid
    dot = render(graph, "dot")
    assert 'say \\"hi\\" <b> & #1 | `x` \\\\n' in dot


# -- the CLI --------------------------------------------------------------------------------------------------

def test_cli_writes_each_format(tmp_path, capsys) -> None:
    for suffix, marker in ((".dot", "digraph"), (".mmd", "flowchart TD"), (".html", "<!DOCTYPE html>")):
        out = tmp_path / f"tree{suffix}"
        assert main(["viz", f"{PROGRAMS}:tree", "-o", str(out)]) == 0
        assert out.read_text().startswith(marker)
    assert main(["viz", f"{PROGRAMS}:few_shot", "--format", "mermaid"]) == 0
    assert capsys.readouterr().out.startswith("flowchart TD")


def test_cli_bind_fixes_an_argument_into_the_prefix(capsys) -> None:
    assert main(["viz", f"{PROGRAMS}:few_shot", "--format", "dot", "--bind", "question=Why?"]) == 0
    cluster = capsys.readouterr().out.split("subgraph cluster_prefix {")[1].split("}")[0]
    assert '"1" [' in cluster and "Q: Why?" in cluster and '"gen_answer" [' not in cluster
    assert main(["viz", f"{PROGRAMS}:few_shot", "--format", "dot", "--arg", "question=Why?"]) == 0
    drawn = capsys.readouterr()
    assert "Why?" not in drawn.out and "--arg values are for --run" in drawn.err


@pytest.mark.parametrize("argv, message", [
    (["viz", "no/such.py"], "no such file"),
    (["viz", f"{PROGRAMS}"], "defines several"),
    (["viz", f"{PROGRAMS}:nope"], "no @function named 'nope'"),
    (["viz", f"{PROGRAMS}:tree", "--bind", "nope=1"], "unexpected arguments: nope"),
    (["viz", f"{PROGRAMS}:tree", "--bind", "oops"], "expected NAME=VALUE"),
])
def test_cli_errors_are_one_clear_line(capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- the run overlay ------------------------------------------------------------------------------------------

class Counting(Backend):
    """Generates ``<x>`` for gen('x') after ``delay``; meta counts prompt words, half of them cached."""

    name = "counting"
    capabilities = Capabilities(prefix_cache=True)

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay

    def chat_template(self):
        return None

    async def generate(self, call: GenerateCall) -> Generation:
        await asyncio.sleep(self.delay)
        words = len(call.prompt.text.split())
        meta = {"prompt_tokens": words, "cached_tokens": words // 2, "completion_tokens": 1, "forced_tokens": 0}
        return Generation(f" <{call.node.split(chr(39))[1]}>", meta)

    async def select(self, call: SelectCall) -> ChoicesDecision:
        return ChoicesDecision(call.choices[0], {"prompt_tokens": 5, "cached_tokens": 5})


def test_run_credits_each_node_its_time_and_tokens() -> None:
    graph = viz_programs.branches.trace()
    result = run_graph(graph, Counting(), {"word": "w0"})
    assert result.variables["more"] == [" <more>", " <more>"] and result.variables["pick"] == "w1"
    assert set(result.stats) == {n.name for n in graph if n.op != "placeholder"}
    gen = result.stats["gen_more"]
    assert gen.prompt_tokens == 9 and gen.cached_tokens == 4 and gen.computed_tokens == 5
    assert gen.completion_tokens == 1 and gen.forced_tokens == 0 and gen.seconds >= 0.02
    assert result.stats["select_pick"].computed_tokens == 0
    assert result.stats["1"].prompt_tokens is None and not result.stats["1"].notable
    assert result.stats["fork"].seconds < 0.02  # the wait for the stream is not the fork's own time
    assert result.stats["join"].seconds < 0.02  # nor the wait for the branches the join's
    assert result.seconds >= 0.02


def test_run_overlay_is_drawn(tmp_path) -> None:
    graph = viz_programs.branches.trace()
    result = run_graph(graph, Counting(), {"word": "w0"})
    page = render(graph, "html", constant_prefix(graph), result.stats, result.seconds)
    assert page.count('class="cached"') == 3 and page.count('class="computed"') == 3  # two gens, one select
    assert "prompt 9: 4 cached, 5 computed" in page
    assert re.search(r"run: \d+\.\d\d s; prompt tokens 23 \(13 cached, 10 computed\); 2 generated", page)
    dot = render(graph, "dot", constant_prefix(graph), result.stats, result.seconds)
    assert "▶ " in dot and "1 generated · 0 forced" in dot


def test_stats_summary() -> None:
    stats = NodeStats(1.5, prompt_tokens=10, cached_tokens=7, completion_tokens=3, forced_tokens=2)
    assert stats.lines() == ("1.50 s · 3 generated · 2 forced", "prompt 10: 7 cached, 3 computed")
    assert NodeStats(0.0004).lines() == ("0.4 ms",) and not NodeStats(0.0004).notable


def test_cli_run_overlays_what_the_runtime_did(tmp_path, capsys) -> None:
    """On a tiny local model: the branches hit the prefix their fork cached, and the page shows it."""
    from tiny_models import make_hf_model, write_word_tokenizer

    make_hf_model("llama", tmp_path / "model")
    write_word_tokenizer(tmp_path / "model")
    out = tmp_path / "run.html"
    argv = ["viz", f"{PROGRAMS}:branches", "--run", "--arg", "word=w3", "--model", str(tmp_path / "model"),
            "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    rows = {cells[0].split()[0]: cells[1:] for cells in
            (re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr><td>.*?</tr>", out.read_text()))}
    assert set(rows) >= {"%gen_more", "%gen_more_1", "%select_pick"}
    for gen in ("%gen_more", "%gen_more_1"):
        _, prompt, cached, computed, generated, _ = rows[gen]
        assert int(prompt) == 9 and int(cached) >= 8 and int(prompt) == int(cached) + int(computed)
        assert 1 <= int(generated) <= 3
    assert int(rows["%select_pick"][2]) > 0  # the select's prompt extends the joined text, cached by the gens
    assert out.read_text().count('class="cached"') == 3


def test_cli_run_needs_the_arguments(tmp_path, capsys) -> None:
    from tiny_models import make_hf_model, write_word_tokenizer

    make_hf_model("llama", tmp_path)
    write_word_tokenizer(tmp_path)
    assert main(["viz", f"{PROGRAMS}:branches", "--run", "--model", str(tmp_path)]) == 2
    assert "missing the argument 'word'" in capsys.readouterr().err


def test_a_fused_requests_time_is_shared_not_multiplied() -> None:
    """The executor gives every leaf of a fused segment a `NodeRun` spanning the whole request."""
    from sglang_dsl.lang.executor import NodeRun
    from sglang_dsl.lang.exprs import Gen, Text
    from sglang_dsl.lang.params import SamplingParams
    from sglang_dsl.viz.overlay import _credit

    graph = viz_programs.few_shot.trace()
    leaves = [Text("Q"), Gen("answer", SamplingParams()), Gen("confidence", SamplingParams())]
    names = ["2", "gen_answer", "gen_confidence"]
    runs = [NodeRun(leaf, 5.0, 1.5, {"prompt_tokens": 4} if i else None) for i, leaf in enumerate(leaves)]
    runs.append(NodeRun(Text("alone"), 7.0, 0.5, None))
    stats = _credit(runs, {id(leaf): name for leaf, name in zip(leaves + [runs[-1].leaf], names + ["4"])}, {}, graph)
    assert [stats[n].request_nodes for n in names + ["4"]] == [3, 3, 3, 1]
    assert stats["gen_answer"].lines()[0] == "1.50 s (one request, 3 nodes)"
    assert stats["4"].seconds == 0.5 and stats["4"].lines() == ("500.0 ms",)
