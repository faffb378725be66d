"""Request bodies: safe JSON decoding and the pydantic models of the native and OpenAI APIs.

Models are strict about JSON types (``"10"`` is not an integer, ``1`` is not a boolean) and ignore unknown
top-level keys. Sampling fields are checked again, by value, by ``Engine.make_request``."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.server.errors import APIError

M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes) -> Any:
    """The JSON value of a request body; ``APIError`` (400) for invalid UTF-8, malformed JSON, NaN/Infinity."""
    if not raw.strip():
        raise APIError("request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(f"request body is not valid UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:
        raise APIError(f"request body is not valid JSON: {err}") from None


def parse_body(raw: bytes, model: type[M]) -> M:
    """Decode and validate a JSON object body into ``model``; ``APIError`` (400) naming the bad field."""
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise APIError(f"request body must be a JSON object, not {_json_type(value)}")
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise APIError(describe_validation_error(err), param=_first_field(err)) from None


def describe_validation_error(err: ValidationError) -> str:
    """One line naming each bad field (at most three) and what was wrong with it."""
    parts, seen = [], set()
    for e in err.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()))
        if loc in seen:
            continue
        seen.add(loc)
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        if e.get("type") == "missing":
            msg = "field required"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts[:3]) or "invalid request"


def _first_field(err: ValidationError) -> str | None:
    errors = err.errors()
    return str(errors[0]["loc"][0]) if errors and errors[0].get("loc") else None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), type(value).__name__)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def _str_or_str_list(name: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{name} must be a string or a list of strings")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ids_or_id_lists(name: str, value: Any) -> Any:
    if value is None:
        return value
    if isinstance(value, list) and all(_is_int(v) for v in value):
        return value
    if isinstance(value, list) and value and all(
            isinstance(row, list) and all(_is_int(v) for v in row) for row in value):
        return value
    raise ValueError(f"{name} must be a list of token ids or a list of such lists")


def _scalar_or_list(name: str, value: Any, check, kind: str) -> Any:
    if check(value) or (isinstance(value, list) and all(check(v) for v in value)):
        return value
    raise ValueError(f"{name} must be {kind} or a list of them")


# --------------------------------------------------------------------------------------------- native API

class ProgramBody(_Body):
    """``POST /generate_program``: a prompt and its steps (checked step by step by ``Engine.make_program``), or a
    batch: a list of prompts with one list of steps each (or one list of steps for all)."""

    text: str | list[str]
    steps: list[Any]
    rid: str | None = None
    image_data: Any = None

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _str_or_str_list("text", v)


class GenerateBody(_Body):
    """``POST /generate``: SGLang's ``GenerateReqInput``, the fields this runtime serves."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    input_embeds: Any = None
    image_data: Any = None
    video_data: Any = None
    audio_data: Any = None
    lora_path: Any = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    rid: str | list[str] | None = None
    stream: bool = False
    return_logprob: bool | list[bool] = False
    logprob_start_len: int | list[int] = -1
    top_logprobs_num: int | list[int] = 0
    token_ids_logprob: list[int] | list[list[int]] | None = None
    return_text_in_logprobs: bool = False

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _str_or_str_list("text", v)

    @field_validator("input_ids", "token_ids_logprob", mode="before")
    @classmethod
    def _input_ids(cls, v: Any, info) -> Any:
        return _ids_or_id_lists(info.field_name, v)

    @field_validator("rid", mode="before")
    @classmethod
    def _rid(cls, v: Any) -> Any:
        return _str_or_str_list("rid", v)

    @field_validator("sampling_params", mode="before")
    @classmethod
    def _sampling_params(cls, v: Any) -> Any:
        if v is None or isinstance(v, dict) or (isinstance(v, list) and all(isinstance(x, dict) for x in v)):
            return v
        raise ValueError("sampling_params must be an object or a list of objects")

    @field_validator("return_logprob", mode="before")
    @classmethod
    def _return_logprob(cls, v: Any) -> Any:
        return _scalar_or_list("return_logprob", v, lambda x: isinstance(x, bool), "a boolean")

    @field_validator("logprob_start_len", "top_logprobs_num", mode="before")
    @classmethod
    def _int_or_list(cls, v: Any, info) -> Any:
        return _scalar_or_list(info.field_name, v, _is_int, "an integer")


class AbortBody(_Body):
    rid: str = ""
    abort_all: bool = False


class TokenizeBody(_Body):
    prompt: str | list[str]
    add_special_tokens: bool = True


# --------------------------------------------------------------------------------------------- OpenAI API

class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _OpenAISampling(_Body):
    """Fields shared by completions and chat completions; the extras after ``user`` are accepted the way vLLM and
    SGLang accept them (``extra_body`` in the OpenAI SDK)."""

    model: str | None = None
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    no_stop_trim: bool | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    rid: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        return _str_or_str_list("stop", v)


class CompletionBody(_OpenAISampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
            return v
        try:
            return _ids_or_id_lists("prompt", v)
        except ValueError:
            raise ValueError(
                "prompt must be a string, a list of strings, a list of token ids or a list of such lists") from None


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionBody(_OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False
