"""Interpreter overhead: ``run_batch`` of N programs (two ``gen`` and one ``select`` each) against an instant stub
of the native API on loopback (`benchmarks.native_stub`), sglang-dsl's ``RuntimeEndpoint`` vs SGLang's own
frontend, same program, stub and machine, in one run. The stub answers at once, so programs/s measures the
frontends (interpreter, HTTP client, select scoring), not a model.

``--program-endpoint`` adds a row against a stub that also offers our ``/generate_program`` (each program is then
one request: the fused path's client overhead). SGLang's column uses its frontend as `benchmarks.sglang_frontend`
fetches it (into ``~/.cache/sglang-dsl/sglang-0.5.23`` on first use; ``--sglang-path`` points elsewhere).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_frontend.py [--programs 1000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import sglang_frontend  # noqa: E402
from benchmarks.native_stub import NativeStub  # noqa: E402

def make_program(sgl: Any):
    """The benchmark program, written once against either frontend's module."""

    @sgl.function
    def judge(s, question):
        s += "Question: " + question + "\n"
        s += "Answer:" + sgl.gen("answer", max_tokens=16, stop="\n")
        s += "\nReason:" + sgl.gen("reason", max_tokens=16, stop="\n")
        s += "\nVerdict:" + sgl.select("verdict", ["correct", "wrong", "unsure"])

    return judge


def runner(frontend: Any, url: str, programs: int, warmup: int, profile: bool = False) -> Callable[[], float]:
    """A warmed-up batch of ``programs`` on ``frontend`` (sglang_dsl or SGLang's ``sglang.lang.api``) against
    ``url``; each call runs it once, checks every state (reading a failed program's variable raises) and returns
    its seconds (``profile``: printing a cProfile of the run)."""
    backend = frontend.RuntimeEndpoint(url)
    program = make_program(frontend)
    batch = [{"question": f"Is {i} + {i} = {2 * i}?"} for i in range(programs)]
    program.run_batch(batch[:warmup], backend=backend, temperature=0)

    def once() -> float:
        gc.collect()
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        start = time.perf_counter()
        states = program.run_batch(batch, backend=backend, temperature=0)
        elapsed = time.perf_counter() - start
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        assert len(states) == programs
        for state in states:
            assert state["verdict"] in ("correct", "wrong", "unsure") and state["answer"]
        return elapsed

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each frontend")
    parser.add_argument("--sglang-path", type=Path, default=sglang_frontend.DEFAULT_PATH)
    parser.add_argument("--profile", action="store_true", help="cProfile sglang-dsl's runs")
    parser.add_argument("--program-endpoint", action="store_true",
                        help="also run against a stub that offers our /generate_program (one request a program)")
    args = parser.parse_args()
    console = Console(width=110)
    with NativeStub() as url, NativeStub(program_endpoint=True) as program_url:
        console.print(f"stub at {url}; {args.programs} programs of gen, gen, select each; {args.repeat} runs each")
        import sglang_dsl

        runners = {"sglang-dsl RuntimeEndpoint": runner(sglang_dsl, url, args.programs, args.warmup, args.profile)}
        if args.program_endpoint:
            runners["sglang-dsl, stub offers /generate_program"] = runner(sglang_dsl, program_url, args.programs,
                                                                         args.warmup, args.profile)
        api = sglang_frontend.load(sglang_frontend.fetch(args.sglang_path))
        runners["SGLang 0.5.23 RuntimeEndpoint"] = runner(api, url, args.programs, args.warmup)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.repeat):
            for name, once in runners.items():
                times[name].append(once())
    table = Table(title=f"run_batch of {args.programs} programs (gen, gen, select) against an instant stub")
    for column in ("frontend", "best s", "median s", "programs/s (best)", "vs SGLang (best)"):
        table.add_column(column, justify="right" if column != "frontend" else "left")
    baseline = min(times["SGLang 0.5.23 RuntimeEndpoint"])
    for name, runs in times.items():
        ratio = f"{baseline / min(runs):.2f}x"
        table.add_row(name, f"{min(runs):.2f}", f"{statistics.median(runs):.2f}",
                      f"{args.programs / min(runs):.0f}", ratio)
    console.print(table)


if __name__ == "__main__":
    main()
