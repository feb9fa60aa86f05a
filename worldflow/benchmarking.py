"""What every script in benchmarks/ shares: flags from its `Args` dataclass, one JSON line.

if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from .model import WorldFlow


def benchmark_main(args_type: type, run: Callable[[object], dict], doc: str | None) -> dict:
    """Parse `--field value` for every field of `args_type`, run, print one JSON line and,
    with `--out PATH`, write it there too (e.g. benchmarks/results/NAME.json)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    for name, default in asdict(args_type()).items():
        kind = _flag if isinstance(default, bool) else type(default)
        parser.add_argument(f"--{name}", type=kind, default=default)
    args = args_type(**vars(parser.parse_args()))
    result = run(args)
    line = json.dumps(result)
    print(line)
    out = getattr(args, "out", "")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(line + "\n")
    return result


def _flag(text: str) -> bool:
    """`--name true|false` (argparse's `bool` would read "false" as True)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def load_baseline(name: str, model: WorldFlow) -> WorldFlow:
    """The model `name` to compare `model` with, on the same frames: a clear error if its
    frame size differs."""
    base = WorldFlow.from_pretrained(name)
    if tuple(base.config.frame_size) != tuple(model.config.frame_size):
        raise ValueError(
            f"baseline: expected frames of {list(model.config.frame_size)}, "
            f"got {list(base.config.frame_size)}"
        )
    return base


def machine() -> dict:
    """Where a figure was measured."""
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }


def check_positive(args, *fields: str) -> None:
    """A clear error for the first of `fields` of `args` below 1."""
    for field in fields:
        if getattr(args, field) < 1:
            raise ValueError(f"{field}: expected a positive integer, got {getattr(args, field)}")


def load_cartpole_model(name: str) -> WorldFlow:
    """A CartPole world model, in eval mode, or a clear error naming `model`."""
    model = WorldFlow.from_pretrained(name).eval()
    env_id = model.config.env_id or ""
    if not env_id.startswith("CartPole"):
        raise ValueError(f"model: expected a CartPole world model, got one of env_id={model.config.env_id!r}")
    return model
