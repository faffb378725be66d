"""A request's life inside the scheduler: its tokens, its KV, its output so far, and where results go."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from runtime.requests import FinishReason, GenerateOutput, GenerateRequest, LogprobEntry
from runtime.stop import StopMatcher
from runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Req:
    """Mutable scheduling state of one ``GenerateRequest``.

    KV bookkeeping: the first ``prefix_len`` tokens' KV belongs to the radix cache (locked through ``node``);
    tokens ``prefix_len .. kv_len`` belong to this request alone. ``fill_ids`` (prompt + output) is what the KV
    must eventually cover; a decoding request has ``kv_len == len(fill_ids) - 1`` (its last sampled token is
    fed at the next step)."""

    request: GenerateRequest
    tokenizer: Tokenizer
    listener: Callable[[GenerateOutput], None]
    arrival: float = field(default_factory=time.perf_counter)
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    row: int | None = None
    node: Any = None
    prefix_len: int = 0
    kv_len: int = 0
    last_slot: int = 0
    cached_tokens: int = 0
    num_retractions: int = 0
    finish: FinishReason | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    output_logprobs: list[LogprobEntry] = field(default_factory=list)
    output_top_logprobs: list[tuple[LogprobEntry, ...]] = field(default_factory=list)
    input_logprobs: list[LogprobEntry] | None = None
    input_top_logprobs: list[tuple[LogprobEntry, ...] | None] | None = None
    input_token_ids_logprobs: list[tuple[LogprobEntry, ...] | None] | None = None
    output_token_ids_logprobs: list[tuple[LogprobEntry, ...]] = field(default_factory=list)
    # constrained decoding (runtime/constraint.py): the compile in flight, then the request's matcher state
    constraint_future: Any = None
    constraint: Any = None
    # program requests (runtime/program_run.py): the run this request drives; its select scoring rows are not
    # counted as requests of their own
    program: Any = None
    counted: bool = True

    def __post_init__(self) -> None:
        sampling = self.request.sampling
        self.detokenizer = self.tokenizer.detokenizer(skip_special_tokens=sampling.skip_special_tokens)
        self.stop_matcher = StopMatcher(sampling.stop) if sampling.stop else None

    def restart(self, request: GenerateRequest, cached_tokens: int) -> None:
        """Continue as ``request`` (a program's next step) on the same row and KV, with a fresh output."""
        self.request, self.cached_tokens = request, cached_tokens
        self.output_ids, self.text, self.finish = [], "", None
        self.output_logprobs, self.output_top_logprobs, self.output_token_ids_logprobs = [], [], []
        self.input_logprobs = self.input_top_logprobs = self.input_token_ids_logprobs = None
        self.constraint_future = self.constraint = None
        self.__post_init__()

    @property
    def rid(self) -> str:
        return self.request.rid

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.request.input_ids

    @property
    def fill_ids(self) -> list[int]:
        return [*self.request.input_ids, *self.output_ids]

    @property
    def fill_len(self) -> int:
        return len(self.request.input_ids) + len(self.output_ids)

    @property
    def owned_slots(self) -> int:
        """KV slots this request holds outside the radix cache."""
        return self.kv_len - self.prefix_len

    @property
    def remaining_new_tokens(self) -> int:
        return self.request.sampling.max_new_tokens - len(self.output_ids)

    @property
    def wants_input_logprobs(self) -> bool:
        return self.request.logprobs.return_logprob and self.request.logprobs.logprob_start_len >= 0

    def kv_slots(self, table: torch.Tensor) -> torch.Tensor:
        """This request's KV slots for positions ``0 .. kv_len`` (host copy of its request-table row)."""
        return table[self.row, : self.kv_len].to("cpu", torch.int64)

    def emit(self) -> None:
        """Hand the current output to the caller; a caller that fails to take it never stops the scheduler."""
        try:
            self.listener(self.output())
        except Exception:
            log.exception("the listener of request %s failed", self.rid)

    def output(self) -> GenerateOutput:
        logprobs = self.request.logprobs
        text = self.text
        if self.finish is None and self.stop_matcher is not None:  # hold back what may yet turn out to be stop text
            text = text[: len(text) - self.stop_matcher.holdback]
        return GenerateOutput(
            rid=self.rid,
            text=text,
            output_ids=tuple(self.output_ids),
            finish=self.finish,
            prompt_tokens=len(self.request.input_ids),
            completion_tokens=len(self.output_ids),
            cached_tokens=self.cached_tokens,
            num_retractions=self.num_retractions,
            input_token_logprobs=tuple(self.input_logprobs or ()) if logprobs.return_logprob else None,
            output_token_logprobs=tuple(self.output_logprobs) if logprobs.return_logprob else None,
            input_top_logprobs=(
                tuple(self.input_top_logprobs or ()) if logprobs.return_logprob and logprobs.top_logprobs_num else None
            ),
            output_top_logprobs=(
                tuple(self.output_top_logprobs) if logprobs.return_logprob and logprobs.top_logprobs_num else None
            ),
            **self._listed_logprobs(),
        )

    def _listed_logprobs(self) -> dict[str, Any]:
        logprobs = self.request.logprobs
        if not (logprobs.return_logprob and logprobs.token_ids_logprob):
            return {}
        return {"input_token_ids_logprobs": tuple(self.input_token_ids_logprobs or ()),
                "output_token_ids_logprobs": tuple(self.output_token_ids_logprobs)}
