"""Constraints as the runtime receives them (``regex``, ``json_schema``, ``ebnf``), checked cheaply up front and
compiled to matchers against a vocabulary, with a memory cache and a disk cache keyed by (constraint, tokenizer).

    spec = ConstraintSpec.from_params(regex=r"[0-9]+")
    check_constraint(spec)                       # fast: raises ConstraintError with a caret / JSON path
    compiler = ConstraintCompiler(Vocabulary.from_tokenizer(tokenizer), cache_dir="~/.cache/...")
    matcher = compiler.compile(spec)             # slow the first time (DFA + token index), then cached
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from sglang_dsl.compiler.automaton import ByteDFA, regex_to_dfa
from sglang_dsl.compiler.errors import ConstraintError
from sglang_dsl.compiler.matcher import Matcher, RegexMatcher
from sglang_dsl.compiler.regex_syntax import normalize_regex
from sglang_dsl.compiler.token_index import TokenIndex
from sglang_dsl.compiler.vocabulary import Vocabulary

log = logging.getLogger(__name__)

COMPILER_VERSION = "3"  # bump when compiled artifacts change meaning (invalidates the disk cache)
KINDS = ("regex", "json_schema", "ebnf")
LAZY_ABOVE = 4000 * 50_000  # states x vocabulary size beyond which mask rows are computed on first use
SCHEMA_EAGER_STATES = 256  # a JSON schema's DFA with more states computes its mask rows on first use
MEMORY_BYTES = 1 << 30  # compiled matchers kept in memory (approximately, by their mask tables)


def default_cache_dir() -> Path:
    """``$SGLANG_DSL_CONSTRAINT_CACHE`` if set, else ``~/.cache/sglang-dsl/constraints``."""
    env = os.environ.get("SGLANG_DSL_CONSTRAINT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sglang-dsl" / "constraints"


@dataclass(frozen=True)
class ConstraintSpec:
    """One constraint: ``kind`` is ``regex``, ``json_schema`` (JSON text) or ``ebnf`` (lark EBNF or GBNF)."""

    kind: str
    source: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"constraint kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.source, str):
            raise TypeError(f"a {self.kind} constraint must be text, got {type(self.source).__name__}")

    @classmethod
    def from_params(cls, regex: str | None = None, json_schema: Any = None, ebnf: str | None = None
                    ) -> "ConstraintSpec | None":
        """The spec of sampling parameters (at most one set), or None."""
        given = [(k, v) for k, v in (("regex", regex), ("json_schema", json_schema), ("ebnf", ebnf)) if v]
        if not given:
            return None
        if len(given) > 1:
            raise ConstraintError(f"at most one of regex, json_schema and ebnf may be set, got "
                                  f"{', '.join(k for k, _ in given)}")
        kind, value = given[0]
        if kind == "json_schema" and not isinstance(value, str):
            from sglang_dsl.compiler.json_schema import schema_to_json_text

            value = schema_to_json_text(value)
        return cls(kind, value)

    @property
    def description(self) -> str:
        text = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        return f"{self.kind} {text!r}"


def constraint_regex(spec: ConstraintSpec) -> str:
    """The regex a ``regex`` spec is, or a ``json_schema`` spec compiles to (raises `SchemaError` for schemas
    whose language has no regex: those that need intersections, differences or recursion)."""
    if spec.kind == "regex":
        return spec.source
    if spec.kind == "json_schema":
        from sglang_dsl.compiler.json_schema import json_schema_to_regex

        return json_schema_to_regex(spec.source)
    raise ValueError(f"a {spec.kind} constraint is not a regex")


def check_constraint(spec: ConstraintSpec) -> None:
    """Fast checks (milliseconds) that catch malformed and unsupported constraints before any compiling: regex
    syntax and features, schema keywords, grammar syntax. Raises `ConstraintError`."""
    if spec.kind == "ebnf":
        from sglang_dsl.compiler.lark_grammar import check_grammar

        check_grammar(spec.source)
        return
    if spec.kind == "json_schema":
        from sglang_dsl.compiler.json_schema import schema_language

        schema_language(spec.source)
        return
    normalized = normalize_regex(spec.source)
    import interegular
    from interegular import patterns

    try:
        interegular.parse_pattern(normalized)
    except (patterns.Unsupported, patterns.InvalidSyntax) as err:
        from sglang_dsl.compiler.errors import RegexError

        raise RegexError(spec.source, 0, f"cannot be parsed: {err or type(err).__name__}") from None


def compile_constraint(spec: ConstraintSpec, vocab: Vocabulary) -> Matcher:
    """Compile ``spec`` against ``vocab`` (no caching). A JSON schema becomes a regex matcher, or a grammar
    matcher when it recurses."""
    if spec.kind == "ebnf":
        from sglang_dsl.compiler.grammar import compile_grammar

        return compile_grammar(spec.source, vocab)
    if spec.kind == "json_schema":
        from sglang_dsl.compiler.json_schema import compile_schema

        compiled = compile_schema(spec.source)
        if not isinstance(compiled, ByteDFA):
            from sglang_dsl.compiler.grammar import started_matcher

            return started_matcher(compiled, vocab)
        dfa = compiled
        # schema automata are large and decoding visits few of their states: rows on first use, as a grammar's
        lazy = dfa.num_states > SCHEMA_EAGER_STATES
    else:
        dfa = regex_to_dfa(spec.source)
        lazy = False
    lazy = lazy or dfa.num_states * vocab.size > LAZY_ABOVE  # huge automata: rows on first use, not up front
    return RegexMatcher(TokenIndex.build(dfa, vocab, lazy=lazy))


def _size(matcher: Matcher) -> int:
    return getattr(matcher, "nbytes", 0) or 1 << 20


class ConstraintCompiler:
    """Compiles constraints against one vocabulary, caching matchers in memory (the most recently used
    ``memory_items``, within about `MEMORY_BYTES` of mask tables) and on disk under ``cache_dir`` (None: no disk
    cache): a regex-based matcher whole, a grammar as its terminals' DFAs and its LALR table (its masks are
    computed again, the start state's at load). Thread-safe;
    two threads compiling the same spec at once both compile (the runtime deduplicates in-flight compiles)."""

    def __init__(self, vocab: Vocabulary, cache_dir: str | os.PathLike | None = None, memory_items: int = 256):
        self.vocab = vocab
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.memory_items = memory_items
        self._memory: OrderedDict[str, Matcher] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "compiled": 0}

    def key(self, spec: ConstraintSpec) -> str:
        h = hashlib.sha256()
        for part in (COMPILER_VERSION, spec.kind, spec.source, self.vocab.fingerprint):
            h.update(part.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()[:40]

    def cached(self, spec: ConstraintSpec) -> Matcher | None:
        """The matcher if it is in the memory cache (no disk access, no compiling)."""
        key = self.key(spec)
        with self._lock:
            matcher = self._memory.get(key)
            if matcher is not None:
                self._memory.move_to_end(key)
                self.stats["memory_hits"] += 1
            return matcher

    def compile(self, spec: ConstraintSpec) -> Matcher:
        matcher = self.cached(spec)
        if matcher is not None:
            return matcher
        key = self.key(spec)
        matcher = self._load(key, spec.kind)
        if matcher is not None:
            self.stats["disk_hits"] += 1
        else:
            started = time.perf_counter()
            matcher = compile_constraint(spec, self.vocab)
            self.stats["compiled"] += 1
            log.debug("compiled %s in %.3f s", spec.description, time.perf_counter() - started)
            self._store(key, spec, matcher)
        with self._lock:
            self._memory[key] = matcher
            self._memory.move_to_end(key)
            while len(self._memory) > 1 and (len(self._memory) > self.memory_items or
                                             sum(_size(m) for m in self._memory.values()) > MEMORY_BYTES):
                self._memory.popitem(last=False)
        return matcher

    # ---- disk -------------------------------------------------------------------------------------------------

    def _path(self, key: str, grammar: bool = False) -> Path | None:
        """Where an entry lives: a grammar (an ``ebnf``, or a recursive ``json_schema``) under its own suffix."""
        return None if self.cache_dir is None else self.cache_dir / f"{key}{'.grammar' if grammar else ''}.npy"

    def _load(self, key: str, kind: str) -> Matcher | None:
        path = self._path(key, kind == "ebnf")
        if path is not None and kind == "json_schema" and not path.is_file():
            path = self._path(key, True)
            kind = "ebnf"
        if path is None or not path.is_file():
            return None
        if kind == "ebnf":
            from sglang_dsl.compiler.grammar import started_matcher
            from sglang_dsl.compiler.lark_grammar import Grammar

            grammar = _read(path, Grammar.load)
            return None if grammar is None else started_matcher(grammar, self.vocab)
        index = _read(path, lambda f: _read_index(f, self.vocab))
        return None if index is None else RegexMatcher(index)

    def _store(self, key: str, spec: ConstraintSpec, matcher: Matcher) -> None:
        path = self._path(key, not isinstance(matcher, RegexMatcher))
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                if isinstance(matcher, RegexMatcher):
                    _write_index(f, matcher.index, spec)
                else:
                    matcher.grammar.save(f)
            os.replace(f.name, path)
        except OSError as err:
            log.warning("cannot write the constraint cache entry %s: %s", path, err)


def _read(path: Path, read: Callable[[BinaryIO], Any]) -> Any:
    """``read(f)`` on the cache entry at ``path``; None (and a warning) when the entry is damaged, so that the
    constraint is compiled again. Entries are .npy records one after another (no zip checksums to compute)."""
    try:
        with open(path, "rb") as f:
            return read(f)
    except Exception as err:
        log.warning("ignoring unreadable constraint cache entry %s: %s", path, err)
        return None


def _write_index(f, index: TokenIndex, spec: ConstraintSpec) -> None:
    spec_bytes = np.frombuffer(json.dumps([spec.kind, spec.source]).encode(), dtype=np.uint8)
    for array in (index.dfa.transitions, index.dfa.accepting, np.int64(index.dfa.initial), index.masks, index.ready,
                  index.distances, index.thresholds, spec_bytes):
        np.save(f, array, allow_pickle=False)


def _read_index(f, vocab: Vocabulary) -> TokenIndex | None:
    """The index `_write_index` wrote, or None when it was made for a vocabulary of another size."""
    transitions, accepting, initial, masks, ready, distances, thresholds = (
        np.load(f, allow_pickle=False) for _ in range(7))
    if masks.shape[1] != (vocab.size + 31) // 32:
        return None
    return TokenIndex(ByteDFA(transitions, accepting, int(initial)), vocab, masks, ready, distances=distances,
                      thresholds=thresholds)
