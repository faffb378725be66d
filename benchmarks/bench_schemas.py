"""MaskBench (JSONSchemaBench's real-world schemas with valid and invalid instances) through the JSON-schema
compiler, with MaskBench's outcome classes and compile-time percentiles.

    python benchmarks/bench_schemas.py --data DIR                   # every schema, one worker
    python benchmarks/bench_schemas.py --data DIR --sample 400 --seed 0 --jobs 2 --timeout 30
    python benchmarks/bench_schemas.py --data DIR --reasons 20      # also: the most common refusals / failures

The data is not vendored: ``DIR`` is MaskBench's ``maskbench/data`` folder (one ``<split>---<name>.json`` per
schema: ``schema`` and ``tests``, each test ``data`` and ``valid``). Get it with
``git clone --depth 1 https://github.com/guidance-ai/jsonschemabench`` (then ``--data jsonschemabench/maskbench/data``);
no PyPI package ships it. ``$MASKBENCH_DATA`` is the default for ``--data``.

Per schema, as MaskBench's runner does: compile (here ``compile_constraint`` against the SmolLM2-135M vocabulary,
what the runtime compiles: automaton and token index, or the grammar with its first mask), then check every
instance: its compact JSON text (``json.dumps(data, separators=(",", ":"), ensure_ascii=False)``) walked through
the compiled matcher byte by byte, accepted when the walk survives and ends in an accepting state (the full
language, which a token walk of the same text follows too). Outcomes: ``passing`` (compiled; every valid
instance accepted, every invalid one rejected; schemas without tests pass by compiling), ``compile error``
(refused or raised), ``timeout`` (compile + checks over ``--timeout`` s; the worker is killed), ``out of
memory`` (over ``--mem-gib``), ``crash`` (the worker died), ``validation error`` (a valid instance rejected),
``invalidation error`` (an invalid instance accepted: a bug; an exception while checking counts as a validation
error, as in MaskBench's runner). Compile-time percentiles are MaskBench's TTFM:
schemas that compiled, timeouts counted at the timeout. Each schema runs in a worker process (``--jobs``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import time
from collections import Counter
from multiprocessing.connection import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUTCOMES = ("passing", "compile error", "timeout", "out of memory", "crash", "validation error",
            "invalidation error")


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def run_schema(path: str, vocab) -> dict:
    """The outcome of one MaskBench file: ``{"id", "outcome", "compile_s", "detail"}``."""
    from sglang_dsl.compiler.constraint import ConstraintSpec, compile_constraint
    from sglang_dsl.compiler.errors import ConstraintError

    with open(path, encoding="utf-8") as f:
        case = json.load(f)
    out = {"id": os.path.basename(path), "outcome": "passing", "compile_s": None, "detail": ""}
    started = time.perf_counter()
    try:
        matcher = compile_constraint(ConstraintSpec("json_schema", json.dumps(case["schema"])), vocab)
    except MemoryError:
        return {**out, "outcome": "out of memory"}
    except ConstraintError as err:
        return {**out, "outcome": "compile error", "detail": str(err).splitlines()[0]}
    except Exception as err:  # noqa: BLE001 - a compiler bug, reported as such
        return {**out, "outcome": "compile error", "detail": f"BUG {type(err).__name__}: {err}"[:300]}
    out["compile_s"] = time.perf_counter() - started
    for i, test in enumerate(case.get("tests", [])):
        try:
            state = matcher.advance_bytes(matcher.start(), compact(test["data"]))
            accepted = state is not None and matcher.accepting(state)
        except Exception as err:  # noqa: BLE001 - as MaskBench's runner: an exception is a validation error
            out.update(outcome="validation error", detail=f"test #{i}: EXN {type(err).__name__}: {err}"[:200])
            continue
        if accepted != test["valid"]:
            kind = "validation error" if test["valid"] else "invalidation error"
            if out["outcome"] != "invalidation error":
                out.update(outcome=kind, detail=f"test #{i}")
    return out


def _worker(conn, mem_gib: float) -> None:
    """Receive file paths, send back outcomes, until None."""
    limit = int(mem_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from runtime.model_files import DEFAULT_MODEL, resolve_model
    from runtime.tokenizer import load_tokenizer
    from sglang_dsl.compiler.vocabulary import Vocabulary

    vocab = Vocabulary.from_tokenizer(load_tokenizer(resolve_model(DEFAULT_MODEL))).prepare()
    import interegular  # noqa: F401 - imported once here, not inside the first schema's timing
    import lark  # noqa: F401

    conn.send("ready")
    while (path := conn.recv()) is not None:
        conn.send(run_schema(path, vocab))


class _Pool:
    """Worker processes with a per-schema time limit: a worker over it is killed and replaced."""

    def __init__(self, jobs: int, timeout: float, mem_gib: float):
        self.jobs, self.timeout, self.mem_gib = jobs, timeout, mem_gib
        self.ctx = mp.get_context("fork")
        self.workers = [self._start() for _ in range(jobs)]

    def _start(self) -> dict:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.mem_gib), daemon=True)
        proc.start()
        if parent.recv() != "ready":
            raise RuntimeError("worker failed to start")
        return {"proc": proc, "conn": parent, "path": None, "since": 0.0}

    def run(self, paths: list[str], report) -> None:
        queue = list(reversed(paths))
        while queue or any(w["path"] for w in self.workers):
            for i, w in enumerate(self.workers):
                if w["path"] is None and queue:
                    w["path"], w["since"] = queue.pop(), time.perf_counter()
                    w["conn"].send(w["path"])
            busy = [w for w in self.workers if w["path"]]
            ready = wait([w["conn"] for w in busy], timeout=0.05)
            now = time.perf_counter()
            for i, w in enumerate(self.workers):
                if w["path"] is None:
                    continue
                name = os.path.basename(w["path"])
                if w["conn"] in ready:
                    try:
                        report(w["conn"].recv())
                        w["path"] = None
                        continue
                    except EOFError:
                        outcome = "out of memory" if w["proc"].exitcode == -9 else "crash"  # -9: the OOM killer
                        report({"id": name, "outcome": outcome, "compile_s": None,
                                "detail": f"exit code {w['proc'].exitcode}"})
                elif now - w["since"] > self.timeout:
                    report({"id": name, "outcome": "timeout", "compile_s": self.timeout, "detail": ""})
                else:
                    continue
                w["proc"].kill()
                w["proc"].join()
                self.workers[i] = self._start()

    def close(self) -> None:
        for w in self.workers:
            w["conn"].send(None)
            w["proc"].join(timeout=5)


def percentile(values: list[float], p: float) -> float:
    """MaskBench's percentile: the value at index ``int(n * p / 100)`` of the sorted values."""
    values = sorted(values)
    return values[min(int(len(values) * p / 100), len(values) - 1)] if values else float("nan")


def summarize(results: list[dict], timeout: float) -> str:
    counts = Counter(r["outcome"] for r in results)
    n = len(results)
    lines = ["| outcome | schemas | % |", "|---|---:|---:|"]
    for outcome in OUTCOMES:
        lines.append(f"| {outcome} | {counts[outcome]:,} | {100 * counts[outcome] / max(n, 1):.1f}% |")
    lines.append(f"| **total** | {n:,} | |")
    times = [r["compile_s"] for r in results if r["compile_s"] is not None]
    lines += ["", "| compile time | p50 | p75 | p90 | p95 | p99 | max |", "|---|---:|---:|---:|---:|---:|---:|",
              "| seconds | " + " | ".join(f"{percentile(times, p):.3f}" for p in (50, 75, 90, 95, 99, 100)) + " |"]
    by_split = Counter(_split(r["id"]) for r in results)
    passing = Counter(_split(r["id"]) for r in results if r["outcome"] == "passing")
    lines += ["", "| split | schemas | passing |", "|---|---:|---:|"]
    for split in sorted(by_split):
        lines.append(f"| {split} | {by_split[split]:,} | {100 * passing[split] / by_split[split]:.1f}% |")
    return "\n".join(lines)


def _split(name: str) -> str:
    """MaskBench's split of a file: ``Github_easy---o1.json`` -> Github_easy, ``BFCL_simple_3.json`` -> BFCL."""
    return name.split("---")[0] if "---" in name else name.split("_")[0]


def reasons(results: list[dict], top: int) -> str:
    """The most common details of each failing outcome (schema error paths reduced to their keyword)."""
    import re

    lines = []
    for outcome in OUTCOMES[1:]:
        details = Counter(re.sub(r"at #\S*", "at #...", r["detail"]) for r in results if r["outcome"] == outcome)
        for detail, count in details.most_common(top):
            lines.append(f"{count:6}  {outcome}: {detail[:160]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("MASKBENCH_DATA"), help="MaskBench's maskbench/data folder")
    parser.add_argument("--sample", type=int, help="a random sample of N schemas (see --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first N schemas (sorted by name)")
    parser.add_argument("--only", nargs="*", help="only these file names")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per schema (compile + checks)")
    parser.add_argument("--mem-gib", type=float, default=6.0, help="address-space limit per worker")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--reasons", type=int, default=0, help="list the N most common details per failure class")
    parser.add_argument("--json", help="write every schema's outcome to this file")
    args = parser.parse_args()
    if not args.data or not Path(args.data).is_dir():
        parser.error("--data DIR (MaskBench's maskbench/data folder) is required; see the module docstring")
    paths = sorted(str(p) for p in Path(args.data).glob("*.json"))
    if args.only:
        paths = [p for p in paths if os.path.basename(p) in set(args.only)]
    if args.sample:
        paths = sorted(random.Random(args.seed).sample(paths, min(args.sample, len(paths))))
    if args.limit:
        paths = paths[: args.limit]
    results: list[dict] = []
    started = time.perf_counter()

    def report(result: dict) -> None:
        results.append(result)
        if len(results) % 200 == 0:
            ok = sum(r["outcome"] == "passing" for r in results)
            print(f"  {len(results)}/{len(paths)}  passing {ok}  {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)

    pool = _Pool(args.jobs, args.timeout, args.mem_gib)
    try:
        pool.run(paths, report)
    finally:
        pool.close()
    print(f"MaskBench: {len(results)} schemas from {args.data}, --timeout {args.timeout:g} s, --jobs {args.jobs}, "
          f"{time.perf_counter() - started:.0f} s wall\n")
    print(summarize(results, args.timeout))
    if args.reasons:
        print("\n" + reasons(results, args.reasons))
    if args.json:
        Path(args.json).write_text(json.dumps(sorted(results, key=lambda r: r["id"]), indent=1))


if __name__ == "__main__":
    main()
