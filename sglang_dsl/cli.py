"""The ``sglang-dsl`` command line.

``sglang-dsl generate [--model MODEL] [--chat] PROMPT...`` continues prompts on a model (default: the embedded
SmolLM2-135M-Instruct). Runtime modules are imported only by the commands that need them, so the language
package itself never imports torch."""

from __future__ import annotations

import argparse
import sys


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
    args = parser.parse_args(argv)
    return _generate(args)


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
