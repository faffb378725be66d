"""Serving performance of the engine: throughput, TTFT, inter-token latency, end-to-end latency and prefix-cache
hit rate, for several engine configurations side by side in one run.

Workloads (random token ids, as SGLang's bench_serving generates them):
  gsp     generated shared prefix: groups of prompts that share a long system prompt, shuffled
  random  independent prompts of random length

    python benchmarks/bench_serving.py                                  # SmolLM2 on CPU, small sizes
    python benchmarks/bench_serving.py --device cuda --groups 16 --prompts-per-group 32 --system-len 2048 \\
        --question-len 128 --output-len 256 --random-prompts 512

``--request-rate inf`` submits everything at once (offline throughput); a finite rate sends Poisson arrivals
(online latency)."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from runtime.args import RuntimeArgs
from runtime.engine import Engine

CONFIGS = {
    "radix+lpm": dict(schedule_policy="lpm"),
    "radix+fcfs": dict(schedule_policy="fcfs"),
    "no-radix": dict(disable_radix_cache=True, schedule_policy="fcfs"),
}


@dataclass
class Timing:
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    ttft: float
    itls: list[float]
    e2e: float
    retractions: int
    failure: str | None  # why the request stopped short of its output length, if it did


def gsp_workload(args, vocab: int, rng: random.Random) -> list[tuple[list[int], int]]:
    tokens = lambda n: [rng.randrange(10, vocab) for _ in range(n)]  # noqa: E731
    prompts = [(system + tokens(args.question_len), args.output_len)
               for system in (tokens(args.system_len) for _ in range(args.groups))
               for _ in range(args.prompts_per_group)]
    rng.shuffle(prompts)
    return prompts


def random_workload(args, vocab: int, rng: random.Random) -> list[tuple[list[int], int]]:
    return [([rng.randrange(10, vocab) for _ in range(rng.randint(args.random_min_len, args.random_max_len))],
             rng.randint(max(1, args.output_len // 2), args.output_len)) for _ in range(args.random_prompts)]


async def run_one(engine: Engine, prompt: list[int], output_len: int, delay: float, progress, task) -> Timing:
    await asyncio.sleep(delay)
    request = engine.make_request(input_ids=prompt, stream=True, sampling_params={
        "temperature": 0, "max_new_tokens": output_len, "ignore_eos": True})
    start = last = time.perf_counter()
    stamps, seen, final = [], 0, None
    async for output in engine.generate_stream(request):
        now = time.perf_counter()
        if len(output.output_ids) > seen:
            stamps.append(now - last)
            last, seen = now, len(output.output_ids)
        final = output
    progress.advance(task)
    failure = None
    if final.completion_tokens != output_len:
        failure = f"{final.finish.type}: {final.finish.message or ''} ({final.completion_tokens}/{output_len} tokens)"
    return Timing(len(prompt), final.completion_tokens, final.cached_tokens, stamps[0] if stamps else 0.0,
                  stamps[1:], time.perf_counter() - start, final.num_retractions, failure)


def warm_up(engine: Engine, vocab: int) -> None:
    """Run the kernels every timed workload uses once (JIT compilation, CUDA graph warm-up): two requests that
    share a prefix, so both fresh and cached-prefix prefill run, then decode."""
    prefix = [11 + i % (vocab - 11) for i in range(300)]
    prompts = [prefix + [12, 13], prefix + [14, 15]]
    for batch in ([prompts[0]], prompts):
        engine.generate(input_ids=batch, sampling_params={"max_new_tokens": 8, "ignore_eos": True})
    engine.flush_cache()


async def run_workload(engine, workload, rate: float, seed: int, progress, label: str):
    rng = random.Random(seed)
    delays, t = [], 0.0
    for _ in workload:
        delays.append(t)
        t += 0 if rate == float("inf") else rng.expovariate(rate)
    task = progress.add_task(label, total=len(workload))
    start = time.perf_counter()
    timings = await asyncio.gather(*(run_one(engine, p, n, d, progress, task) for (p, n), d in zip(workload, delays)))
    return timings, time.perf_counter() - start


def summarize(config: str, workload: str, timings: list[Timing], seconds: float) -> list[str]:
    ms = lambda xs, q=None: 1e3 * (statistics.quantiles(xs, n=100)[q - 1] if q else statistics.median(xs)) if len(xs) > 1 else 0.0  # noqa: E731
    itls = [x for t in timings for x in t.itls]
    prompt = sum(t.prompt_tokens for t in timings)
    return [config, workload, str(len(timings)), f"{seconds:.1f}",
            f"{prompt / seconds:,.0f}", f"{sum(t.output_tokens for t in timings) / seconds:,.0f}",
            f"{ms([t.ttft for t in timings]):.0f}", f"{ms([t.ttft for t in timings], 99):.0f}",
            f"{ms(itls):.1f}", f"{ms(itls, 99):.1f}", f"{ms([t.e2e for t in timings]):.0f}",
            f"{100 * sum(t.cached_tokens for t in timings) / prompt:.1f}%",
            str(sum(t.retractions for t in timings)), str(sum(t.failure is not None for t in timings))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--workloads", nargs="+", default=["gsp", "random"], choices=["gsp", "random"])
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--prompts-per-group", type=int, default=6)
    parser.add_argument("--system-len", type=int, default=384)
    parser.add_argument("--question-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--random-prompts", type=int, default=16)
    parser.add_argument("--random-min-len", type=int, default=32)
    parser.add_argument("--random-max-len", type=int, default=256)
    parser.add_argument("--request-rate", type=float, default=float("inf"))
    parser.add_argument("--max-running-requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    table = Table(title=f"{args.model} on {args.device}, request rate {args.request_rate}")
    for column in ("config", "workload", "reqs", "s", "in tok/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms",
                   "ITL p50 ms", "ITL p99 ms", "E2E p50 ms", "cache hit", "retracted", "failed"):
        table.add_column(column, justify="right")
    failures: set[str] = set()
    with Progress(transient=True) as progress:
        for config in args.configs:
            with Engine(RuntimeArgs(model=args.model, device=args.device, load_format=args.load_format,
                                    max_running_requests=args.max_running_requests, **CONFIGS[config])) as engine:
                vocab = engine.model_config.vocab_size
                warm_up(engine, vocab)
                for name in args.workloads:
                    build = gsp_workload if name == "gsp" else random_workload
                    workload = build(args, vocab, random.Random(args.seed))
                    engine.flush_cache()
                    timings, seconds = asyncio.run(run_workload(engine, workload, args.request_rate, args.seed,
                                                                progress, f"{config} {name}"))
                    table.add_row(*summarize(config, name, timings, seconds))
                    failures.update(f"{config} {name}: {t.failure}" for t in timings if t.failure)
    console = Console(width=200)
    console.print(table)
    for failure in sorted(failures):
        console.print(f"[red]failed[/red] {failure}")


if __name__ == "__main__":
    main()
