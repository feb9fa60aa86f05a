"""Training checkpoints: commit, verify and restore a run exactly.

A committed step lives in `out/checkpoint/step_XXXXXXXX/` (weights, optimizer state
flattened into safetensors, RNG state, and a JSON file with everything else);
`latest.json`, written last, names it with each file's SHA-256. Every file is written
atomically, nothing is pickled, and a truncated or corrupted file raises `CheckpointError`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim.swa_utils import AveragedModel

from ..checkpoint import (
    read_json,
    read_tensors,
    sha256,
    write_json,
    write_tensors,
)
from ..errors import CheckpointError


def flatten_optimizer(name: str, state: dict) -> tuple[dict[str, Tensor], dict]:
    """A (parameter-name keyed) optimizer state dict -> tensors `name/param/key` + the rest."""
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for param, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{name}/{param}/{key}"] = value
            else:
                rest["state"].setdefault(param, {})[key] = value
    return tensors, rest


def unflatten_optimizer(name: str, tensors: dict[str, Tensor], rest: dict) -> dict:
    """The inverse of `flatten_optimizer`."""
    state = {param: dict(entry) for param, entry in rest["state"].items()}
    for key, value in tensors.items():
        part, param, entry = key.split("/", 2)
        if part == name:
            state.setdefault(param, {})[entry] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def gather_state(model: torch.nn.Module, optimizers: dict) -> tuple[dict, dict]:
    """Full (unsharded) weights and optimizer states keyed by parameter name, on CPU.

    A collective under FSDP2 (every rank calls it; rank 0 receives the tensors). Checked
    on CPU/gloo with torch 2.13, after training steps and after validation forwards.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    return weights, {k: get_optimizer_state_dict(model, o, options=options)
                     for k, o in optimizers.items()}


def save_checkpoint(folder: str | Path, step: int, weights: dict[str, Tensor],
                    optimizer_states: dict[str, dict], schedulers: dict, record: dict,
                    average: dict[str, Tensor] | None = None) -> Path:
    """Commit a checkpoint of `step` under `folder`; returns its directory. `average`: the
    weight average's state (`ema.safetensors`), if the run keeps one.

    Files go to `step_XXXXXXXX/` first (each atomically), then `latest.json` names them
    with their SHA-256; older step folders are removed after that. A crash at any point
    leaves the previous checkpoint loadable.
    """
    folder = Path(folder)
    target, latest = folder / f"step_{step:08d}", folder / "latest.json"
    if latest.is_file() and read_json(latest).get("folder") == target.name:
        return target  # already committed: never rewrite a committed folder
    if target.exists():  # a partial folder from an interrupted save of this step
        shutil.rmtree(target)
    state = {"step": step, **record, "optimizers": {},
             "schedulers": {k: s.state_dict() for k, s in schedulers.items()}}
    tensors: dict[str, Tensor] = {}
    for name, optimizer_state in optimizer_states.items():
        part, state["optimizers"][name] = flatten_optimizer(name, optimizer_state)
        tensors.update(part)
    write_tensors(target / "model.safetensors", weights)
    write_tensors(target / "optimizer.safetensors", tensors)
    write_tensors(target / "rng.safetensors", {"torch": torch.get_rng_state()})
    if average is not None:
        write_tensors(target / "ema.safetensors", average)
    write_json(target / "trainer.json", state)
    hashes = {f.name: sha256(f) for f in sorted(target.iterdir())}
    write_json(latest, {"step": step, "folder": target.name, "sha256": hashes})
    for old in folder.glob("step_*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(folder: str | Path) -> tuple[dict, dict[str, dict[str, Tensor]]]:
    """The committed checkpoint under `folder`: (trainer state, {file stem: tensors}).

    Verifies each file against `latest.json`'s SHA-256 and reads only JSON and
    safetensors (nothing is unpickled). Raises CheckpointError naming the bad file.
    """
    folder = Path(folder)
    latest = read_json(folder / "latest.json")
    if not {"folder", "sha256"} <= set(latest):
        raise CheckpointError(f"{folder / 'latest.json'}: expected keys 'folder' and 'sha256', "
                              f"got {sorted(latest)}")
    target = folder / latest["folder"]
    for filename, expected in latest["sha256"].items():
        path = target / filename
        if not path.is_file():
            raise CheckpointError(f"{path}: expected a file (listed in latest.json), found none")
        found = sha256(path)
        if found != expected:
            raise CheckpointError(f"{path}: expected SHA-256 {expected[:12]}... (latest.json), "
                                  f"got {found[:12]}...: the file is truncated or corrupted")
    tensors = {p.stem: read_tensors(p) for p in sorted(target.glob("*.safetensors"))}
    return read_json(target / "trainer.json"), tensors


def restore(folder: Path, model: torch.nn.Module, optimizers: dict, schedulers: dict,
            average: AveragedModel | None) -> int:
    """Load the committed checkpoint into a (possibly sharded) model, its optimizers, its
    schedulers, its weight average and the torch RNG; returns the step it was taken at."""
    state, tensors = load_checkpoint(folder)
    if ("ema" in tensors) != (average is not None):
        saved = state["train_config"].get("ema_decay")
        raise CheckpointError(f"resume: {folder} was written with ema_decay={saved}; expected "
                              f"the same setting, got a run "
                              f"{'without' if average is None else 'with'} a weight average")
    expected = json.loads(json.dumps(model.config.to_dict()))  # tuples -> lists, as saved
    if state["model_config"] != expected:
        raise CheckpointError(f"resume: {folder} holds a model with config "
                              f"{state['model_config']}, expected {expected}")
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, tensors["model"], options=options)
    for name, optimizer in optimizers.items():
        saved = unflatten_optimizer(name, tensors["optimizer"], state["optimizers"][name])
        set_optimizer_state_dict(model, optimizer, saved, options=options)
        schedulers[name].load_state_dict(state["schedulers"][name])
    if average is not None:
        average.load_state_dict(tensors["ema"])
    torch.set_rng_state(tensors["rng"]["torch"])
    return state["step"]
