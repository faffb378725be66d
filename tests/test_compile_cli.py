"""``sglang-dsl compile``: golden text output (IR, program plan, batch plan) and the JSON form.

Compile times vary, so the goldens read ``<time>`` in their place. Regenerate after an intended change with
``SGLANG_DSL_UPDATE_GOLDEN=1 pytest tests/test_compile_cli.py`` and review the diff."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sglang_dsl.cli import main
from sglang_dsl.compiler.batch_plan import BatchPlan
from sglang_dsl.compiler.program_plan import ProgramPlan

GOLDEN = Path(__file__).parent / "golden" / "compile"
PROGRAMS = GOLDEN / "programs.py"
UPDATE = os.environ.get("SGLANG_DSL_UPDATE_GOLDEN") == "1"

CASES = {
    "capitals_batch": ["capitals", "--batch", str(GOLDEN / "capitals.jsonl")],
    "capitals_bound": ["capitals", "--arg", "question=Who are you?"],
    "ideas": ["ideas"],
    "sentiment": ["sentiment"],
    "assistant": ["assistant"],
    "ideas_characters": ["ideas", "--model", "none"],
}


def compile_output(capsys, target: str, *options: str) -> str:
    code = main(["compile", f"{PROGRAMS}:{target}", "--no-constraint-cache", *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_text(capsys, case):
    target, *options = CASES[case]
    text = re.sub(r"in [0-9.]+ ms", "in <time> ms", compile_output(capsys, target, *options))
    path = GOLDEN / f"{case}.txt"
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text()


def test_json_holds_the_ir_and_plans_exactly(capsys):
    out = json.loads(compile_output(capsys, "capitals", "--batch", str(GOLDEN / "capitals.jsonl"),
                                    "--format", "json"))
    assert out["ir"]["name"] == "capitals"
    program = ProgramPlan.from_json(json.dumps(out["plan"]))
    batch = BatchPlan.from_json(json.dumps(out["batch_plan"]))
    assert program.constraints[0].states and program.prefix.tokens
    assert batch.prefill_tokens == batch.ideal_tokens and len(batch.instances) == 4


def test_bad_batch_file_names_the_line(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"quest": "typo"}\n')
    code = main(["compile", f"{PROGRAMS}:capitals", "--model", "none", "--batch", str(bad)])
    assert code == 2
    assert f"{bad}:2: capitals() has no arguments quest" in capsys.readouterr().err
