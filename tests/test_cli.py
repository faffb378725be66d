"""The ``sglang-dsl`` command line: generation on a model, and clear one-line errors for bad models."""

from __future__ import annotations

import pytest

from sglang_dsl.cli import main
from tiny_models import make_hf_model, write_word_tokenizer


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_generate_on_a_local_checkpoint(tmp_path, capsys):
    make_hf_model("llama", tmp_path)
    write_word_tokenizer(tmp_path)
    capsys.readouterr()
    code, out = run_cli(capsys, "generate", "--model", str(tmp_path), "--max-new-tokens", "5", "w1 w2 w3")
    assert code == 0
    assert "w1 w2 w3" in out  # the prompt heads its continuation
    assert len(out.strip().splitlines()[-1].split()) == 5  # five generated words


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "without a config.json"),
        (lambda d: (d / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}'),
         "unsupported architecture GPT2LMHeadModel"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.gguf").write_bytes(b"GGUF" + b"\0" * 10), "model.gguf"),
    ],
    ids=["missing-config", "unsupported-arch", "bad-json", "corrupt-gguf"],
)
def test_bad_models_give_one_clear_line(tmp_path, capsys, setup, message):
    setup(tmp_path)
    target = tmp_path / "model.gguf" if message == "model.gguf" else tmp_path
    code, out = run_cli(capsys, "generate", "--model", str(target), "hi")
    assert code == 2
    assert message in out
    assert "Traceback" not in out


def test_missing_path_names_the_forms_tried(capsys):
    code, out = run_cli(capsys, "generate", "--model", "/no/such/model", "hi")
    assert code == 2 and "/no/such/model" in out and "Traceback" not in out
