"""Constrained decoding in the engine: output tokens/s for a batch without a constraint and under a regex, a JSON
schema and a JSON grammar, with the host time the scheduler spends building and applying token masks (the
engine's ``constraint_mask_seconds`` metric).

    python benchmarks/bench_constrained.py                                   # SmolLM2 on CPU, batch 8
    python benchmarks/bench_constrained.py --device cuda --model benchmarks/shapes/smollm2-135m \\
        --load-format dummy --batch 64 --max-new-tokens 256

The constraints are those of `bench_constraints.py` (email regex, 8-property schema, JSON grammar in EBNF). Each
runs twice in one engine: "first" compiles it (on the compile worker, while the batch waits) and meets every mask
for the first time, "again" reuses the compiled matcher and the masks it cached. Requests sample at temperature 1
with prompts of their own, so a batch's rows go different ways through the constraint. The disk cache of compiled
constraints is a fresh temporary directory, so "first" is a cold compile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_constraints import JSON_EBNF, REGEXES, SCHEMA  # noqa: E402

from runtime.args import RuntimeArgs  # noqa: E402
from runtime.engine import Engine  # noqa: E402

CONSTRAINTS = {
    "none": {},
    "regex (email)": {"regex": REGEXES["email"][0]},
    "JSON schema": {"json_schema": json.dumps(SCHEMA)},
    "JSON grammar": {"ebnf": JSON_EBNF},
}
MASK = "sglang_dsl_constraint_mask_seconds"


def run_batch(engine: Engine, constraint: dict, args, tag: str) -> dict:
    prompts = [f"Record {tag}-{i}, as JSON: " for i in range(args.batch)]
    params = {"temperature": 1.0, "max_new_tokens": args.max_new_tokens, **constraint}
    mask_s, steps = engine.metrics.value(MASK + "_sum"), engine.metrics.value(MASK + "_count")
    started = time.perf_counter()
    outputs = engine.generate(prompts, params)
    seconds = time.perf_counter() - started
    tokens = sum(o.completion_tokens for o in outputs)
    mask_s = engine.metrics.value(MASK + "_sum") - mask_s
    steps = engine.metrics.value(MASK + "_count") - steps
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "mask_s": mask_s,
            "mask_steps": int(steps), "mask_ms_per_step": 1e3 * mask_s / steps if steps else 0.0,
            "mask_share": mask_s / seconds, "aborted": sum(o.finish is not None and o.finish.type == "abort"
                                                           for o in outputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--constraints", nargs="+", default=list(CONSTRAINTS), choices=list(CONSTRAINTS))
    parser.add_argument("--no-jump-forward", action="store_true", help="decode forced text token by token")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    os.environ["SGLANG_DSL_CONSTRAINT_CACHE"] = tempfile.mkdtemp(prefix="bench-constrained-")
    if args.no_jump_forward:
        os.environ["SGLANG_DSL_JUMP_FORWARD"] = "0"

    results: dict = {}
    with Engine(RuntimeArgs(model=args.model, device=args.device, load_format=args.load_format,
                            max_running_requests=max(args.batch, 1))) as engine:
        run_batch(engine, {}, args, "warm-up")  # kernels compiled, graphs captured
        for name in args.constraints:
            for attempt in ("first", "again"):
                results[f"{name} / {attempt}"] = run_batch(engine, CONSTRAINTS[name], args, attempt)
                if not CONSTRAINTS[name]:
                    break
        stats = engine.stats()
    table = Table(title=f"{args.model} on {args.device}, batch {args.batch}, up to {args.max_new_tokens} tokens, "
                        f"jump-forward {'off' if args.no_jump_forward else 'on'}")
    for column in ("constraint / pass", "s", "out tokens", "out tok/s", "mask ms/step", "mask share", "aborted"):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['seconds']:.2f}", str(r["tokens"]), f"{r['tokens_per_s']:,.0f}",
                      f"{r['mask_ms_per_step']:.3f}", f"{100 * r['mask_share']:.1f}%", str(r["aborted"]))
    Console(width=160).print(table)
    if stats["running"] or stats["waiting"]:
        raise SystemExit(f"requests left over: {stats}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
