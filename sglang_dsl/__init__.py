"""sglang-dsl: write language-model programs in Python and run them on a bundled radix-cache runtime.

``import sglang_dsl as sgl`` gives SGLang's frontend API: ``@sgl.function``, ``sgl.gen``, ``sgl.select``, the
chat roles, ``sgl.Runtime`` and friends. Importing it never imports torch or the runtime: ``sgl.Runtime`` (and
the default backend) load them on first use."""

from __future__ import annotations

from typing import Any

from sglang_dsl.lang.choices import (
    ChoicesDecision, ChoicesSamplingMethod, greedy_token_selection, token_length_normalized,
    unconditional_likelihood_normalized,
)
from sglang_dsl.lang.config import flush_cache, get_server_info, global_config, set_default_backend
from sglang_dsl.lang.errors import ProgramError, UnsupportedFeatureError
from sglang_dsl.lang.function import SglFunction, function
from sglang_dsl.lang.primitives import (
    assistant, assistant_begin, assistant_end, gen, gen_int, gen_string, image, select, system, system_begin,
    system_end, user, user_begin, user_end,
)
from sglang_dsl.lang.state import ProgramState, ProgramStateGroup

__version__ = "0.1.0"

_LAZY = {"Runtime": ("backends.local", "Runtime"), "RuntimeEndpoint": ("backends.endpoint", "RuntimeEndpoint"),
         "OpenAI": ("backends.openai", "OpenAI"), "Anthropic": ("backends.anthropic", "Anthropic")}


def __getattr__(name: str) -> Any:
    """``Runtime`` (torch and the runtime) and ``RuntimeEndpoint`` (httpx) are imported on first use."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'sglang_dsl' has no attribute {name!r}")


__all__ = [
    "function", "gen", "gen_int", "gen_string", "select", "image", "system", "user", "assistant",
    "system_begin", "system_end", "user_begin", "user_end", "assistant_begin", "assistant_end",
    "set_default_backend", "flush_cache", "get_server_info", "global_config", "Runtime", "RuntimeEndpoint",
    "OpenAI", "Anthropic",
    "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized",
    "ChoicesSamplingMethod", "ChoicesDecision", "SglFunction", "ProgramState", "ProgramStateGroup",
    "ProgramError", "UnsupportedFeatureError", "__version__",
]
