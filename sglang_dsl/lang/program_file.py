"""Programs named on a command line: ``path/to/file.py[:function]`` and ``key=value`` arguments."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from sglang_dsl.lang.function import SglFunction


class ProgramFileError(ValueError):
    """The file cannot be loaded, or does not name exactly one program; the message says which and why."""


def load_program(target: str) -> SglFunction:
    """The ``@function`` named by ``FILE.py[:FUNC]``; without ``FUNC`` the file must define exactly one. The file
    is imported under its own module name (its ``if __name__ == "__main__":`` block does not run)."""
    path_text, _, name = target.partition(":") if not Path(target).exists() else (target, "", "")
    path = Path(path_text)
    if not path.is_file():
        raise ProgramFileError(f"{path_text}: no such file")
    module = _import(path)
    programs = {key: value for key, value in vars(module).items() if isinstance(value, SglFunction)}
    if name:
        if name not in programs:
            raise ProgramFileError(f"{path}: no @function named {name!r} (programs: {_names(programs)})")
        return programs[name]
    if len(programs) != 1:
        detail = "defines no @function" if not programs else f"defines several; pick one with {path}:NAME"
        raise ProgramFileError(f"{path} {detail} (programs: {_names(programs)})")
    return next(iter(programs.values()))


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}``; a value that parses as JSON (``3``, ``true``, ``[1, 2]``) is taken as such,
    anything else as a string."""
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ProgramFileError(f"--arg {pair!r}: expected NAME=VALUE")
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value
    return arguments


def _import(path: Path):
    module_name = f"sglang_dsl_program_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ProgramFileError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ProgramFileError(f"{path}: importing it failed: {type(err).__name__}: {err}") from err
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _names(programs: dict[str, SglFunction]) -> str:
    return ", ".join(sorted(programs)) or "none"
