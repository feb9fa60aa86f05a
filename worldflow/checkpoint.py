"""Weights on disk: safetensors + JSON, written atomically, read without unpickling.

A pretrained directory holds `model.safetensors`, `config.json`
(`{"model": ModelConfig fields, ...extra}`) and, for world models of an environment,
`start_frames.safetensors` (real first frames, uint8 (K, H, W, 3), where dreams begin);
config.json records each file's SHA-256, checked on loading. Every file is written to a
temporary name in the same directory, flushed and fsync'ed, then `os.replace`d into place, so a
crash mid-write leaves the previous file intact and no partial file under the final name.
"""

from __future__ import annotations

import hashlib
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
WEIGHTS, CONFIG, START_FRAMES = "model.safetensors", "config.json", "start_frames.safetensors"


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)` then move the fsync'ed result to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
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


def resolve(name_or_path: str | Path, argument: str = "model") -> Path:
    """A shipped model's name (a folder of worldflow/assets) or a directory; errors name
    `argument`, the field the name came from."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = ASSETS / str(name_or_path)
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in ASSETS.iterdir() if p.is_dir()) if ASSETS.is_dir() else []
    raise CheckpointError(
        f"{argument}: expected a directory or a shipped model name {names}, got {str(name_or_path)!r}"
    )


def save_pretrained(model, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    write_tensors(path / WEIGHTS, model.state_dict(), metadata={"format": "pt"})
    files = [WEIGHTS]
    if model.start_frames is not None:
        write_tensors(path / START_FRAMES, {"frames": model.start_frames})
        files.append(START_FRAMES)
    sums = {name: sha256(path / name) for name in files}
    write_json(
        path / CONFIG, {**model.info, **(extra or {}), "sha256": sums, "model": model.config.to_dict()}
    )
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, sums: dict) -> None:
    for name, expected in sums.items():
        if (path / name).is_file() and sha256(path / name) != expected:
            raise CheckpointError(f"{path / name}: checksum mismatch with config.json: the file is corrupted")


def read_pretrained(
    name_or_path, argument: str = "model"
) -> tuple[Path, ModelConfig, dict[str, torch.Tensor], dict]:
    """A saved model's folder, config, weights (checksums verified) and the rest of its
    config.json (the training record), without building the model. Errors name `argument`."""
    path = resolve(name_or_path, argument)
    meta = read_json(path / CONFIG)
    if "model" not in meta:
        raise CheckpointError(f"{path / CONFIG}: expected a 'model' section, got keys {sorted(meta)}")
    verify(path, meta.get("sha256", {}))
    info = {k: v for k, v in meta.items() if k not in ("model", "sha256")}
    return path, ModelConfig.from_dict(meta["model"]), read_tensors(path / WEIGHTS), info


def load_pretrained(cls, name_or_path, device="cpu"):
    path, config, weights, info = read_pretrained(name_or_path)
    model = cls(config)
    load_weights(model, weights, path / WEIGHTS)
    model.info = info
    model.source_dir = path
    if (path / START_FRAMES).is_file():
        frames = read_tensors(path / START_FRAMES).get("frames")
        expected = (*config.frame_size, config.channels)
        if frames is None or frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != expected:
            raise CheckpointError(
                f"{path / START_FRAMES}: expected uint8 'frames' (K, {expected}), got {frames}"
            )
        model.start_frames = frames
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where, keep=None) -> None:
    """Load `tensors` into `model`, all of its weights or those whose name `keep` accepts;
    raises CheckpointError naming missing, unexpected or misshapen ones."""
    if keep is not None:
        tensors = {k: v for k, v in tensors.items() if keep(k)}
    expected = {k: v for k, v in model.state_dict().items() if keep is None or keep(k)}
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
    model.load_state_dict(tensors, strict=keep is None)
