"""``run_batch`` of N short programs over ``RuntimeEndpoint`` against ``sglang-dsl serve`` (a subprocess on a
loopback port) vs the same programs on the in-process local runtime: throughput, and how full the runtime's batch
stays — requests running + queued in the runtime, sampled every 50 ms during the run (the server's ``/metrics``
gauges; the local engine's ``stats()``).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_remote.py [--programs 500] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sglang_dsl as sgl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPICS = ["rain", "cats", "bread", "rivers", "music", "stone", "salt", "glass", "trains", "honey"]


@sgl.function
def short_program(s, topic, n):
    s += f"Request {n}. One word about {topic}:" + sgl.gen("word", max_tokens=8, temperature=0, stop="\n")


@dataclass
class Result:
    seconds: float
    tokens: int
    in_flight: list[int]


class Sampler:
    """Calls ``read()`` every ``interval`` seconds on a thread until stopped; keeps the values."""

    def __init__(self, read: Callable[[], int], interval: float = 0.05):
        self.read, self.interval, self.values = read, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.values.append(self.read())
            except Exception:  # noqa: BLE001 - a missed sample is not a result
                pass

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run(backend: Any, programs: int, read_in_flight: Callable[[], int]) -> Result:
    batch = [{"topic": TOPICS[i % len(TOPICS)], "n": i} for i in range(programs)]
    short_program.run_batch(batch[:8], backend=backend)  # warm-up
    with Sampler(read_in_flight) as sampler:
        start = time.perf_counter()
        states = short_program.run_batch(batch, backend=backend, progress_bar=True)
        seconds = time.perf_counter() - start
    errors = [s.error() for s in states if s.error() is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} programs failed, e.g. {errors[0]}")
    tokens = sum(s.get_meta_info("word")["completion_tokens"] for s in states)
    return Result(seconds, tokens, sampler.values)


def metric_reader(url: str) -> Callable[[], int]:
    client = httpx.Client(timeout=5)

    def read() -> int:
        text = client.get(url + "/metrics").text
        values = re.findall(r"^\w+_num_(?:running|queued)_requests(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
        return int(sum(float(v) for v in values))

    return read


def start_server(model: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "sglang_dsl.cli", "serve", "--model", model, "--port", str(port), "--device", "cpu",
         "--log-level", "warning"], env={**os.environ, "PYTHONPATH": ROOT}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"sglang-dsl serve exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise TimeoutError("sglang-dsl serve did not come up within 300 s")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=500)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    console = Console(width=110)
    results: dict[str, Result] = {}

    with sgl.Runtime(model=args.model, device="cpu") as local:
        stats = local.engine.stats
        results["local runtime (in-process)"] = run(local, args.programs, lambda: stats()["running"] + stats()["waiting"])

    port = free_port()
    server = start_server(args.model, port)
    try:
        url = f"http://127.0.0.1:{port}"
        with sgl.RuntimeEndpoint(url) as endpoint:
            results["RuntimeEndpoint -> sglang-dsl serve"] = run(endpoint, args.programs, metric_reader(url))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)

    table = Table(title=f"run_batch of {args.programs} short programs (one gen of <= 8 tokens), {args.model}, CPU")
    for column in ("backend", "seconds", "programs/s", "tokens/s", "in flight: mean", "max"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for name, r in results.items():
        mean = sum(r.in_flight) / len(r.in_flight) if r.in_flight else 0.0
        table.add_row(name, f"{r.seconds:.1f}", f"{args.programs / r.seconds:.1f}", f"{r.tokens / r.seconds:.0f}",
                      f"{mean:.0f}", str(max(r.in_flight, default=0)))
    console.print(table)


if __name__ == "__main__":
    main()
