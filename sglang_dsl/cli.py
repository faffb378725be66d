"""The ``sglang-dsl`` command line.

``sglang-dsl generate [--model MODEL] [--chat] PROMPT...`` continues prompts on a model (default: the embedded
SmolLM2-135M-Instruct). ``sglang-dsl serve [--model MODEL] [--host H] [--port P] [--api-key K]`` serves a model
over HTTP (SGLang's native API and the OpenAI API). ``sglang-dsl run FILE.py[:FUNC] [--arg NAME=VALUE ...]``
runs a program on a local runtime and prints its variables. ``sglang-dsl compile FILE.py[:FUNC]
[--arg NAME=VALUE ...] [--batch ARGS.jsonl] [--format text|json]`` prints its IR and compiled plan
(`sglang_dsl.compile_cli`). ``sglang-dsl viz FILE.py[:FUNC] --format
dot|mermaid|html -o OUT [--run]`` draws the program's graph (`sglang_dsl.viz.command`). Runtime modules are
imported only by the commands that need them, so the language package itself never imports torch."""

from __future__ import annotations

import argparse
import sys

from sglang_dsl.compile_cli import add_compile_parser, run_compile
from sglang_dsl.viz import command as viz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sglang-dsl", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="continue prompts on a model")
    gen.add_argument("prompts", nargs="+", metavar="PROMPT")
    gen.add_argument("--model", default="smollm2-135m", help="alias, Hugging Face directory, or .gguf file")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn in the chat template")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--device", default="auto")
    gen.add_argument("--dtype", default="auto")
    _add_serve_parser(commands)
    _add_run_parser(commands)
    add_compile_parser(commands)
    viz.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "run":
        return _run(args)
    if args.command == "compile":
        return run_compile(args)
    if args.command == "viz":
        return viz.run(args)
    return _generate(args)


# ``serve`` options that map onto ``RuntimeArgs`` fields of the same name (dashes for underscores).
_SERVE_RUNTIME_OPTIONS = (
    ("--dtype", str, "auto, float32, bfloat16 or float16"),
    ("--device", str, "auto, cpu, cuda, cuda:N ..."),
    ("--attention-backend", str, "torch or flashinfer"),
    ("--page-size", int, "tokens per KV page"),
    ("--max-total-tokens", int, "KV pool size in tokens"),
    ("--context-length", int, "longest sequence (default: the model's)"),
    ("--max-running-requests", int, "most requests decoding together"),
    ("--chunked-prefill-size", int, "most prompt tokens one request prefills per step (-1: no chunking)"),
    ("--max-prefill-tokens", int, "most prompt tokens prefilled per step"),
    ("--schedule-policy", str, "lpm, dfs-weight, fcfs or priority"),
    ("--cuda-graph-max-bs", int, "replay CUDA graphs for decode batches up to this size (0: off)"),
)


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="serve a model over HTTP (native and OpenAI APIs)")
    serve.add_argument("--model", default="smollm2-135m", help="alias, Hugging Face directory, or .gguf file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=30000)
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (all but /health)")
    serve.add_argument("--served-model-name", default=None, help="the model name the OpenAI API reports")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    for flag, kind, help_text in _SERVE_RUNTIME_OPTIONS:
        serve.add_argument(flag, type=kind, default=None, help=help_text)
    serve.add_argument("--disable-radix-cache", action="store_true", default=None, help="no prefix reuse")


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace

    from rich.console import Console
    from rich.markup import escape

    from runtime.args import RuntimeArgs
    from runtime.errors import ModelLoadError

    console = Console(stderr=True)
    known = {f.name for f in fields(RuntimeArgs)}
    names = [flag[2:].replace("-", "_") for flag, _, _ in _SERVE_RUNTIME_OPTIONS] + ["disable_radix_cache"]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    unsupported = sorted(set(given) - known)
    if unsupported:
        flags = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        console.print(f"[red]error:[/red] not supported by this runtime: {flags}", highlight=False)
        return 2
    if "schedule_policy" in given:
        from runtime.schedule_policy import SCHEDULE_POLICIES

        if given["schedule_policy"] not in SCHEDULE_POLICIES:
            console.print(f"[red]error:[/red] --schedule-policy must be one of {', '.join(SCHEDULE_POLICIES)}",
                          highlight=False)
            return 2
    runtime_args = replace(RuntimeArgs(model=args.model), **given)
    try:
        from runtime.server import serve

        serve(runtime_args, host=args.host, port=args.port, api_key=args.api_key,
              served_model_name=args.served_model_name, log_level=args.log_level)
    except (ModelLoadError, ValueError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _add_run_parser(commands) -> None:
    run = commands.add_parser("run", help="run an @function program on a local runtime and print its variables")
    run.add_argument("program", metavar="FILE.py[:FUNC]", help="the program (FUNC: needed if the file has several)")
    run.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                     help="a program argument (JSON values are parsed: 3, true, [1,2]; others are strings)")
    run.add_argument("--model", default="smollm2-135m", help="alias, Hugging Face directory, or .gguf file")
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto")
    run.add_argument("--temperature", type=float, default=None, help="the program's default temperature")
    run.add_argument("--max-new-tokens", type=int, default=None, help="the program's default token budget")
    run.add_argument("--text", action="store_true", help="also print the program's whole text")


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from sglang_dsl.lang.errors import ProgramError
    from sglang_dsl.lang.program_file import ProgramFileError, load_program, parse_arguments

    console = Console()
    try:
        program = load_program(args.program)
        arguments = parse_arguments(args.arg)
    except ProgramFileError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 2
    sampling = {k: v for k, v in (("temperature", args.temperature), ("max_new_tokens", args.max_new_tokens))
                if v is not None}
    try:
        from backends.local import Runtime
        from runtime.errors import ModelLoadError

        runtime = Runtime(model=args.model, device=args.device, dtype=args.dtype)
    except (ModelLoadError, ValueError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 2
    try:
        state = program.run(**arguments, **sampling, backend=runtime)
    except (ProgramError, TypeError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 1
    finally:
        runtime.shutdown()
    _print_state(console, program.name, state, args.text)
    return 0


def _print_state(console, name: str, state, with_text: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{name}: variables", show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("value")
    for key, value in state.variables().items():
        table.add_row(Text(key), Text(value if isinstance(value, str) else repr(value)))
    console.print(table)
    if with_text:
        console.rule("text")
        console.print(state.text(), markup=False, highlight=False)


def _generate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from runtime.errors import ModelLoadError

    console = Console()
    try:
        from runtime.args import RuntimeArgs
        from runtime.generate import GenerationParams, generate
        from runtime.model_runner import ModelRunner
        from runtime.tokenizer import load_tokenizer

        runner = ModelRunner(RuntimeArgs(model=args.model, device=args.device, dtype=args.dtype))
        tokenizer = load_tokenizer(runner.source)
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}]) if args.chat else p
            for p in args.prompts
        ]
        prompts = [tokenizer.encode(t, add_special_tokens=not args.chat) for t in texts]
        params = GenerationParams(args.max_new_tokens, args.temperature, args.top_p, seed=args.seed)
        generations = generate(runner, prompts, params, tokenizer.eos_token_ids)
    except (ModelLoadError, ValueError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 2
    for prompt, generation in zip(args.prompts, generations):
        console.rule(f"[bold]{prompt}")
        console.print(tokenizer.decode(list(generation.token_ids), skip_special_tokens=True), markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
