"""Where a decode step's time goes on the GPU: the captured CUDA graph alone versus the whole step (host-side
slot allocation, batch building, attention planning, graph replay).

    python benchmarks/bench_decode_overhead.py --model benchmarks/shapes/llama-3.1-8b
"""

from __future__ import annotations

import argparse
import bisect
import time

import torch
from rich.console import Console
from rich.table import Table

from runtime.args import RuntimeArgs
from runtime.model_runner import ModelRunner
from runtime.sequences import Sequences


def per_call(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="benchmarks/shapes/smollm2-135m")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    runner = ModelRunner(RuntimeArgs(model=args.model, device="cuda", load_format="dummy",
                                     max_total_tokens=max(args.batch_sizes) * (args.context + 3 * args.repeats),
                                     max_running_requests=max(args.batch_sizes), cuda_graph_max_bs=max(args.batch_sizes)))
    table = Table(title=f"{args.model}: decode step at context {args.context} on {torch.cuda.get_device_name()}")
    for column in ("batch", "graph replay ms", "whole step ms", "host overhead ms"):
        table.add_column(column, justify="right")
    for batch in args.batch_sizes:
        which, one = list(range(batch)), [[1]] * batch
        graphs = runner.decode_graphs
        graph = graphs.graphs[graphs.sizes[bisect.bisect_left(graphs.sizes, batch)]]
        with Sequences(runner, batch) as seqs:
            seqs.extend(which, [[1] * args.context] * batch)
            seqs.extend(which, one)
            replay = per_call(graph.replay, args.repeats)
            step = per_call(lambda: seqs.extend(which, one), args.repeats)
        table.add_row(str(batch), f"{replay * 1e3:.3f}", f"{step * 1e3:.3f}", f"{(step - replay) * 1e3:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
