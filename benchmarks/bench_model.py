"""Model-core speed: prefill tokens/s and decode step time at several batch sizes, beside HF transformers
on the same machine in the same run.

    python benchmarks/bench_model.py                                   # SmolLM2-135M (GGUF) on CPU
    python benchmarks/bench_model.py --device cuda --model benchmarks/shapes/llama-3.1-8b --load-format dummy

``--load-format dummy`` gives random weights of the checkpoint's shape (only ``config.json`` is read), which
cost the same FLOPs and bytes as real ones."""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from runtime.args import RuntimeArgs
from runtime.attention import flashinfer_backend
from runtime.model_runner import ModelRunner
from runtime.sequences import Sequences


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_ours(runner: ModelRunner, batch: int, prompt_len: int, steps: int, repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` rounds (the first round also warms kernels, graphs and allocator up)."""
    prompts = torch.randint(0, runner.config.vocab_size, (batch, prompt_len)).tolist()
    which, one = list(range(batch)), [[1]] * batch
    prefill, decode = float("inf"), float("inf")
    for _ in range(repeats + 1):
        with Sequences(runner, batch) as seqs:
            prefill = min(prefill, timed(lambda: seqs.extend(which, prompts), runner.device))
            decode = min(decode, timed(lambda: [seqs.extend(which, one) for _ in range(steps)], runner.device))
    return batch * prompt_len / prefill, decode / steps


def load_transformers(args, runner: ModelRunner):
    from transformers import AutoConfig, AutoModelForCausalLM

    source, dtype = runner.source, runner.dtype
    if args.load_format == "dummy":
        with torch.device(runner.device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source.path), dtype=dtype)
    elif source.kind == "gguf":
        model = AutoModelForCausalLM.from_pretrained(source.path.parent, gguf_file=source.path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
    return model.to(runner.device).eval()


@torch.inference_mode()
def bench_transformers(model, device, vocab: int, batch: int, prompt_len: int, steps: int, repeats: int):
    ids = torch.randint(0, vocab, (batch, prompt_len), device=device)
    one = torch.ones((batch, 1), dtype=torch.long, device=device)
    prefill, decode = float("inf"), float("inf")
    for _ in range(repeats + 1):
        state = {}
        prefill = min(prefill, timed(lambda: state.update(out=model(ids, use_cache=True)), device))
        state["cache"] = state["out"].past_key_values

        def decode_steps():
            for _ in range(steps):
                state["cache"] = model(one, past_key_values=state["cache"], use_cache=True).past_key_values

        decode = min(decode, timed(decode_steps, device))
    return batch * prompt_len / prefill, decode / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after one warm-up round; best is kept")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    parser.add_argument("--cuda-graph-max-bs", type=int, default=RuntimeArgs.cuda_graph_max_bs,
                        help="replay CUDA graphs for decode batches up to this size (0: off)")
    parser.add_argument("--flashinfer-prefill", choices=["fa2", "fa3"], default=None,
                        help="FlashInfer prefill kernels (the runtime pins fa2; fa3 to compare, see docs/benchmarks.md)")
    args = parser.parse_args()
    if args.flashinfer_prefill:
        flashinfer_backend.PREFILL_BACKEND = args.flashinfer_prefill

    runner = ModelRunner(RuntimeArgs(
        model=args.model, device=args.device, dtype=args.dtype, load_format=args.load_format,
        attention_backend=args.attention_backend, max_running_requests=max(args.batch_sizes),
        cuda_graph_max_bs=args.cuda_graph_max_bs,
        max_total_tokens=max(args.batch_sizes) * (args.prompt_len + args.decode_steps + 32) * 2,
    ))
    rows = [("sglang-dsl", b, *bench_ours(runner, b, args.prompt_len, args.decode_steps, args.repeats)) for b in args.batch_sizes]
    if not args.no_transformers:
        hf = load_transformers(args, runner)
        vocab = runner.config.vocab_size
        rows += [("transformers", b, *bench_transformers(hf, runner.device, vocab, b, args.prompt_len, args.decode_steps, args.repeats))
                 for b in args.batch_sizes]

    device_name = torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    table = Table(title=f"{args.model} ({args.load_format} weights, {runner.dtype}) on {device_name}, prompt {args.prompt_len}")
    for column in ("engine", "batch", "prefill tok/s", "decode ms/step", "decode tok/s"):
        table.add_column(column, justify="right")
    for engine, batch, prefill_tps, step in rows:
        table.add_row(engine, str(batch), f"{prefill_tps:,.0f}", f"{step * 1e3:.2f}", f"{batch / step:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
