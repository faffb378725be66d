"""Constrained decoding in the engine: ``regex``, ``json_schema`` and ``ebnf`` sampling parameters.

* `ConstraintManager` (one per engine) checks a request's constraint when the request is made (a bad regex or
  schema is an `InvalidRequestError` with a caret or JSON path) and compiles it on a worker thread, so the
  scheduler never waits for a compile: the request is parked until its matcher is ready. Matchers are cached in
  memory and on disk by (constraint, tokenizer), and a compile already in flight is shared.
* `RequestConstraint` is a request's position in its matcher. Before sampling, `apply_constraint_masks` sets the
  logits of disallowed tokens to -inf for all constrained rows at once (packed bitmasks ``[B, V/32]`` copied to
  the logits' device and unpacked there). After sampling, the token advances the state; a state that accepts and
  allows nothing more ends the request, and where every continuation starts with the same text
  (**jump-forward**) that text is appended at once, re-tokenized together with the sampled token so the tokens
  stay the ones the tokenizer itself would produce; the scheduler then extends the request by those tokens in
  one step instead of decoding them one by one.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from runtime.requests import InvalidRequestError, SamplingParams
from sglang_dsl.compiler.constraint import ConstraintCompiler, ConstraintSpec, check_constraint, default_cache_dir
from sglang_dsl.compiler.errors import ConstraintError
from sglang_dsl.compiler.matcher import Matcher
from sglang_dsl.compiler.stop_tokens import StopTokens
from sglang_dsl.compiler.vocabulary import Vocabulary

log = logging.getLogger(__name__)

MIN_JUMP_TOKENS = 1  # forced tokens needed (beyond the sampled one) to jump instead of decoding


class ConstraintManager:
    """Checks and compiles the constraints of one engine's requests."""

    def __init__(self, tokenizer, workers: int = 1, cache_dir: str | os.PathLike | None | bool = True,
                 jump_forward: bool | None = None):
        self.tokenizer = tokenizer
        self.workers = workers
        self._cache_dir = default_cache_dir() if cache_dir is True else (cache_dir or None)
        if jump_forward is None:
            jump_forward = os.environ.get("SGLANG_DSL_JUMP_FORWARD", "1") not in ("0", "false", "no")
        self.jump_forward = jump_forward
        self._compiler: ConstraintCompiler | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[str, Future] = {}

    @property
    def compiler(self) -> ConstraintCompiler:
        """The compiler for this tokenizer's vocabulary (built on first use; `InvalidRequestError` if the
        tokenizer cannot be used for constrained decoding)."""
        with self._lock:
            if self._compiler is None:
                try:
                    vocab = Vocabulary.from_tokenizer(self.tokenizer)
                except ConstraintError as err:
                    raise InvalidRequestError(str(err)) from None
                self._compiler = ConstraintCompiler(vocab, self._cache_dir)
            return self._compiler

    def spec_of(self, sampling: SamplingParams) -> ConstraintSpec | None:
        """The request's constraint, checked; None if it has none. Raises `InvalidRequestError`."""
        if not (sampling.regex or sampling.json_schema or sampling.ebnf):
            return None
        try:
            spec = _checked_spec(sampling.regex, sampling.json_schema, sampling.ebnf)
        except ConstraintError as err:
            raise InvalidRequestError(str(err)) from None
        self.compiler  # noqa: B018 - refuse tokenizers without a byte mapping now, not after queueing
        return spec

    def compile(self, spec: ConstraintSpec) -> Future:
        """A future of the matcher, resolved at once when it is cached in memory."""
        compiler = self.compiler
        matcher = compiler.cached(spec)
        if matcher is not None:
            done: Future = Future()
            done.set_result(matcher)
            return done
        key = compiler.key(spec)
        with self._lock:
            future = self._in_flight.get(key)
            if future is not None:
                return future
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sglang-dsl-constraint")
            future = self._in_flight[key] = self._pool.submit(compiler.compile, spec)
        # outside the lock: a compile already done runs the callback here, and _forget takes the lock
        future.add_done_callback(lambda _: self._forget(key))
        return future

    def _forget(self, key: str) -> None:
        with self._lock:
            self._in_flight.pop(key, None)

    def warm_up(self) -> Future | None:
        """Build the vocabulary and its tables (`Vocabulary.prepare`) on the worker thread ahead of the first
        constrained request."""
        try:
            compiler = self.compiler
        except InvalidRequestError:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sglang-dsl-constraint")
            return self._pool.submit(compiler.vocab.prepare)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


@lru_cache(maxsize=1024)
def _checked_spec(regex: str | None, json_schema: str | None, ebnf: str | None) -> ConstraintSpec:
    spec = ConstraintSpec.from_params(regex, json_schema, ebnf)
    check_constraint(spec)
    return spec


class RequestConstraint:
    """One request's place in its matcher, with the two rules that keep its output valid:

    * **Token budget** (``budget_rule``): `mask` keeps only tokens after which a complete output still fits in
      the tokens left, so a gen whose ``max_new_tokens`` (or the context) runs out ends complete; where no
      complete output fits at all, the plain mask applies and the gen ends cut (``length``).
    * **Stop strings** (`StopTokens`): a token containing one of the gen's stop strings is allowed exactly where
      the text before the stop is a complete output; the stop then ends the gen (`expand` reports it), so the
      constraint holds for the text the caller gets."""

    def __init__(self, matcher: Matcher, sampling: SamplingParams, jump_forward: bool, budget_rule: bool = True):
        self.matcher = matcher
        self.state = matcher.start()
        self.allow_eos = not sampling.ignore_eos
        self.stop_token_ids = tuple(sampling.stop_token_ids)
        self.jump_forward = jump_forward
        self.budget_rule = budget_rule
        self.stops = StopTokens.of(matcher.vocab, sampling.stop) if sampling.stop else None
        self.jumped_tokens = 0  # tokens appended by jump-forward (not decoded)
        self.ended_by_stop = False  # the last token sampled ends the gen with a stop string
        self._written = bytearray()  # the output's bytes
        self._marks: list[tuple[int, object]] = [(0, self.state)]  # (bytes written, state) at recent token ends

    @property
    def terminal(self) -> bool:
        return self.matcher.terminal(self.state)

    @property
    def accepting(self) -> bool:
        return self.matcher.accepting(self.state)

    def mask(self, budget: int) -> np.ndarray:
        """The packed mask of the next token, ``budget`` tokens (this one included) being left."""
        row = self.matcher.budget_mask(self.state, budget - 1) if self.budget_rule else self.matcher.mask(self.state)
        if self.stops is None:
            return row
        out = (row & ~self.stops.containing) | self.stops.ending(self.matcher, self.state)
        for written, rest in self.stops.pending(self._tail()):
            completing = self.stops.starting_with(rest)
            out &= ~completing
            if self.matcher.accepting(self._state_at(len(self._written) - written)):
                out |= completing
        return out if out.any() else row

    def advance(self, token: int) -> bool:
        """Move past a sampled token; False (state unchanged) if the matcher does not allow it."""
        nxt = self.matcher.advance(self.state, token)
        if nxt is None:
            return False
        self._move(nxt, self.matcher.vocab.token_bytes[token])
        return True

    def expand(self, token: int, tokenizer, room: int) -> list[int] | None:
        """The tokens to append for sampled ``token``, ``room`` tokens being left: the token itself, or with
        jump-forward the token followed by the text every continuation must start with, re-tokenized together
        (as many as leave a complete output within the room). The state moves past all of them, except when
        the token ends the gen with a stop string (`ended_by_stop`). None if the constraint does not allow
        ``token`` (which the mask prevents)."""
        self.ended_by_stop = self.stops is not None and self._ends_with_stop(token)
        if self.ended_by_stop:
            return [token]
        after = self.matcher.advance(self.state, token)
        if after is None:
            log.error("token %d was sampled although the constraint does not allow it", token)
            return None
        tokens = (self.jump_forward and room > 1 and self._jump(token, after, tokenizer, room)) or [token]
        for t in tokens:
            self.advance(t)
        self.jumped_tokens += len(tokens) - 1
        return tokens

    def _jump(self, token: int, after, tokenizer, room: int) -> list[int] | None:
        """The sampled token and the text forced after it (from state ``after``) as tokens, or None."""
        forced = self.matcher.forced(after)
        if not forced:
            return None
        vocab = self.matcher.vocab
        if self.stops is not None and self.stops.occurs_in(self._tail() + forced):  # a stop would cut it short
            return None
        tokens = _retokenize(vocab, tokenizer, token, forced)
        if tokens is None:
            return None
        tokens = tokens[:room]
        # a final token that a longer token extends is left to the model, which may prefer the longer one
        while len(tokens) > 1 and vocab.extendable[tokens[-1]]:
            tokens.pop()
        states = self._states_along(tokens)
        if states is None:
            return None
        while self.budget_rule and len(tokens) > 1 and self.matcher.completion(states[len(tokens) - 1]) > room - len(
                tokens):
            tokens.pop()
        return tokens if len(tokens) > MIN_JUMP_TOKENS else None

    def _states_along(self, tokens: list[int]) -> list | None:
        """The states after each of ``tokens`` in turn, from the current state; None if one is not allowed."""
        state, states = self.state, []
        for t in tokens:
            state = self.matcher.advance(state, t)
            if state is None:
                return None
            states.append(state)
        return states

    def _ends_with_stop(self, token: int) -> bool:
        data = self.matcher.vocab.token_bytes[token]
        if not data:
            return False
        for written, rest in self.stops.pending(self._tail()):
            if data.startswith(rest):
                return self.matcher.accepting(self._state_at(len(self._written) - written))
        return bool((int(self.stops.ending(self.matcher, self.state)[token >> 5]) >> (token & 31)) & 1)

    def _move(self, state, data: bytes | None) -> None:
        self.state = state
        if self.stops is None:
            return
        self._written += data or b""
        self._marks.append((len(self._written), state))
        oldest_needed = len(self._written) - self.stops.longest
        while len(self._marks) > 1 and self._marks[1][0] <= oldest_needed:
            del self._marks[0]

    def _tail(self) -> bytes:
        return bytes(self._written[-self.stops.longest:])

    def _state_at(self, offset: int):
        """The matcher state after the output's first ``offset`` bytes (at most a stop's length back)."""
        written, state = next(m for m in reversed(self._marks) if m[0] <= offset)
        return state if written == offset else self.matcher.advance_bytes(state, bytes(self._written[written:offset]))


def _retokenize(vocab: Vocabulary, tokenizer, token: int, forced: bytes) -> list[int] | None:
    """Tokens spelling ``token``'s bytes + ``forced`` as the tokenizer would split that text (trimmed to whole
    characters), or None when that text cannot be re-tokenized faithfully."""
    head = vocab.token_bytes[token] or b""
    data = head + forced
    for cut in range(len(data), len(head), -1):  # drop a partial character at the end
        try:
            text = data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        data = data[:cut]
        break
    else:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if b"".join(vocab.token_bytes[i] or b"\0" for i in ids) == data:
        return ids
    # e.g. SentencePiece puts "▁" in front of a text: spell the forced part on its own after the sampled token
    ids = tokenizer.encode(data[len(head):].decode("utf-8", errors="strict"), add_special_tokens=False)
    if b"".join(vocab.token_bytes[i] or b"\0" for i in ids) == data[len(head):]:
        return [token, *ids]
    return None


# ---- masks --------------------------------------------------------------------------------------------------
#
# A packed mask becomes an additive bias (0 for allowed tokens, -inf for the others) without branches: each bit b
# gives the int32 (b - 1) & 0xFF800000, which is the bit pattern of 0.0 for b = 1 and of -inf for b = 0. Adding a
# bias is several times cheaper on CPU than masked_fill / where with a bool mask (those run at a few ns per
# element; the add is vectorized). On CPU the unpacking runs in numpy (np.unpackbits); elsewhere the packed words
# are copied to the device and unpacked there, so no mask ever travels back to the host.

_NEG_INF_BITS = -8388608  # int32 with the bits of float32 -inf (0xFF800000)
_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    shifts = _SHIFTS.get(device)
    if shifts is None:
        shifts = _SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
    return shifts


def mask_bias(packed: np.ndarray, vocab_size: int, device: torch.device) -> torch.Tensor:
    """``[B, W]`` uint32 host bitmasks -> ``[B, vocab_size]`` float32 bias on ``device``: 0 where the bit is set,
    -inf elsewhere (tokens past the packed width included)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint32)
    rows, width = packed.shape[0], packed.shape[1] * 32
    if device.type == "cpu":
        bits = np.unpackbits(packed.view(np.uint8), axis=1, bitorder="little")
        bias = bits[:, :vocab_size].astype(np.int32)
        bias -= 1
        bias &= np.int32(_NEG_INF_BITS)
        out = torch.from_numpy(bias.view(np.float32))
    else:
        words = torch.from_numpy(packed.view(np.int32)).to(device, non_blocking=True)
        bits = (words.unsqueeze(-1) >> _shifts(device)) & 1
        out = bits.sub_(1).bitwise_and_(_NEG_INF_BITS).view(torch.float32).view(rows, width)[:, :vocab_size]
    if out.shape[1] < vocab_size:
        out = torch.nn.functional.pad(out, (0, vocab_size - out.shape[1]), value=float("-inf"))
    return out


def apply_constraint_masks(logits: torch.Tensor, constraints: Sequence[RequestConstraint | None],
                           budgets: Sequence[int]) -> torch.Tensor:
    """``logits [B, V]`` with disallowed tokens at -inf in the rows that have a constraint (a new tensor when any
    row does; ``logits`` itself is left unchanged); ``budgets[i]``: the tokens row ``i`` may still append."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    vocab = logits.shape[1]
    bias = mask_bias(np.stack([constraints[i].mask(budgets[i]) for i in rows]), vocab, logits.device)
    for j, i in enumerate(rows):
        c = constraints[i]
        if not c.allow_eos:
            eos = [t for t in c.matcher.vocab.eos_token_ids if t < vocab]
            if eos:
                bias[j, eos] = float("-inf")
        if c.stop_token_ids and c.accepting:
            bias[j, [t for t in c.stop_token_ids if t < vocab]] = 0.0
    bias = bias.to(logits.dtype)
    if len(rows) == logits.shape[0]:
        return logits + bias
    return logits.index_add(0, torch.tensor(rows, device=logits.device), bias)
