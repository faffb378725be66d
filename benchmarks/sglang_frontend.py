"""SGLang 0.5.23's own frontend (``sglang.lang``) and its test programs (``sglang.test.test_programs``), fetched
from PyPI into a local cache on first use and loaded beside sglang-dsl, for the benchmarks and tests that compare
the two frontends or drive our server with SGLang's.

`fetch` is idempotent: it downloads the release wheel with pip (``--no-deps``, for a fixed platform, so it works
whatever the local Python), extracts only the pure-Python frontend files, and pip-installs the four third-party
modules they import (``pybase64``, ``IPython``, ``aiohttp``, ``msgspec``) beside them. `load` imports the
frontend without running ``sglang/__init__.py`` (which loads the server and its GPU stack): the ``sglang``
module it makes exports the frontend's API, as ``import sglang as sgl`` expects, and ``sglang.srt.utils`` is a
stand-in offering only ``is_hip`` (the one server helper ``test_programs.py`` imports at the top).

    python benchmarks/sglang_frontend.py           # fetch into ~/.cache/sglang-dsl/sglang-0.5.23
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path
from typing import Any

SGLANG_VERSION = "0.5.23"
DEFAULT_PATH = Path(os.path.expanduser(f"~/.cache/sglang-dsl/sglang-{SGLANG_VERSION}"))
# The release is published as CPython 3.11 wheels only; its frontend files are pure Python.
WHEEL_TAGS = ("--platform", "manylinux_2_34_x86_64", "--python-version", "3.11", "--implementation", "cp")
FRONTEND_FILES = ("sglang/lang/", "sglang/test/test_programs.py", "sglang/utils.py", "sglang/srt/environ.py")
FRONTEND_IMPORTS = ("pybase64", "ipython", "aiohttp", "msgspec")
_COMPLETE = ".complete"  # written last, so an interrupted fetch is redone


def fetch(path: Path = DEFAULT_PATH) -> Path:
    """SGLang's frontend files and their imports under ``path`` (downloaded unless already there)."""
    if (path / _COMPLETE).exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sglang-wheel-") as scratch:
        _pip("download", f"sglang=={SGLANG_VERSION}", "--no-deps", "--only-binary=:all:", *WHEEL_TAGS, "-d", scratch)
        (wheel,) = Path(scratch).glob("sglang-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(path, [name for name in archive.namelist() if name.startswith(FRONTEND_FILES)])
    _pip("install", "--upgrade", "--target", str(path / "site-packages"), *FRONTEND_IMPORTS)
    (path / _COMPLETE).write_text(SGLANG_VERSION)
    return path


def load(path: Path = DEFAULT_PATH) -> types.ModuleType:
    """The ``sglang`` module of SGLang's frontend under ``path`` (`fetch` it first); importing it again returns
    the same module."""
    if "sglang" in sys.modules:
        return sys.modules["sglang"]
    if not (path / _COMPLETE).exists():
        raise FileNotFoundError(f"SGLang's frontend is not fetched into {path}: run benchmarks/sglang_frontend.py")
    # After the project's own paths: where both have a package, the venv's version wins.
    sys.path.extend([str(path), str(path / "site-packages")])
    sglang = types.ModuleType("sglang")
    sglang.__path__ = [str(path / "sglang")]
    sys.modules["sglang"] = sglang
    server_utils = types.ModuleType("sglang.srt.utils")
    server_utils.is_hip = lambda: False  # type: ignore[attr-defined]
    sys.modules["sglang.srt.utils"] = server_utils
    vars(sglang).update(_frontend_api())
    return sglang


def load_test_programs(path: Path = DEFAULT_PATH, frontend: types.ModuleType | None = None) -> types.ModuleType:
    """``sglang.test.test_programs``, SGLang's own test programs, on the frontend `load` makes; given a
    ``frontend`` module (``sglang_dsl``), a separate copy of the module whose functions use that one as ``sgl``
    (the same code: its ``import sglang as sgl`` is rebound once it has run)."""
    load(path)
    import sglang.test.test_programs as programs

    if frontend is None:
        return programs
    spec = importlib.util.find_spec(programs.__name__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.sgl = frontend
    return module


def _frontend_api() -> dict[str, Any]:
    """What ``sglang/__init__.py`` exports of the frontend."""
    import sglang.lang.api as api
    from sglang.lang import choices
    from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
    from sglang.lang.global_config import global_config

    return {**{name: getattr(api, name) for name in _API}, **{name: getattr(choices, name) for name in _METHODS},
            "RuntimeEndpoint": RuntimeEndpoint, "global_config": global_config, "__version__": SGLANG_VERSION}


_API = ("Runtime", "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen", "gen_int",
        "gen_string", "get_server_info", "image", "select", "separate_reasoning", "set_default_backend", "system",
        "system_begin", "system_end", "user", "user_begin", "user_end", "video")
_METHODS = ("greedy_token_selection", "token_length_normalized", "unconditional_likelihood_normalized")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], check=True)


if __name__ == "__main__":
    print(fetch())
