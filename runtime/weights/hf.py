"""Reading a Hugging Face model directory: ``config.json`` and one or many ``*.safetensors`` shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from runtime.errors import ModelLoadError


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{directory}: no config.json; expected a Hugging Face model directory") from None
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from None


def safetensors_files(directory: Path) -> list[Path]:
    """The shards named by ``model.safetensors.index.json``, or every ``*.safetensors`` file."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory}: no *.safetensors weights (other formats are not supported)")
    for file in files:
        if not file.exists():
            raise ModelLoadError(f"{file}: listed in the shard index but missing")
    return files


def iter_safetensors(directory: Path, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    for file in safetensors_files(directory):
        try:
            with safe_open(str(file), framework="pt") as shard:
                for name in shard.keys():
                    yield name, shard.get_tensor(name).to(dtype)
        except SafetensorError as err:
            raise ModelLoadError(f"{file}: corrupt safetensors file ({err})") from None
