"""``sglang-dsl compile FILE.py[:FUNC] [--arg NAME=VALUE ...] [--batch ARGS.jsonl] [--format text|json]``.

Traces the program (``--arg`` values are bound; the other arguments stay placeholders), runs the compiler passes
(`sglang_dsl.compiler.program_plan`) and, with ``--batch`` (one JSON object of arguments per line), plans the
batch (`sglang_dsl.compiler.batch_plan`). Prints the IR, then the plans: shared prefixes with token counts,
constraint automaton sizes and compile times. Token counts and constraints use the tokenizer of ``--model``
(only its tokenizer is loaded); ``--model none`` counts characters and compiles nothing."""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from pathlib import Path
from typing import Any


class CompileError(ValueError):
    """Bad input to ``compile``; the message says what and where."""


def add_compile_parser(commands) -> None:
    parser = commands.add_parser("compile", help="print a program's IR and its compiled plan")
    parser.add_argument("program", metavar="FILE.py[:FUNC]", help="the program (FUNC: needed if the file has several)")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                        help="bind a program argument (JSON values are parsed; others are strings)")
    parser.add_argument("--batch", metavar="ARGS.jsonl", help="plan run_batch over these argument sets")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--model", default="smollm2-135m",
                        help="whose tokenizer counts tokens and compiles constraints ('none': characters)")
    parser.add_argument("--page-size", type=int, default=1, help="the runtime's KV page size (cache hits)")
    parser.add_argument("--min-shared-tokens", type=int, default=None,
                        help="least tokens a shared prefix adds to be prefilled on its own")
    parser.add_argument("--no-constraint-cache", action="store_true", help="compile constraints afresh")


def run_compile(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from sglang_dsl.lang.program_file import ProgramFileError

    console = Console(stderr=True)
    try:
        output = compile_report(args)
    except (ProgramFileError, CompileError, TypeError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 2
    print(output)
    return 0


def compile_report(args: argparse.Namespace) -> str:
    """The text ``compile`` prints for ``args``."""
    from sglang_dsl.compiler.batch_plan import DEFAULT_MIN_SHARED_TOKENS, plan_batch
    from sglang_dsl.compiler.program_plan import plan_program
    from sglang_dsl.lang.program_file import load_program, parse_arguments

    program = load_program(args.program)
    graph = program.trace(**parse_arguments(args.arg))
    batch = _read_batch(Path(args.batch), program) if args.batch else None
    codec, template, compiler = _model_tools(args.model, not args.no_constraint_cache)
    plan = plan_program(graph, codec, template=template, compiler=compiler)
    batch_plan = None
    if batch is not None:
        batch_plan = plan_batch(graph, batch, codec, template=template, page_size=args.page_size,
                                min_shared_tokens=args.min_shared_tokens or DEFAULT_MIN_SHARED_TOKENS)
    if args.format == "json":
        out: dict[str, Any] = {"ir": json.loads(graph.to_json()), "plan": json.loads(plan.to_json())}
        if batch_plan is not None:
            out["batch_plan"] = json.loads(batch_plan.to_json())
        return json.dumps(out, indent=2, ensure_ascii=False)
    parts = [str(graph), str(plan)] + ([str(batch_plan)] if batch_plan is not None else [])
    return "\n\n".join(part.rstrip("\n") for part in parts)


def _read_batch(path: Path, program) -> list[dict[str, Any]]:
    if not path.is_file():
        raise CompileError(f"--batch {path}: no such file")
    batch = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise CompileError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(entry, dict):
            raise CompileError(f"{path}:{number}: expected an object of arguments, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(program.arg_names))
        if unknown:
            raise CompileError(f"{path}:{number}: {program.name}() has no arguments {', '.join(unknown)}")
        batch.append(program.arguments((), entry))
    if not batch:
        raise CompileError(f"--batch {path}: no argument sets in it")
    return batch


def _model_tools(model: str, disk_cache: bool):
    """The codec, chat template and constraint compiler of ``model``'s tokenizer (``none``: characters only)."""
    if model == "none":
        return None, None, None
    from sglang_dsl.compiler.codec import TokenizerCodec
    from sglang_dsl.compiler.constraint import ConstraintCompiler, default_cache_dir
    from sglang_dsl.compiler.vocabulary import Vocabulary

    tokenizer = _tokenizer(model)
    codec = TokenizerCodec(lambda text: _encode(tokenizer, text), tokenizer)
    template = _Template(tokenizer) if tokenizer.chat_template else None
    compiler = ConstraintCompiler(Vocabulary.from_tokenizer(tokenizer), default_cache_dir() if disk_cache else None)
    return codec, template, compiler


@lru_cache(maxsize=4)
def _tokenizer(model: str):
    from runtime.errors import ModelLoadError
    from runtime.model_files import resolve_model
    from runtime.tokenizer import load_tokenizer

    try:
        return load_tokenizer(resolve_model(model))
    except (ModelLoadError, OSError, ValueError) as err:
        raise CompileError(f"--model {model}: cannot load its tokenizer: {err}") from None


def _encode(tokenizer, text: str) -> list[int]:
    """As the local runtime encodes a prompt: BOS added unless the text already starts with it."""
    bos = tokenizer.bos_token_id
    bos_text = tokenizer.id_to_token(bos) if bos is not None else None
    return tokenizer.encode(text, add_special_tokens=not (bos_text and text.startswith(bos_text)))


class _Template:
    """The tokenizer's chat template, as the compiler's passes render roles."""

    image_token = None

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def render(self, messages, add_generation_prompt: bool = False) -> str:
        return self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)
