"""Constraint compiler benchmark: compile time and per-token mask time on the SmolLM2 tokenizer, beside XGrammar
and outlines-core when they can be imported (benchmark-only extras, never dependencies of the project).

    python benchmarks/bench_constraints.py                      # ours, plus whatever extras import
    python benchmarks/bench_constraints.py --extras DIR         # look for xgrammar / outlines_core in DIR too
    python benchmarks/bench_constraints.py --jump-forward       # also: decode steps with / without jump-forward
                                                                #   on SmolLM2 (loads the model)
    python benchmarks/bench_constraints.py --workloads regex_ipv4 json_grammar_ebnf   # only these rows
    python benchmarks/bench_constraints.py --stages             # also: where our cold compile and first pass
                                                                #   spend their time, stage by stage

Workloads (as in ../shared/reference/constrained_anchors.md §6): an 8-property JSON schema (nested object, enum,
array of strings, bounded integer, date-time), email / IPv4 / date regexes, and a JSON grammar in EBNF. Each is
fed a valid output token by token (its SmolLM2 tokenization); at every step we time producing the full packed
bitmask of allowed tokens ("mask"), then advance. "first pass" includes whatever an engine computes lazily on
first visit; "steady" is a second pass over the same tokens with a fresh matcher on the same compiled object.

Compile: "cold" = a fresh compile with empty caches (the tokenizer's vocabulary preparation, done once per
tokenizer: byte strings, trie and lookup tables, `Vocabulary.prepare`, is reported separately); "warm" = the
same constraint again (ours: the in-memory cache, and a disk cache hit from a new compiler). Threads: XGrammar compiles with ``--threads`` (default 1, for a like-for-like
number on this 2-core box).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.model_files import DEFAULT_MODEL, resolve_model  # noqa: E402
from runtime.tokenizer import load_tokenizer  # noqa: E402
from sglang_dsl.compiler.constraint import ConstraintCompiler, ConstraintSpec  # noqa: E402
from sglang_dsl.compiler.json_schema import json_schema_to_regex  # noqa: E402
from sglang_dsl.compiler.vocabulary import Vocabulary  # noqa: E402

SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "name", "status", "tags", "score", "active", "address", "created"],
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 100000},
        "name": {"type": "string", "maxLength": 40},
        "status": {"enum": ["active", "inactive", "pending"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
        "address": {"type": "object", "additionalProperties": False, "required": ["street", "city", "zip"],
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                   "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
        "created": {"type": "string", "format": "date-time"},
    },
}
INSTANCE = {"id": 4217, "name": "Ada Lovelace", "status": "active", "tags": ["math", "poetry", "engines"],
            "score": 97.25, "active": True,
            "address": {"street": "12 St James's Square", "city": "London", "zip": "12345"},
            "created": "2024-02-28T09:30:00Z"}
REGEXES = {
    "email": (r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}", "john.doe42@example-mail.com"),
    "ipv4": (r"((25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)",
             "192.168.100.254"),
    "date": (r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", "2024-02-29"),
}
JSON_EBNF = r"""
?start: value
?value: object | array | STRING | NUMBER | "true" | "false" | "null"
array: "[" [value ("," value)*] "]"
object: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
STRING: /"([^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/
NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/
%ignore /[ \t\n]+/
"""
JSON_GRAMMAR_TEXT = json.dumps(INSTANCE, indent=2)
# Large character ranges, timed by --stages only (their compile, not their masks).
UNICODE_RANGES = {"cjk": r"[一-龥]+", "astral": r"[\U00010000-\U0010ffff]+"}


def summary(samples_s: list[float]) -> dict:
    us = sorted(x * 1e6 for x in samples_s)
    return {"mean_us": statistics.fmean(us), "p50_us": us[len(us) // 2],
            "p99_us": us[min(len(us) - 1, int(len(us) * 0.99))], "max_us": us[-1], "n": len(us)}


# ---- ours -------------------------------------------------------------------------------------------------------


def run_ours(vocab: Vocabulary, spec: ConstraintSpec, tokens: list[int]) -> dict:
    compiler = ConstraintCompiler(vocab, cache_dir=None)
    started = time.perf_counter()
    matcher = compiler.compile(spec)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    compiler.compile(spec)
    warm_memory = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        ConstraintCompiler(vocab, cache_dir=directory).compile(spec)
        fresh = ConstraintCompiler(vocab, cache_dir=directory)
        started = time.perf_counter()
        fresh.compile(spec)
        warm_disk = time.perf_counter() - started
    passes = []
    for _ in range(2):
        state = matcher.start()
        times = []
        for token in tokens:
            started = time.perf_counter()
            row = matcher.mask(state)
            times.append(time.perf_counter() - started)
            assert (int(row[token >> 5]) >> (token & 31)) & 1, "a valid token was masked"
            state = matcher.advance(state, token)
            assert state is not None
        assert matcher.accepting(state)
        passes.append(summary(times))
    states = getattr(getattr(matcher, "index", None), "num_states", None)
    return {"compile_cold_s": cold, "compile_warm_memory_s": warm_memory, "compile_warm_disk_s": warm_disk,
            "first_pass": passes[0], "steady": passes[1], "states": states,
            "index_mb": getattr(matcher, "nbytes", 0) / 1e6 or None, "budget": budget_passes(vocab, spec, tokens)}


def budget_passes(vocab: Vocabulary, spec: ConstraintSpec, tokens: list[int]) -> dict:
    """Mask time under the token budget rule on a fresh compile, the budget being exactly the text's tokens (the
    rule is as tight as it gets: at every step only tokens that keep a complete output within the tokens left),
    and with an ample budget (the rule's check alone)."""
    out = {}
    for name, spare in (("tight", 0), ("ample", 1 << 20)):
        matcher = ConstraintCompiler(vocab, cache_dir=None).compile(spec)
        passes = []
        for _ in range(2):
            state, times = matcher.start(), []
            for i, token in enumerate(tokens):
                started = time.perf_counter()
                row = matcher.budget_mask(state, len(tokens) - i - 1 + spare)
                times.append(time.perf_counter() - started)
                assert (int(row[token >> 5]) >> (token & 31)) & 1, "the rule masked the text's own token"
                state = matcher.advance(state, token)
            passes.append(summary(times))
        out[name] = {"first_pass": passes[0], "steady": passes[1]}
    return out


def mask_apply_time(vocab: Vocabulary) -> dict:
    """Turning packed rows into -inf biases and adding them to CPU logits [B, V] (runtime/constraint.py)."""
    import torch

    from runtime.constraint import mask_bias

    torch.set_num_threads(1)
    out = {}
    rng = np.random.default_rng(0)
    for batch in (1, 8, 32):
        packed = rng.integers(0, 2**32, size=(batch, (vocab.size + 31) // 32), dtype=np.uint64).astype(np.uint32)
        logits = torch.randn(batch, vocab.size)
        for _ in range(5):
            logits + mask_bias(packed, vocab.size, logits.device)
        samples = []
        for _ in range(200):
            started = time.perf_counter()
            logits + mask_bias(packed, vocab.size, logits.device)
            samples.append(time.perf_counter() - started)
        out[f"batch_{batch}"] = summary(samples)
    return out


# ---- XGrammar ---------------------------------------------------------------------------------------------------


def run_xgrammar(tokenizer, name: str, kind: str, source, tokens: list[int], threads: int) -> dict:
    import torch
    import xgrammar as xgr

    encoded = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    info = xgr.TokenizerInfo(encoded, xgr.VocabType.BYTE_LEVEL, vocab_size=tokenizer.vocab_size,
                             stop_token_ids=sorted(tokenizer.eos_token_ids))
    compiler = xgr.GrammarCompiler(info, max_threads=threads, cache_enabled=False)
    started = time.perf_counter()
    if kind == "json_schema":
        compiled = compiler.compile_json_schema(json.dumps(source), any_whitespace=False, separators=(",", ":"))
    elif kind == "regex":
        compiled = compiler.compile_regex(source)
    else:
        compiled = compiler.compile_builtin_json_grammar()
    cold = time.perf_counter() - started
    cached = xgr.GrammarCompiler(info, max_threads=threads, cache_enabled=True)
    if kind == "json_schema":
        cached.compile_json_schema(json.dumps(source), any_whitespace=False, separators=(",", ":"))
        started = time.perf_counter()
        cached.compile_json_schema(json.dumps(source), any_whitespace=False, separators=(",", ":"))
    elif kind == "regex":
        cached.compile_regex(source)
        started = time.perf_counter()
        cached.compile_regex(source)
    else:
        cached.compile_builtin_json_grammar()
        started = time.perf_counter()
        cached.compile_builtin_json_grammar()
    warm = time.perf_counter() - started
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    passes = []
    for _ in range(2):
        matcher = xgr.GrammarMatcher(compiled)
        times = []
        for token in tokens:
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            times.append(time.perf_counter() - started)
            assert matcher.accept_token(token), f"xgrammar rejected token {token} in {name}"
        passes.append(summary(times))
    del torch
    return {"compile_cold_s": cold, "compile_warm_memory_s": warm, "first_pass": passes[0], "steady": passes[1],
            "memory_mb": compiled.memory_size_bytes / 1e6}


# ---- outlines-core ----------------------------------------------------------------------------------------------


def run_outlines(vocab: Vocabulary, eos: int, regex: str, tokens: list[int]) -> dict:
    from outlines_core import Guide, Index
    from outlines_core import Vocabulary as OVocabulary

    mapping: dict[bytes, list[int]] = {}
    for i, b in enumerate(vocab.token_bytes):
        if b is not None and i != eos:
            mapping.setdefault(b, []).append(i)
    ovocab = OVocabulary(eos, mapping)
    started = time.perf_counter()
    index = Index(regex, ovocab)
    cold = time.perf_counter() - started
    mask = np.zeros((vocab.size + 31) // 32, dtype=np.int32)
    passes = []
    for _ in range(2):
        guide = Guide(index)
        times = []
        for token in tokens:
            started = time.perf_counter()
            guide.write_mask_into(mask.ctypes.data, mask.size, 4)
            times.append(time.perf_counter() - started)
            guide.advance(token)
        passes.append(summary(times))
    return {"compile_cold_s": cold, "first_pass": passes[0], "steady": passes[1]}


# ---- stages of our compile ----------------------------------------------------------------------------------


def median_ms(make, repeats: int = 5) -> float:
    """Median wall time of ``make()`` over ``repeats`` calls, in ms."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        make()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def stage_times(vocab: Vocabulary, grammar_tokens: list[int]) -> dict:
    """Our cold compile split into stages, each timed on fresh objects in a process whose libraries are loaded
    (interegular's and lark's imports, and lark's grammar-of-grammars parser, are once-per-process costs), and
    the grammar's first pass split into the masks it computes."""
    import interegular

    from sglang_dsl.compiler.automaton import regex_to_dfa
    from sglang_dsl.compiler.grammar import GrammarMatcher
    from sglang_dsl.compiler.lark_grammar import load_grammar
    from sglang_dsl.compiler.regex_syntax import normalize_regex
    from sglang_dsl.compiler.token_index import TokenIndex

    out: dict = {}
    for name, (regex, _) in REGEXES.items():
        dfa = regex_to_dfa(regex)
        out[f"regex_{name}"] = {
            "interegular parse": median_ms(lambda: interegular.parse_pattern(normalize_regex(regex))),
            "byte DFA (parse included)": median_ms(lambda: regex_to_dfa(regex)),
            f"token index ({dfa.num_states} states)": median_ms(lambda: TokenIndex.build(dfa, vocab))}
    schema_regex = json_schema_to_regex(SCHEMA)
    out["json_schema_8_props"] = {"byte DFA of its regex": median_ms(lambda: regex_to_dfa(schema_regex))}
    for name, regex in UNICODE_RANGES.items():  # classes are code-point intervals: a range costs its ends
        out[f"regex_{name}"] = {
            "interegular parse": median_ms(lambda: interegular.parse_pattern(normalize_regex(regex)), repeats=3),
            "byte DFA (parse included)": median_ms(lambda: regex_to_dfa(regex), repeats=3)}
    load = load_grammar.__wrapped__  # past the lru_cache
    grammar = load(JSON_EBNF)
    load_ms = median_ms(lambda: load(JSON_EBNF))
    terminals_ms = median_ms(lambda: [regex_to_dfa(t.regex) for t in grammar.terminals])
    matcher = GrammarMatcher(grammar, vocab)
    start_mask_ms = median_ms(lambda: GrammarMatcher(grammar, vocab).mask(matcher.start()))
    masks_before = matcher.num_config_masks
    state, first_pass = matcher.start(), 0.0
    for token in grammar_tokens:
        started = time.perf_counter()
        matcher.mask(state)
        first_pass += time.perf_counter() - started
        state = matcher.advance(state, token)
    new_masks = matcher.num_config_masks - masks_before
    out["json_grammar_ebnf"] = {
        "lark: the grammar's LALR parser": load_ms - terminals_ms,
        f"terminal DFAs ({len(grammar.terminals)})": terminals_ms,
        "matcher: first lexer": median_ms(lambda: GrammarMatcher(grammar, vocab)),
        "matcher + start mask": start_mask_ms,
        f"first pass, start mask included: {new_masks} masks": first_pass * 1e3,
        "first pass: per configuration mask": first_pass * 1e3 / max(1, new_masks)}
    return out


def print_stages(stages: dict) -> None:
    print("\nstages of our cold compile (median of 5, 3 for the Unicode ranges; libraries loaded), ms")
    for workload, parts in stages.items():
        print(f"  {workload}")
        for stage, ms in parts.items():
            print(f"    {stage:42s} {ms:8.2f}")


# ---- jump-forward -----------------------------------------------------------------------------------------------

LONG_KEYS = {
    "type": "object", "additionalProperties": False,
    "required": ["customer_identifier", "shipping_destination_country", "requires_signature_on_delivery",
                 "number_of_packages_in_this_shipment", "preferred_delivery_time_window"],
    "properties": {
        "customer_identifier": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
        "shipping_destination_country": {"enum": ["France", "Germany", "Luxembourg", "Netherlands"]},
        "requires_signature_on_delivery": {"type": "boolean"},
        "number_of_packages_in_this_shipment": {"type": "integer", "minimum": 1, "maximum": 20},
        "preferred_delivery_time_window": {"enum": ["morning", "afternoon", "evening"]},
    },
}


def jump_forward_steps(samples: int) -> dict:
    from runtime.args import RuntimeArgs
    from runtime.engine import Engine

    out = {}
    with Engine(RuntimeArgs(model=str(resolve_model(DEFAULT_MODEL).path), device="cpu")) as engine:
        prompt = engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Create a shipping order for a customer as JSON."}])
        for temperature in (0.0, 1.0):
            row = {}
            for jump in (False, True):
                counter = [0]
                original = engine.scheduler.step

                def counting_step():
                    counter[0] += 1
                    original()

                engine.scheduler.step = counting_step
                engine.scheduler.jump_forward = jump
                tokens, started = 0, time.perf_counter()
                n = 1 if temperature == 0 else samples
                try:
                    for k in range(n):
                        o = engine.generate(prompt, {"temperature": temperature, "max_new_tokens": 256, "seed": k,
                                                     "json_schema": json.dumps(LONG_KEYS)})
                        assert o.finish.type == "stop", o
                        json.loads(o.text)
                        tokens += o.completion_tokens
                finally:
                    engine.scheduler.step = original
                    engine.scheduler.jump_forward = True
                row["with" if jump else "without"] = {"steps": counter[0] / n, "output_tokens": tokens / n,
                                                     "seconds": (time.perf_counter() - started) / n}
            out[f"temperature_{temperature:g}"] = row
    return out


# ---- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", default=os.path.expanduser("~/.cache/sglang-dsl/bench-extras"),
                        help="a directory with xgrammar / outlines_core (pip install --target DIR ...)")
    parser.add_argument("--threads", type=int, default=1, help="XGrammar compile threads")
    parser.add_argument("--jump-forward", action="store_true", help="also measure decode steps on SmolLM2")
    parser.add_argument("--samples", type=int, default=4, help="sampled generations per jump-forward setting")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--workloads", nargs="+", help="run only these workloads (default: all)")
    parser.add_argument("--stages", action="store_true", help="also time the stages of our cold compile")
    args = parser.parse_args()
    if args.extras and os.path.isdir(args.extras):
        sys.path.append(args.extras)
    try:
        import xgrammar  # noqa: F401
        have_xgrammar = True
    except ImportError:
        have_xgrammar = False
    try:
        import outlines_core  # noqa: F401
        have_outlines = True
    except ImportError:
        have_outlines = False

    tokenizer = load_tokenizer(resolve_model(DEFAULT_MODEL))
    started = time.perf_counter()
    vocab = Vocabulary.from_tokenizer(tokenizer)
    vocab_s = time.perf_counter() - started
    started = time.perf_counter()
    vocab.prepare()
    prepare_s = time.perf_counter() - started
    eos = min(tokenizer.eos_token_ids)
    results: dict = {"tokenizer": {"vocab_size": vocab.size, "vocabulary_s": vocab_s, "prepare_s": prepare_s,
                                   "trie_nodes": vocab.trie.num_nodes},
                     "workloads": {}, "mask_apply_cpu": mask_apply_time(vocab)}

    schema_text = json.dumps(INSTANCE, separators=(",", ":"))
    workloads = [("json_schema_8_props", "json_schema", SCHEMA, schema_text)]
    workloads += [(f"regex_{name}", "regex", regex, text) for name, (regex, text) in REGEXES.items()]
    workloads += [("json_grammar_ebnf", "ebnf", JSON_EBNF, JSON_GRAMMAR_TEXT)]
    if args.workloads:
        unknown = set(args.workloads) - {w[0] for w in workloads}
        if unknown:
            parser.error(f"unknown workloads {sorted(unknown)}; choose from {[w[0] for w in workloads]}")
        workloads = [w for w in workloads if w[0] in args.workloads]
    print(f"vocabulary: {vocab_s:.2f} s to map tokens to bytes, {prepare_s:.2f} s for the trie and tables (once "
          "per tokenizer, not timed below)")
    for name, kind, source, text in workloads:
        tokens = tokenizer.encode(text, add_special_tokens=False)
        spec = ConstraintSpec(kind, json.dumps(source) if kind == "json_schema" else source)
        row = {"tokens": len(tokens), "ours": run_ours(vocab, spec, tokens)}
        if have_xgrammar:
            row["xgrammar"] = run_xgrammar(tokenizer, name, kind, source, tokens, args.threads)
        if have_outlines and kind != "ebnf":
            regex = json_schema_to_regex(source) if kind == "json_schema" else source
            if kind == "json_schema":  # outlines-core's own schema converter (it drops the integer bounds)
                from outlines_core.json_schema import build_regex_from_schema

                regex = build_regex_from_schema(json.dumps(source))
            row["outlines_core"] = run_outlines(vocab, eos, regex, tokens)
        results["workloads"][name] = row
        print_row(name, row)
    if args.stages:
        grammar_tokens = tokenizer.encode(JSON_GRAMMAR_TEXT, add_special_tokens=False)
        results["stages_ms"] = stage_times(vocab, grammar_tokens)
        print_stages(results["stages_ms"])
    if args.jump_forward:
        results["jump_forward"] = jump_forward_steps(args.samples)
        print(json.dumps(results["jump_forward"], indent=2))
    print("mask apply (CPU, 1 thread):", {k: round(v["mean_us"], 1) for k, v in results["mask_apply_cpu"].items()})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def print_row(name: str, row: dict) -> None:
    print(f"\n{name} ({row['tokens']} tokens)")
    print(f"  {'engine':14s} {'cold compile':>13s} {'warm':>10s} {'mask mean':>10s} {'p50':>8s} {'p99':>9s} "
          f"{'steady mean':>12s} {'steady p99':>11s}")
    for engine in ("ours", "xgrammar", "outlines_core"):
        if engine not in row:
            continue
        r = row[engine]
        warm = r.get("compile_warm_memory_s")
        print(f"  {engine:14s} {r['compile_cold_s'] * 1e3:11.1f}ms {'' if warm is None else f'{warm * 1e3:8.3f}ms':>10s} "
              f"{r['first_pass']['mean_us']:8.1f}us {r['first_pass']['p50_us']:6.1f}us {r['first_pass']['p99_us']:7.0f}us "
              f"{r['steady']['mean_us']:10.1f}us {r['steady']['p99_us']:9.1f}us")
        for budget, b in r.get("budget", {}).items():
            print(f"  {'  budget ' + budget:14s} {'':>13s} {'':>10s} {b['first_pass']['mean_us']:8.1f}us "
                  f"{b['first_pass']['p50_us']:6.1f}us {b['first_pass']['p99_us']:7.0f}us "
                  f"{b['steady']['mean_us']:10.1f}us {b['steady']['p99_us']:9.1f}us")


if __name__ == "__main__":
    main()
