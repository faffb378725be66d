"""The primitives programs are written with, with SGLang's names and signatures: ``gen``, ``gen_int``,
``gen_string``, ``select``, ``image``, and the chat roles.

Each returns an expression (`sglang_dsl.lang.exprs`); nothing runs until it is appended to a program state.
Arguments are checked here, so a bad regex or an empty choice list fails at the line that wrote it.
"""

from __future__ import annotations

import mimetypes
from io import BytesIO
from pathlib import Path
from typing import Any, Sequence

from sglang_dsl.lang.choices import ChoicesSamplingMethod, token_length_normalized
from sglang_dsl.lang.exprs import ExprLike, ExprList, Gen, Image, RoleBegin, RoleEnd, Select, as_expr
from sglang_dsl.lang.params import SamplingParams


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop_regex: str | Sequence[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: type | str | None = None,
    choices: Sequence[str] | None = None,
    choices_method: ChoicesSamplingMethod | None = None,
    regex: str | None = None,
    json_schema: Any = None,
    grammar: str | None = None,
) -> Gen | Select:
    """Generate text and store it as variable ``name``. Every argument left ``None`` is inherited from
    ``run()``'s sampling arguments, and what neither sets is left to the backend's defaults.

    With ``choices``, this is ``select(name, choices, temperature or 0.0, choices_method)``. ``dtype``
    (``int``, ``float``, ``str``, ``bool``) constrains the output with SGLang's regex for that type and wins over
    ``regex``. ``json_schema`` is JSON text, a dict or a pydantic model class. ``grammar`` is a context-free
    grammar in lark's EBNF (or llama.cpp's GBNF) that the whole output must match; it is sent as the native
    ``ebnf`` sampling parameter, and cannot be combined with another constraint.

    >>> s += "Q: What is 2 + 2?\\nA:" + gen("answer", max_tokens=8, stop="\\n")
    """
    if choices:
        return select(name, choices, 0.0 if temperature is None else temperature,
                      choices_method or token_length_normalized)
    if grammar is not None and (regex is not None or json_schema is not None or dtype is not None):
        raise ValueError(f"gen({name!r}): a grammar cannot be combined with regex, json_schema or dtype")
    params = SamplingParams.build(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
        stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs, dtype=dtype,
        regex=None if dtype is not None else regex, json_schema=json_schema, grammar=grammar,
    )
    return Gen(_check_name(name), params)


def gen_int(name: str | None = None, max_tokens: int | None = None, n: int | None = None,
            stop: str | Sequence[str] | None = None, stop_token_ids: Sequence[int] | None = None,
            stop_regex: str | Sequence[str] | None = None, temperature: float | None = None,
            top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
            frequency_penalty: float | None = None, presence_penalty: float | None = None,
            ignore_eos: bool | None = None, return_logprob: bool | None = None,
            logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
            return_text_in_logprobs: bool | None = None) -> Gen:
    """``gen(..., dtype=int)``: an integer, optionally signed."""
    return gen(name, max_tokens, None, n, stop, stop_token_ids, stop_regex, temperature, top_p, top_k, min_p,
               frequency_penalty, presence_penalty, ignore_eos, return_logprob, logprob_start_len,
               top_logprobs_num, return_text_in_logprobs, dtype="int")


def gen_string(name: str | None = None, max_tokens: int | None = None, n: int | None = None,
               stop: str | Sequence[str] | None = None, stop_token_ids: Sequence[int] | None = None,
               stop_regex: str | Sequence[str] | None = None, temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
               frequency_penalty: float | None = None, presence_penalty: float | None = None,
               ignore_eos: bool | None = None, return_logprob: bool | None = None,
               logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
               return_text_in_logprobs: bool | None = None) -> Gen:
    """``gen(..., dtype=str)``: a double-quoted string (the quotes are part of the value)."""
    return gen(name, max_tokens, None, n, stop, stop_token_ids, stop_regex, temperature, top_p, top_k, min_p,
               frequency_penalty, presence_penalty, ignore_eos, return_logprob, logprob_start_len,
               top_logprobs_num, return_text_in_logprobs, dtype="str")


def select(name: str | None = None, choices: Sequence[str] | None = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> Select:
    """Append the choice the model finds most likely after the text so far (scored by ``choices_method``);
    with ``temperature > 0``, one sampled in proportion to ``exp(score / temperature)``.

    >>> s += "Answer: " + select("answer", choices=["True", "False", "Unknown"])
    """
    if not choices:
        raise ValueError(f"select({name!r}) needs a non-empty list of choices")
    if not all(isinstance(c, str) for c in choices):
        raise TypeError(f"select({name!r}): every choice must be a string, got {list(choices)!r}")
    if not isinstance(choices_method, ChoicesSamplingMethod):
        raise TypeError(f"select({name!r}): choices_method must be a ChoicesSamplingMethod, got {choices_method!r}")
    if temperature < 0:
        raise ValueError(f"select({name!r}): temperature must be >= 0, got {temperature}")
    return Select(_check_name(name), tuple(choices), float(temperature), choices_method)


def image(expr: Any) -> Image:
    """An image for the current turn: a file path (``str`` or ``Path``), encoded bytes, or a PIL image."""
    if isinstance(expr, (str, Path)):
        path = Path(expr)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ValueError(f"image({str(expr)!r}): cannot read the file: {err.strerror}") from None
        return Image(data, mimetypes.guess_type(path.name)[0] or "image/png", str(expr))
    if isinstance(expr, (bytes, bytearray)):
        return Image(bytes(expr), _sniff_mime(bytes(expr)), "<bytes>")
    if hasattr(expr, "save") and hasattr(expr, "size"):  # a PIL image, without importing PIL
        buffer = BytesIO()
        expr.save(buffer, format="PNG")
        return Image(buffer.getvalue(), "image/png", f"<{type(expr).__name__}>")
    raise TypeError(f"image() takes a file path, bytes or a PIL image, not {type(expr).__name__}")


def _role(role: str, expr: ExprLike | None) -> ExprList:
    body = [] if expr is None else [as_expr(expr)]
    return ExprList.of(RoleBegin(role), *body, RoleEnd(role))


def system(expr: ExprLike | None = None) -> ExprList:
    """A system turn around ``expr``, rendered with the model's chat template."""
    return _role("system", expr)


def user(expr: ExprLike | None = None) -> ExprList:
    """A user turn around ``expr``, rendered with the model's chat template."""
    return _role("user", expr)


def assistant(expr: ExprLike | None = None) -> ExprList:
    """An assistant turn around ``expr``, rendered with the model's chat template."""
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")


def _check_name(name: Any) -> str | None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"a variable name must be a string, got {name!r}")
    return name


def _sniff_mime(data: bytes) -> str:
    signatures = {b"\x89PNG": "image/png", b"\xff\xd8": "image/jpeg", b"GIF8": "image/gif", b"RIFF": "image/webp"}
    return next((mime for magic, mime in signatures.items() if data.startswith(magic)), "application/octet-stream")


__all__ = [
    "gen", "gen_int", "gen_string", "select", "image", "system", "user", "assistant", "system_begin",
    "system_end", "user_begin", "user_end", "assistant_begin", "assistant_end",
]
