"""Weights on disk: safetensors + JSON, written atomically, read without unpickling.

A pretrained directory holds `model.safetensors` and `config.json`
(`{"model": ModelConfig fields, ...extra}`). Every file is written to a temporary
name in the same directory, flushed and fsync'ed, then `os.replace`d into place, so a
crash mid-write leaves the previous file intact and no partial file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import CheckpointError

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)` then move the fsync'ed result to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: str | Path, data: dict) -> None:
    def write(tmp):
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    atomic_write(path, write)


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: expected a file at {path}, found none")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path}: expected valid JSON, got a truncated or corrupted file ({err})"
        ) from err


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: expected a file at {path}, found none")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: expected a safetensors file, got a truncated or corrupted one ({err})"
        ) from err


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model's name (a folder of worldflow/assets) or a directory."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = ASSETS / str(name_or_path)
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in ASSETS.iterdir() if p.is_dir()) if ASSETS.is_dir() else []
    raise CheckpointError(
        f"model: expected a directory or a shipped model name {names}, got {str(name_or_path)!r}"
    )


def save_pretrained(model, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    write_tensors(path / WEIGHTS, model.state_dict(), metadata={"format": "pt"})
    write_json(path / CONFIG, {**(extra or {}), "model": model.config.to_dict()})
    return path


def load_pretrained(cls, name_or_path, device="cpu"):
    path = resolve(name_or_path)
    meta = read_json(path / CONFIG)
    if "model" not in meta:
        raise CheckpointError(f"{path / CONFIG}: expected a 'model' section, got keys {sorted(meta)}")
    config = ModelConfig.from_dict(meta["model"])
    model = cls(config)
    load_weights(model, read_tensors(path / WEIGHTS), path / WEIGHTS)
    model.info = {k: v for k, v in meta.items() if k != "model"}
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{where}: {key} expected shape {tuple(expected[key].shape)}, got {tuple(value.shape)}"
            )
    model.load_state_dict(tensors)
