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


def bench_ours(runner: ModelRunner, batch: int, prompt_len: int, steps: int) -> tuple[float, float]:
    prompts = torch.randint(0, runner.config.vocab_size, (batch, prompt_len)).tolist()
    which = list(range(batch))
    with Sequences(runner, batch) as warm:  # first-use kernel compilation and allocator warm-up
        warm.extend(which, [p[:16] for p in prompts])
        warm.extend(which, [[1]] * batch)
    with Sequences(runner, batch) as seqs:
        prefill = timed(lambda: seqs.extend(which, prompts), runner.device)
        seqs.extend(which, [[1]] * batch)
        decode = timed(lambda: [seqs.extend(which, [[1]] * batch) for _ in range(steps)], runner.device)
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
def bench_transformers(model, device, vocab: int, batch: int, prompt_len: int, steps: int) -> tuple[float, float]:
    ids = torch.randint(0, vocab, (batch, prompt_len), device=device)
    one = torch.ones((batch, 1), dtype=torch.long, device=device)
    model(ids[:, :16])
    out = None

    def prefill():
        nonlocal out
        out = model(ids, use_cache=True)

    seconds = timed(prefill, device)
    cache = model(one, past_key_values=out.past_key_values, use_cache=True).past_key_values

    def decode():
        nonlocal cache
        for _ in range(steps):
            cache = model(one, past_key_values=cache, use_cache=True).past_key_values

    return batch * prompt_len / seconds, timed(decode, device) / steps


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
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    args = parser.parse_args()

    runner = ModelRunner(RuntimeArgs(
        model=args.model, device=args.device, dtype=args.dtype, load_format=args.load_format,
        attention_backend=args.attention_backend, max_running_requests=max(args.batch_sizes),
        max_total_tokens=max(args.batch_sizes) * (args.prompt_len + args.decode_steps + 32) * 2,
    ))
    rows = [("sglang-dsl", b, *bench_ours(runner, b, args.prompt_len, args.decode_steps)) for b in args.batch_sizes]
    if not args.no_transformers:
        hf = load_transformers(args, runner)
        vocab = runner.config.vocab_size
        rows += [("transformers", b, *bench_transformers(hf, runner.device, vocab, b, args.prompt_len, args.decode_steps))
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
