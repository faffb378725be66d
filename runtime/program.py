"""Program requests: a straight-line run of text / gen / select steps that the engine executes as ONE request.

A `ProgramRequest` is a prompt and its steps. The scheduler admits it once and keeps its KV from step to step
(`runtime.program_run` drives it):

- a `ProgramText` step appends fixed text; the text is tokenized together with everything before it, exactly as a
  per-node request would tokenize the whole program text, and only the tokens not already in the request's KV
  are extended (when re-tokenizing merges a boundary token, the KV is cut back to the common token prefix first);
- a `ProgramGen` step decodes with its own sampling parameters, stop conditions and constraint (compiled before
  the request is queued); its text is appended;
- a `ProgramSelect` step scores its choices over the request's committed prefix as the select plan says
  (`sglang_dsl.compiler.choice_scoring`: the prefix step returns the choices' first-token logprobs, then one
  batched extend of a row per longer choice, plus one per choice after BOS alone for methods that need
  unconditional likelihoods), decides with the step's choices method (`sglang_dsl.compiler.choice_methods`,
  shared with `backends.scoring`, which scores one ``select`` per call the same way), and appends the chosen
  choice.

The result is a `ProgramOutput`: one `StepResult` per gen/select step (the gen's `GenerateOutput` and
`GenerateRequest`, so callers build the same meta as for ``/generate``; a select's decision meta) and all text the
steps appended. Within a program, gens take one sample (``n == 1``) and return output logprobs only
(``logprob_start_len`` stays -1). The native form of steps (`parse_steps`) is the body of
``POST /generate_program``; errors name the step (``steps[2] (gen('answer')): ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from runtime.requests import (
    FinishReason, GenerateOutput, GenerateRequest, InvalidRequestError, LogprobRequest, SamplingParams,
)
from sglang_dsl.compiler.choice_methods import METHODS_BY_NAME, ChoicesSamplingMethod


@dataclass(frozen=True)
class ProgramText:
    text: str


@dataclass(frozen=True)
class ProgramGen:
    """``node`` names the step in errors and outputs; ``name`` is the variable it sets (None: none)."""

    node: str
    name: str | None
    sampling: SamplingParams
    logprobs: LogprobRequest = field(default_factory=LogprobRequest)


@dataclass(frozen=True)
class ProgramSelect:
    node: str
    name: str | None
    choices: tuple[str, ...]
    temperature: float
    method: ChoicesSamplingMethod


ProgramStep = ProgramText | ProgramGen | ProgramSelect


@dataclass(frozen=True)
class ProgramRequest:
    rid: str
    prompt: str
    steps: tuple[ProgramStep, ...]


@dataclass(frozen=True)
class StepResult:
    """What one gen/select step produced. A gen carries its engine ``request`` and ``output`` (meta is built
    from them as for ``/generate``); a select carries the choices method's ``meta_info`` with ``prompt_tokens``
    and ``cached_tokens`` of its prefix."""

    node: str
    name: str | None
    value: str
    request: GenerateRequest | None = None
    output: GenerateOutput | None = None
    meta_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgramOutput:
    """``finish`` is None when every step ran, else an ``abort`` whose message says why (the steps that
    completed before are in ``steps``)."""

    rid: str
    steps: tuple[StepResult, ...]
    text: str
    finish: FinishReason | None = None

    @property
    def error(self) -> str | None:
        return None if self.finish is None else self.finish.message


# ---- the native form ---------------------------------------------------------------------------------------

_STEP_KEYS = {
    "text": {"type", "text"},
    "gen": {"type", "node", "name", "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num",
            "return_text_in_logprobs"},
    "select": {"type", "node", "name", "choices", "temperature", "method"},
}


def parse_steps(steps: Sequence[Mapping[str, Any] | ProgramStep]) -> tuple[ProgramStep, ...]:
    """Steps in the native form (dicts as ``/generate_program`` takes them; step objects pass through).
    Raises `InvalidRequestError` naming the step index and node."""
    if not isinstance(steps, Sequence) or isinstance(steps, (str, bytes)):
        raise InvalidRequestError(f"steps must be a list, got {type(steps).__name__}")
    return tuple(_parse_step(i, step) for i, step in enumerate(steps))


def _parse_step(index: int, step: Mapping[str, Any] | ProgramStep) -> ProgramStep:
    if isinstance(step, (ProgramText, ProgramGen, ProgramSelect)):
        return check_step(index, step)
    if not isinstance(step, Mapping):
        raise InvalidRequestError(f"steps[{index}] must be an object, got {type(step).__name__}")
    kind = step.get("type")
    where = step_label(index, step.get("node"))
    if kind not in _STEP_KEYS:
        raise InvalidRequestError(f"{where}: type must be one of text, gen, select, got {kind!r}")
    unknown = sorted(set(step) - _STEP_KEYS[kind])
    if unknown:
        raise InvalidRequestError(f"{where}: unknown keys {', '.join(unknown)} for a {kind} step")
    try:
        return check_step(index, _build(kind, step))
    except InvalidRequestError as err:
        raise InvalidRequestError(str(err) if str(err).startswith("steps[") else f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(f"{where}: {err}") from None


def _build(kind: str, step: Mapping[str, Any]) -> ProgramStep:
    if kind == "text":
        return ProgramText(step.get("text"))
    node, name = step.get("node") or f"{kind}()", step.get("name")
    if kind == "gen":
        logprobs = LogprobRequest(
            bool(step.get("return_logprob", False)), int(step.get("logprob_start_len", -1)),
            int(step.get("top_logprobs_num", 0)), bool(step.get("return_text_in_logprobs", False)))
        return ProgramGen(node, name, SamplingParams.from_dict(step.get("sampling_params")), logprobs)
    method = step.get("method", "token_length_normalized")
    if method not in METHODS_BY_NAME:
        raise InvalidRequestError(f"method must be one of {', '.join(METHODS_BY_NAME)}, got {method!r}")
    choices = step.get("choices")
    if not isinstance(choices, list):
        raise InvalidRequestError(f"choices must be a list of strings, got {type(choices).__name__}")
    return ProgramSelect(node, name, tuple(choices), float(step.get("temperature", 0.0)), METHODS_BY_NAME[method])


def check_step(index: int, step: ProgramStep) -> ProgramStep:
    """``step`` if it can run inside a program; else `InvalidRequestError` naming it."""
    if isinstance(step, ProgramText):
        problem = None if isinstance(step.text, str) else f"text must be a string, got {type(step.text).__name__}"
    elif isinstance(step, ProgramGen):
        problem = _gen_problem(step)
    else:
        problem = _select_problem(step)
    if problem is None:
        return step
    raise InvalidRequestError(f"{step_label(index, getattr(step, 'node', None))}: {problem}")


def step_label(index: int, node: Any) -> str:
    """How messages name a step: ``steps[2] (gen('answer'))``."""
    return f"steps[{index}] ({node})" if isinstance(node, str) else f"steps[{index}]"


def _gen_problem(step: ProgramGen) -> str | None:
    if step.name is not None and not isinstance(step.name, str):
        return "name must be a string"
    if step.sampling.n != 1:
        return f"a gen step takes one sample (n=1), got n={step.sampling.n}"
    if step.logprobs.logprob_start_len != -1:
        return "logprob_start_len is not supported inside a program (output logprobs only)"
    if step.logprobs.top_logprobs_num < 0:
        return f"top_logprobs_num must be >= 0, got {step.logprobs.top_logprobs_num}"
    return None


def _select_problem(step: ProgramSelect) -> str | None:
    if step.name is not None and not isinstance(step.name, str):
        return "name must be a string"
    if not step.choices or not all(isinstance(c, str) for c in step.choices):
        return "choices must be a non-empty list of strings"
    if not step.temperature >= 0:
        return f"temperature must be >= 0, got {step.temperature}"
    if not isinstance(step.method, ChoicesSamplingMethod):
        return f"method must be a choices method, got {type(step.method).__name__}"
    return None


# ---- tokens ------------------------------------------------------------------------------------------------

def encode_program_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a program's text: special tokens spelled in it (from a chat template) map to their ids, and
    BOS is not added twice when the text already starts with it. Per-node backends encode the same way."""
    bos = tokenizer.bos_token_id
    bos_text = tokenizer.id_to_token(bos) if bos is not None else None
    return tokenizer.encode(text, add_special_tokens=not (bos_text and text.startswith(bos_text)))
