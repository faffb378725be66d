"""What callers hand the engine and what it hands back: sampling parameters, requests, outputs.

These are plain data, shared by the engine, the in-process API and the HTTP server."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping


class InvalidRequestError(ValueError):
    """A request the engine will not run; the message names the offending field and why."""


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt. Field names and defaults follow SGLang's native ``sampling_params``.

    ``temperature == 0`` means greedy. ``stop`` strings are trimmed from the text; ``stop_token_ids`` (and EOS
    unless ``ignore_eos``) end generation without appearing in it. ``seed`` makes sampling reproducible per
    request, independent of what else runs in the batch. ``regex``/``json_schema``/``ebnf`` constrain the output
    (at most one of them)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: int | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "SamplingParams":
        """Validate a native-API ``sampling_params`` dict; unknown keys and bad values raise
        ``InvalidRequestError`` naming the key. ``sampling_seed`` is accepted as an alias of ``seed``."""
        from runtime.sampling_params import parse_sampling_params

        return parse_sampling_params(cls, dict(values or {}))

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


@dataclass(frozen=True)
class LogprobRequest:
    """Which log-probabilities to return with a generation.

    ``logprob_start_len``: -1 for output tokens only; N to also score prompt tokens from position N (the entry
    at N has no logprob, as nothing precedes it in the window). ``top_logprobs_num``: how many most likely
    alternatives to report per position. ``token_ids_logprob``: tokens whose logprobs to report at every
    position, whichever token comes there; output positions include, for a request with no new tokens, the one
    after the prompt (the distribution a next token would be drawn from)."""

    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    token_ids_logprob: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerateRequest:
    """One prompt (text or token ids) to continue. ``rid`` identifies it for abort and in outputs."""

    rid: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    logprobs: LogprobRequest = field(default_factory=LogprobRequest)
    stream: bool = False
    priority: int = 0


# One logprob entry: (logprob or None, token id, token text or None), as SGLang's native API lays it out.
LogprobEntry = tuple[float | None, int, str | None]


@dataclass(frozen=True)
class FinishReason:
    """``type`` is ``stop`` (EOS, a stop token or a stop string: ``matched``), ``length`` or ``abort``."""

    type: str
    matched: int | str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "stop":
            out["matched"] = self.matched
        elif self.type == "abort":
            out["message"] = self.message
        return out


@dataclass(frozen=True)
class GenerateOutput:
    """A generation so far (when streaming) or in full. ``text``/``output_ids`` are cumulative; ``finish`` is
    None until the request ends."""

    rid: str
    text: str
    output_ids: tuple[int, ...]
    finish: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    num_retractions: int = 0
    input_token_logprobs: tuple[LogprobEntry, ...] | None = None
    output_token_logprobs: tuple[LogprobEntry, ...] | None = None
    input_top_logprobs: tuple[tuple[LogprobEntry, ...] | None, ...] | None = None
    output_top_logprobs: tuple[tuple[LogprobEntry, ...], ...] | None = None
    input_token_ids_logprobs: tuple[tuple[LogprobEntry, ...] | None, ...] | None = None
    output_token_ids_logprobs: tuple[tuple[LogprobEntry, ...], ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish is not None
