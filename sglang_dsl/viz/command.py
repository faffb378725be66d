"""``sglang-dsl viz FILE.py[:FUNC] [--format dot|mermaid|html] [-o OUT] [--run] [--arg NAME=VALUE ...]``.

Traces the program (arguments not fixed with ``--bind`` stay placeholders, so the highlighted constant prefix
is what every run shares), draws it, and with ``--run`` runs its static part on a local runtime first and
overlays what each node did. Runtime modules are imported only for ``--run``."""

from __future__ import annotations

import argparse
from pathlib import Path

SUFFIX_FORMATS = {".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid", ".html": "html",
                  ".htm": "html"}


def add_parser(commands) -> None:
    viz = commands.add_parser("viz", help="draw a program's graph as Graphviz DOT, Mermaid or HTML")
    viz.add_argument("program", metavar="FILE.py[:FUNC]", help="the program (FUNC: needed if the file has several)")
    viz.add_argument("--format", choices=["dot", "mermaid", "html"], default=None,
                     help="default: from the output's suffix (.dot, .mmd, .html), else html")
    viz.add_argument("-o", "--output", default="-", metavar="OUT", help="the file to write (default: stdout)")
    viz.add_argument("--bind", action="append", default=[], metavar="NAME=VALUE",
                     help="fix an argument at trace time (it becomes constant text in the graph)")
    viz.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                     help="an argument for --run (JSON values are parsed: 3, true, [1,2]; others are strings)")
    viz.add_argument("--run", action="store_true", help="run the program and overlay what each node did")
    viz.add_argument("--model", default="smollm2-135m", help="for --run: alias, Hugging Face directory, or .gguf")
    viz.add_argument("--device", default="auto")
    viz.add_argument("--dtype", default="auto")
    viz.add_argument("--temperature", type=float, default=None, help="the program's default temperature")
    viz.add_argument("--max-new-tokens", type=int, default=None, help="the program's default token budget")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sglang_dsl.lang.program_file import ProgramFileError, load_program, parse_arguments

    console = Console(stderr=True, highlight=False)
    try:
        program = load_program(args.program)
        bound, arguments = parse_arguments(args.bind), parse_arguments(args.arg)
        graph = program.trace(**bound)
    except (ProgramFileError, TypeError) as err:
        return _fail(console, err, 2)
    fmt = args.format or SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), "html")
    if arguments and not args.run:
        console.print("[yellow]note:[/yellow] --arg values are for --run; --bind NAME=VALUE fixes an argument "
                      "at trace time")
    if args.run:
        drawn = _run_and_draw(console, args, graph, arguments, fmt)
        if isinstance(drawn, int):
            return drawn
    else:
        from sglang_dsl.compiler.prefix import constant_prefix
        from sglang_dsl.viz import render

        drawn = render(graph, fmt, constant_prefix(graph))
    if args.output == "-":
        print(drawn, end="")
    else:
        Path(args.output).write_text(drawn, encoding="utf-8")
        console.print(f"wrote {args.output} ({fmt}, {len(graph)} nodes)")
    return 0


def _run_and_draw(console, args: argparse.Namespace, graph, arguments: dict, fmt: str) -> str | int:
    """Run ``graph`` on a local runtime and draw it with the run's stats, or return an exit status."""
    from backends.local import Runtime
    from runtime.errors import ModelLoadError
    from sglang_dsl.compiler.prefix import constant_prefix
    from sglang_dsl.lang.errors import ProgramError
    from sglang_dsl.viz import render
    from sglang_dsl.viz.overlay import run_graph

    if graph.boundary is not None:
        console.print(f"[yellow]note:[/yellow] only the static part runs: the graph ends at a dynamic boundary "
                      f"({graph.boundary.reason})")
    sampling = {k: v for k, v in (("temperature", args.temperature), ("max_new_tokens", args.max_new_tokens))
                if v is not None}
    try:
        runtime = Runtime(model=args.model, device=args.device, dtype=args.dtype)
    except (ModelLoadError, ValueError) as err:
        return _fail(console, err, 2)
    try:
        result = run_graph(graph, runtime, arguments, sampling)
        prefix = constant_prefix(graph, runtime.encode, template=runtime.chat_template())
    except TypeError as err:
        return _fail(console, err, 2)
    except ProgramError as err:
        return _fail(console, err, 1)
    finally:
        runtime.shutdown()
    return render(graph, fmt, prefix, result.stats, result.seconds)


def _fail(console, err: Exception, status: int) -> int:
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
    return status
