"""Tokenizers for the runtime, loaded from a Hugging Face directory or a GGUF file.

The names below load on first use, so `runtime.tokenizer.chat_template` (Jinja only) imports without the model
files' dependencies (torch): remote backends render a server's chat template with it."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IncrementalDetokenizer": "runtime.tokenizer.detokenizer",
    "Tokenizer": "runtime.tokenizer.tokenizer",
    "load_tokenizer": "runtime.tokenizer.tokenizer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'runtime.tokenizer' has no attribute {name!r}")
