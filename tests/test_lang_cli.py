"""``sglang-dsl run FILE.py[:FUNC]``: loading programs, arguments, printing variables, one-line errors."""

from __future__ import annotations

import textwrap

import pytest

import backends.local
from sglang_dsl.cli import main
from test_lang_interpreter import Scripted

PROGRAMS = textwrap.dedent('''
    import sglang_dsl as sgl

    @sgl.function
    def greet(s, name, times=1):
        s += ("Hello " + name + "! ") * times + sgl.gen("reply", max_tokens=4)

    @sgl.function
    def broken(s):
        s += sgl.gen("bad")

    if __name__ == "__main__":
        raise SystemExit("the main block must not run")
''')


@pytest.fixture
def program_file(tmp_path, monkeypatch):
    created = []

    def fake_runtime(model, device, dtype):
        backend = Scripted({"reply": "Hi [b]there[/b]"}, fail_on="bad")
        created.append((model, backend))
        return backend

    monkeypatch.setattr(backends.local, "Runtime", fake_runtime)
    path = tmp_path / "programs.py"
    path.write_text(PROGRAMS)
    return path, created


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_run_prints_the_variables(program_file, capsys):
    path, created = program_file
    code, out = run_cli(capsys, "run", f"{path}:greet", "--arg", "name=Ada", "--arg", "times=2", "--text",
                        "--temperature", "0", "--model", "some-model")
    assert code == 0, out
    assert "greet: variables" in out and "Hi [b]there[/b]" in out  # values are printed verbatim
    assert "Hello Ada! Hello Ada! Hi [b]there[/b]" in out
    model, backend = created[0]
    assert model == "some-model" and backend.calls[0].sampling_params() == {"max_new_tokens": 4, "temperature": 0}


@pytest.mark.parametrize("target, args, message", [
    ("{path}", [], "defines several; pick one with"),
    ("{path}:nope", [], "no @function named 'nope' (programs: broken, greet)"),
    ("{dir}/missing.py", [], "no such file"),
    ("{path}:greet", ["--arg", "oops"], "expected NAME=VALUE"),
])
def test_bad_targets_give_one_clear_line(program_file, capsys, target, args, message):
    path, _ = program_file
    code, out = run_cli(capsys, "run", target.format(path=path, dir=path.parent), *args)
    assert code == 2 and message in out


def test_a_failing_program_names_the_node(program_file, capsys):
    path, _ = program_file
    code, out = run_cli(capsys, "run", f"{path}:broken")
    assert code == 1 and "program 'broken', node gen('bad')" in out
    code, out = run_cli(capsys, "run", f"{path}:greet")
    assert code == 1 and "name" in out  # the missing argument
