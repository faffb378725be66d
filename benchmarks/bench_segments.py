"""Segment fusion: straight-line programs fused into one program request per segment vs one request per node.

Workloads (greedy, so fused and unfused runs produce the same text — checked):
  extract   a record read field by field: 4 gens (regex, stop, JSON schema) and 2 selects in one expression
  classify  three selects in a row after a shared instruction (scored inside the engine when fused)

Backends: the local runtime (in process) and a `RuntimeEndpoint` over HTTP to our server on a loopback port,
where every request the fusion saves is also a round trip saved.

Columns: runtime requests (``requests_total``), tokens prefilled (prompt tokens minus cache hits over all
requests), wall time of the batch (``run_batch``, ``--threads`` at a time), after one untimed round of each.

    python benchmarks/bench_segments.py --batch 8          # SmolLM2 on CPU
    python benchmarks/bench_segments.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import sglang_dsl as sgl
from sglang_dsl.lang.config import global_config

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "year": {"type": "integer", "minimum": 1800, "maximum": 2030}},
          "required": ["city", "year"]}
PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Marie Curie", "Isaac Newton", "Nikola Tesla",
          "Emmy Noether", "Carl Gauss"]


@sgl.function
def extract(s, person):
    s += "Facts about famous people.\nPerson: " + person + "\n"
    s += ("Field:" + sgl.gen("field", max_tokens=6, stop="\n") + "\nBorn: " + sgl.gen("born", regex="1[0-9]{3}")
          + "\nAlive today: " + sgl.select("alive", choices=["yes", "no"])
          + "\nKnown for:" + sgl.gen("known", max_tokens=10, stop="\n")
          + "\nPlace and year as JSON: " + sgl.gen("where", max_tokens=24, json_schema=SCHEMA)
          + "\nFamous: " + sgl.select("famous", choices=["very", "somewhat", "not really"]))


@sgl.function
def classify(s, person):
    s += "Answer each question with one of the options.\nPerson: " + person + "\n"
    s += ("Scientist or artist? " + sgl.select("kind", choices=["scientist", "artist"])
          + "\nCentury: " + sgl.select("century", choices=["17th", "18th", "19th", "20th"])
          + "\nWoman or man? " + sgl.select("gender", choices=["woman", "man"]))


WORKLOADS = {"extract": extract, "classify": classify}


def counters(engine) -> tuple[float, float, float]:
    m = engine.metrics
    requests = sum(m.value("sglang_dsl_requests_total", {"finish_reason": r}) or 0 for r in ("stop", "length", "abort"))
    return requests, m.value("sglang_dsl_prompt_tokens_total") or 0, m.value("sglang_dsl_cached_tokens_total") or 0


def measure(program, backend, engine, batch, threads, fuse) -> tuple[float, float, float, list]:
    global_config.enable_segment_fusion = fuse
    backend.flush_cache()
    before = counters(engine)
    start = time.perf_counter()
    states = program.run_batch([{"person": PEOPLE[i % len(PEOPLE)]} for i in range(batch)], backend=backend,
                               temperature=0, num_threads=threads)
    seconds = time.perf_counter() - start
    after = counters(engine)
    return after[0] - before[0], (after[1] - before[1]) - (after[2] - before[2]), seconds, [s.text() for s in states]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--load-format", default="auto", help="dummy: random weights of the model's shape")
    parser.add_argument("--attention-backend", default=None, help="torch or flashinfer (default: the runtime's)")
    parser.add_argument("--backends", nargs="+", default=["local", "http"], choices=["local", "http"])
    parser.add_argument("--modes", nargs="+", default=["unfused", "fused"], choices=["unfused", "fused"])
    args = parser.parse_args()

    console = Console()
    runtime = sgl.Runtime(model=args.model, device=args.device, dtype=args.dtype, load_format=args.load_format,
                          attention_backend=args.attention_backend)
    backends = {"local": runtime}
    if "http" in args.backends:
        from runtime.server import BackgroundServer, create_app

        server = BackgroundServer(create_app(runtime.engine)).start()
        backends["http"] = sgl.RuntimeEndpoint(server.url)
    table = Table(title=f"Segment fusion, {args.model} on {args.device}, batch {args.batch}")
    for column in ("workload", "backend", "mode", "requests", "prefilled", "wall s", "same text"):
        table.add_column(column, justify="left" if column in ("workload", "backend", "mode") else "right")
    runs = [(w, b) for w in WORKLOADS for b in args.backends]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("running", total=len(runs) * len(args.modes))
        for workload in WORKLOADS:  # warm up (compiles, CUDA graphs, allocator) outside the timings
            for mode in args.modes:
                measure(WORKLOADS[workload], runtime, runtime.engine, 2, 2, mode == "fused")
        for workload, where in runs:
            backend = backends[where]
            results = {}
            for mode in args.modes:
                results[mode] = measure(WORKLOADS[workload], backend, runtime.engine, args.batch, args.threads,
                                        mode == "fused")
                progress.console.log(f"{workload} {where} {mode}: {results[mode][:3]}")
                progress.advance(task)
            same = len({tuple(texts) for *_, texts in results.values()}) == 1
            for mode, (requests, prefilled, seconds, _) in results.items():
                table.add_row(workload, where, mode, f"{requests:.0f}", f"{prefilled:.0f}", f"{seconds:.2f}",
                              "yes" if same else "NO")
    console.print(table)
    if "http" in backends:
        backends["http"].shutdown()
        server.stop()
    runtime.shutdown()


if __name__ == "__main__":
    main()
