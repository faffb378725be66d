"""LM programs compiled vs eager vs radix cache off: tokens prefilled, runtime requests and wall time.

Workloads (each a batch of one program, ``run_batch``, greedy so every mode produces the same text):
  fewshot   few-shot QA: 8 distinct few-shot headers, questions shuffled across them
  tot       tree-of-thought: a fork of thoughts, each forking again, joined back and summarized
  classify  select-heavy classification: two selects per review after shared instructions
  json      JSON extraction with a schema-constrained gen

Modes (one engine with the radix cache, one without; all in one run):
  compiled  batch plan (every shared prefix prefilled once, depth-first) and segment fusion where available
  planned   the batch plan without segment fusion
  eager     no plan, no fusion: the programs run as written, the first program's prompt precached
  no-radix  eager on an engine without the prefix cache

"prefilled" is what the engine computed for prompts (prompt tokens minus cache hits, over all requests); "ideal"
is every distinct prompt prefix computed once, from the requests the eager run made (tokens a request only
reads back from an earlier request's output count as computed; a select's scoring requests each recompute the
prefix's last token, which the ideal counts once). "plan" compares the batch plan's predicted
cache hits for each program's first request with the hits the runtime reported for it.

    python benchmarks/bench_programs.py --quick                  # SmolLM2 on CPU, a minute or two
    python benchmarks/bench_programs.py --device cuda --scale 4  # bigger batches on a GPU
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import sglang_dsl as sgl
from runtime.attention import flashinfer_backend
from sglang_dsl.lang.config import global_config
from sglang_dsl.lang.planned_batch import plan_for

MODES = ("compiled", "planned", "eager", "no-radix")

# ---- workloads -----------------------------------------------------------------------------------------------

COUNTRIES = ["France", "Spain", "Italy", "Peru", "Japan", "Kenya", "Chile", "Egypt", "India", "Canada", "Norway",
             "Greece", "Mexico", "Brazil", "Poland", "Turkey"]


@sgl.function
def fewshot_qa(s, header, question):
    s += header
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=6, stop="\n")


@sgl.function
def tree_of_thought(s, question):
    s += "Think about the question in several ways, then answer.\nQuestion: " + question + "\n"
    thoughts = s.fork(2)
    thoughts += lambda i: f"Approach {i + 1}:" + sgl.gen("approach", max_tokens=8, stop="\n") + "\n"
    for thought in thoughts:
        steps = thought.fork(2)
        steps += lambda i: ("First step:", "Another step:")[i] + sgl.gen("step", max_tokens=8, stop="\n")
        steps.join()
        thought += "Verdict:" + sgl.gen("verdict", max_tokens=4, stop="\n")
    thoughts.join()
    s += "Final answer:" + sgl.gen("answer", max_tokens=8, stop="\n")


CLASSIFY_HEADER = (
    "Classify each review by sentiment and topic.\n"
    "Review: The battery died after two days.\nSentiment: negative\nTopic: hardware\n"
    "Review: Support answered within minutes and fixed it.\nSentiment: positive\nTopic: service\n"
    "Review: The app is fine, nothing special.\nSentiment: neutral\nTopic: software\n"
    "Review: Shipping took a month but the screen is great.\nSentiment: mixed\nTopic: delivery\n")


@sgl.function
def classify(s, review):
    s += CLASSIFY_HEADER
    s += "Review: " + review + "\nSentiment:" + sgl.select("sentiment", ["positive", "negative", "neutral", "mixed"])
    s += "\nTopic:" + sgl.select("topic", ["hardware", "software", "service", "delivery", "price"])


PERSON_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 16}}, "required": ["name", "age", "city"]}
JSON_HEADER = ("Extract the person described in the text as JSON with name, age and city.\n"
               "Text: Maria, 34, moved to Lisbon last year.\n"
               'JSON: {"name": "Maria", "age": 34, "city": "Lisbon"}\n')


@sgl.function
def extract_json(s, text):
    s += JSON_HEADER
    s += "Text: " + text + "\nJSON: " + sgl.gen("person", max_tokens=40, json_schema=PERSON_SCHEMA)


def fewshot_batch(rng: random.Random, size: int, examples: int) -> list[dict[str, str]]:
    facts = [(f"What is {a} plus {b}?", str(a + b)) for a in range(2, 40) for b in range(2, 9)]
    headers = []
    for h in range(8):
        shots = rng.sample(facts, examples)
        headers.append(f"Examples set {h}. Answer with a number.\n" +
                       "".join(f"Q: {q}\nA: {a}\n" for q, a in shots))
    batch = [{"header": headers[i % 8], "question": f"How many letters are in the word {rng.choice(COUNTRIES)}"
              f" {i}?"} for i in range(size)]
    rng.shuffle(batch)
    return batch


def tot_batch(rng: random.Random, size: int) -> list[dict[str, str]]:
    return [{"question": f"Which is larger, {rng.randint(10, 99)} or {rng.randint(10, 99)}?"} for _ in range(size)]


def classify_batch(rng: random.Random, size: int) -> list[dict[str, str]]:
    things = ["charger", "update", "courier", "refund", "keyboard", "login page", "warranty", "price tag"]
    moods = ["broke quickly", "works perfectly", "was late again", "costs too much", "is okay I guess"]
    return [{"review": f"The {rng.choice(things)} {rng.choice(moods)} ({i})."} for i in range(size)]


def json_batch(rng: random.Random, size: int) -> list[dict[str, str]]:
    names = ["Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana"]
    return [{"text": f"{rng.choice(names)} is {rng.randint(18, 90)} and lives in {rng.choice(COUNTRIES)} "
                     f"(case {i})."} for i in range(size)]


@dataclass(frozen=True)
class Workload:
    name: str
    program: Any
    batch: list[dict[str, Any]]
    first_var: str | None  # the variable of each program's first request (None: it is a fork's prefill)


def workloads(args) -> list[Workload]:
    rng = random.Random(args.seed)
    q = 1 if args.quick else args.scale
    return [
        Workload("fewshot", fewshot_qa, fewshot_batch(rng, 64 * q if args.quick else 256 * q, 6), "answer"),
        Workload("tot", tree_of_thought, tot_batch(rng, 2 * q if args.quick else 4 * q), None),
        Workload("classify", classify, classify_batch(rng, 16 * q if args.quick else 32 * q), "sentiment"),
        Workload("json", extract_json, json_batch(rng, 8 * q if args.quick else 12 * q), "person"),
    ]


# ---- measuring -----------------------------------------------------------------------------------------------


class RequestLog:
    """Wraps an engine's ``submit`` to keep every request's prompt and final output ids."""

    def __init__(self, engine) -> None:
        self.records: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        submit = engine.submit

        def recording(request, emit):
            def emit_and_record(output):
                if output.finished:
                    self.records.append((tuple(request.input_ids), tuple(output.output_ids)))
                emit(output)

            submit(request, emit_and_record)

        engine.submit = recording

    def ideal_prefill(self) -> int:
        """Distinct prompt prefixes (trie nodes on some prompt) whose KV no decode step computed (a request's
        last output token is sampled but never run through the model, so it is not among them)."""
        nodes: dict[tuple[int, int], int] = {}
        prompt_nodes: set[int] = set()
        decoded: set[int] = set()
        for prompt, output in self.records:
            parent = 0
            for k, token in enumerate(prompt + output):
                parent = nodes.setdefault((parent, token), len(nodes) + 1)
                if k < len(prompt):
                    prompt_nodes.add(parent)
                elif k < len(prompt) + len(output) - 1:
                    decoded.add(parent)
        return len(prompt_nodes - decoded)


def counters(engine) -> dict[str, float]:
    registry = engine.metrics.registry
    requests = sum(sample.value for metric in registry.collect() if metric.name == "sglang_dsl_requests"
                   for sample in metric.samples if sample.name.endswith("_total"))
    return {"prompt": registry.get_sample_value("sglang_dsl_prompt_tokens_total") or 0.0,
            "cached": registry.get_sample_value("sglang_dsl_cached_tokens_total") or 0.0, "requests": requests}


@dataclass
class Result:
    workload: str
    mode: str
    requests: int
    prefilled: int
    cached: int
    seconds: float
    ideal: int | None = None
    plan: str = ""


def run_mode(workload: Workload, mode: str, runtime) -> Result:
    planned = mode in ("compiled", "planned")
    global_config.enable_batch_planning = planned
    if hasattr(global_config, "enable_segment_fusion"):
        global_config.enable_segment_fusion = mode == "compiled"
    runtime.flush_cache()
    before = counters(runtime.engine)
    started = time.perf_counter()
    states = workload.program.run_batch(workload.batch, backend=runtime, temperature=0)
    seconds = time.perf_counter() - started
    for state in states:
        state.sync()
    after = counters(runtime.engine)
    delta = {k: after[k] - before[k] for k in after}
    result = Result(workload.name, mode, int(delta["requests"]), int(delta["prompt"] - delta["cached"]),
                    int(delta["cached"]), seconds)
    if planned and workload.first_var is not None:
        result.plan = plan_check(workload, runtime, states)
    return result


def plan_check(workload: Workload, runtime, states) -> str:
    """``predicted / reported`` cache hits of each program's first request, and how many instances agree."""
    plan = plan_for(workload.program, [workload.program.arguments((), e) for e in workload.batch], runtime)
    if plan is None:
        return "no plan"
    predicted = reported = agree = 0
    for instance, state in zip(plan.instances, states):
        meta = state.get_meta_info(workload.first_var)
        predicted += instance.cached_tokens
        reported += meta["cached_tokens"]
        agree += (meta["cached_tokens"], meta["prompt_tokens"]) == (instance.cached_tokens, instance.prompt_tokens)
    return f"{predicted} / {reported} hits, {agree}/{len(plan.instances)} exact, {len(plan.prefixes)} prefixes"


def make_runtime(args, radix: bool):
    options: dict[str, Any] = dict(device=args.device, disable_radix_cache=not radix)
    if args.load_format != "auto":
        options["load_format"] = args.load_format
    if args.max_total_tokens:
        options["max_total_tokens"] = args.max_total_tokens
    if args.dtype != "auto":
        options["dtype"] = args.dtype
    return sgl.Runtime(model=args.model, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--load-format", default="auto", help="auto or dummy (random weights)")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size (tokens)")
    parser.add_argument("--quick", action="store_true", help="small batches")
    parser.add_argument("--scale", type=int, default=1, help="multiply the batch sizes")
    parser.add_argument("--only", nargs="*", default=None, help="workloads to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES,
                        help="modes to run (the ideal needs eager)")
    parser.add_argument("--flashinfer-prefill", choices=["fa2", "fa3"], default=None,
                        help="FlashInfer prefill kernels (the runtime pins fa2; fa3 to compare, see docs/benchmarks.md)")
    args = parser.parse_args()
    if args.flashinfer_prefill:
        flashinfer_backend.PREFILL_BACKEND = args.flashinfer_prefill
    console = Console(width=170)
    chosen = [w for w in workloads(args) if args.only is None or w.name in args.only]
    results = measure(args, chosen)
    console.print(table(results, args))


def measure(args, chosen: list[Workload]) -> list[Result]:
    """Every workload in every mode: eager, planned and compiled on an engine with the radix cache (the eager
    run's requests give the ideal), then no-radix on one without."""
    results: list[Result] = []
    ideal: dict[str, int] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("programs", total=len(chosen) * len(args.modes))
        for radix, modes in ((True, ("eager", "planned", "compiled")), (False, ("no-radix",))):
            modes = tuple(m for m in modes if m in args.modes)
            if not modes:
                continue
            runtime = make_runtime(args, radix)
            log = RequestLog(runtime.engine)
            try:
                for workload in chosen:
                    for mode in modes:
                        progress.update(task, description=f"{workload.name}: {mode}")
                        log.records.clear()
                        results.append(run_mode(workload, mode, runtime))
                        done = results[-1]
                        progress.console.print(f"{done.workload} {done.mode}: {done.requests} requests, "
                                               f"{done.prefilled} tokens prefilled, {done.seconds:.1f} s {done.plan}")
                        if mode == "eager":
                            ideal[workload.name] = log.ideal_prefill()
                        progress.advance(task)
            finally:
                runtime.shutdown()
    for result in results:
        result.ideal = ideal.get(result.workload)
    order = {w.name: i for i, w in enumerate(chosen)}
    return sorted(results, key=lambda r: (order[r.workload], MODES.index(r.mode)))


def table(results: list[Result], args) -> Table:
    out = Table(title=f"LM programs on {args.model} ({args.device}{', quick' if args.quick else ''})")
    for column in ("workload", "mode", "requests", "prefilled", "ideal", "vs ideal", "cached", "wall s",
                   "plan: predicted / reported"):
        out.add_column(column, justify="left" if column in ("workload", "mode", "plan: predicted / reported")
                       else "right")
    for r in results:
        ratio = f"{r.prefilled / r.ideal:.3f}" if r.ideal else "-"
        out.add_row(r.workload, r.mode, str(r.requests), str(r.prefilled), str(r.ideal or "-"), ratio, str(r.cached),
                    f"{r.seconds:.1f}", r.plan)
    return out

if __name__ == "__main__":
    main()
