"""Reading the tokenizer of a Hugging Face model directory.

The directory must hold a fast tokenizer (``tokenizer.json``); its
post-processor already decides whether BOS is added. Special tokens and the
chat template come from ``tokenizer_config.json`` (or ``chat_template.jinja``,
which takes priority, as in transformers), and end-of-sequence ids from
``config.json`` and ``generation_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from runtime.errors import ModelLoadError
from runtime.tokenizer.parts import TokenizerParts


def read_hf_tokenizer(directory: Path) -> TokenizerParts:
    """Build the tokenizer of an HF model directory. Raises `ModelLoadError` naming the file."""
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"{directory}: no tokenizer.json (only fast tokenizers are supported)")
    try:
        backend = Tokenizer.from_file(str(tokenizer_file))
    except Exception as error:  # the tokenizers library raises bare Exception
        raise ModelLoadError(f"{tokenizer_file}: cannot be read ({error})") from None

    settings = _read_json(directory / "tokenizer_config.json")
    config = _read_json(directory / "config.json")
    generation = _read_json(directory / "generation_config.json")
    bos_id = _token_id(backend, settings.get("bos_token"))
    eos_id = _token_id(backend, settings.get("eos_token"))
    configured_eos = _ids(config.get("eos_token_id")) | _ids(generation.get("eos_token_id"))
    return TokenizerParts(
        source=directory,
        backend=backend,
        bos_token_id=bos_id if bos_id is not None else config.get("bos_token_id"),
        eos_token_id=eos_id if eos_id is not None else min(configured_eos, default=None),
        extra_eos_token_ids=frozenset(configured_eos),
        chat_template=_chat_template(directory, settings),
    )


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or an empty dict if there is no such file."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(content, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return content


def _token_id(backend: Tokenizer, token: str | dict[str, Any] | None) -> int | None:
    """The id of a special token as tokenizer_config.json spells it (a string or an AddedToken dict)."""
    if isinstance(token, dict):
        token = token.get("content")
    return backend.token_to_id(token) if isinstance(token, str) else None


def _ids(value: int | list[int] | None) -> frozenset[int]:
    if value is None:
        return frozenset()
    return frozenset(value) if isinstance(value, list) else frozenset({value})


def _chat_template(directory: Path, settings: dict[str, Any]) -> str | None:
    template_file = directory / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = settings.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        return named.get("default")
    return template if isinstance(template, str) else None
