"""The examples run as documented on the embedded model, and every structured answer of
``examples/structured_output.py`` parses, sampling at temperature 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lark
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_structured_output_always_parses(smollm2_source):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import structured_output as example
    finally:
        sys.path.remove(str(ROOT / "examples"))
    import sglang_dsl as sgl

    runtime = sgl.Runtime(model=str(smollm2_source.path), device="cpu")
    try:
        states = example.city_facts.run_batch([{"city": c} for c in ("Paris", "Tokyo", "Lima")], backend=runtime,
                                              temperature=1.0)
    finally:
        runtime.shutdown()
    for state in states:
        example.City.model_validate_json(state["facts"])
        assert re.fullmatch(r"20[0-2][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", state["visit"])
        int(state["days"])
        lark.Lark(example.ARITHMETIC).parse(state["expression"])
        assert state["again"] in ("Yes.", "No.")


def test_structured_output_runs_from_the_command_line():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "structured_output.py")], capture_output=True,
                         text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert re.search(r"^facts: +City\(name=", out.stdout, re.M) and re.search(r"^again: +(Yes|No)\.", out.stdout, re.M)
