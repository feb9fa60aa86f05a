"""Training: noise-augmented flow likelihood, flow-score matching and task heads.

    worldflow train preset=small data=data/cartpole out=runs/cartpole

One step on a batch of clips (frames uint8 (B, T, H, W, 3); `actions[:, t]` is taken
after frame t and conditions frame t + 1; `rewards[t]`, `terminated[t]` label frame t + 1):

    x        = frames_to_model(frames) + sigma * eps        (B, T, C, H, W), model units
    flow     = reference_loss(flow_forward(x, actions))       NLL per dim, nats, no 0.5 log 2 pi
    target   = sigma * d(total NLL of each clip) / dx         the flow's scaled score
    denoiser = mse(denoiser(tokens of x), target)             flow-score matching
    heads    = mse(reward(x_t, x_t+1), rewards[t])            on clean frame pairs of
             + bce(terminated(x_t, x_t+1), terminated[t])     their own batch, half of them
                                                              terminal transitions

The flow, the denoiser and the heads each have their own AdamW (linear warmup, then cosine
decay to `min_lr_ratio`) and gradient clipping. Batches and noise come from generators
seeded by (seed, step), so resuming needs no sampler state and is exact. The heads draw
their pairs from a stream of their own: terminations are rare (one per failed episode), so
a `heads_terminal_fraction` of each heads batch is terminal transitions.

`ema_decay=` keeps an exponential moving average of the weights beside them
(`torch.optim.swa_utils.AveragedModel`): ema = w after the first step, then
ema = decay * ema + (1 - decay) * w after each. Validation scores the average and `model/`
holds it; the checkpoint keeps both, so resuming stays exact.

A run can start from a trained model (`init=`, e.g. the flow of an earlier run) and train
only some parts (`train_parts=`): a new denoiser and heads on a frozen flow are one such run.
Its optimizers start afresh, and their warmup to the peak first moves the model off what it
knew, so a continuation wants a lower `lr` than a first run (the shipped model's recipe in
docs/experiments.md).

Under `torchrun` each rank takes its slice of the global batch and the gradients are
averaged across ranks (DDP's all-reduce, over gloo on CPU), so N ranks equal one process
with the same global batch; `fsdp=true` shards the blocks with FSDP2 instead. Only rank 0
writes logs and checkpoints. `torch.distributed` is touched only when WORLD_SIZE > 1.

Checkpoints (`out/checkpoint/`): a committed step lives in `step_XXXXXXXX/` (weights,
optimizer state flattened into safetensors, RNG state, and a JSON file with everything
else); `latest.json`, written last, names it with each file's SHA-256. Every file is
written atomically, nothing is pickled, and a truncated or corrupted file raises
`CheckpointError`.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import json
import math
import os
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .checkpoint import (
    load_weights,
    read_json,
    read_pretrained,
    read_tensors,
    sha256,
    write_json,
    write_tensors,
)
from .codec import LOG_PIXEL_SCALE, frames_to_model
from .config import preset
from .data import ClipDataset, load_dataset
from .errors import CheckpointError, ConfigError
from .metrics import noise_floor_bits
from .model import WorldFlow

PARTS = ("flow", "denoiser", "heads")  # one optimizer each
BATCH_STREAM, VAL_STREAM, HEADS_STREAM = 0, 1, 2  # independent streams of (seed, step) generators


@dataclass
class TrainConfig:
    """Every knob of a training run (`worldflow train key=value ...`)."""

    preset: str = "tiny"  # model preset: "tiny", "small", "starflow-v-7b"
    model: dict = field(default_factory=dict)  # ModelConfig overrides: +model.deep_depth=2
    data: str = "data/cartpole"  # dataset folder written by `worldflow collect`
    out: str = "runs/worldflow"  # run folder: log.csv, tb/, checkpoint/, model/
    steps: int = 2000  # total optimizer steps (a resumed run continues up to this)
    batch_size: int = 16  # global: split evenly over the ranks
    clip_len: int = 8  # frames per training clip
    val_fraction: float = 0.1  # fraction of episodes held out
    lr: float = 3e-4  # flow peak learning rate
    denoiser_lr: float = 3e-4
    heads_lr: float = 1e-3
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps
    lr_decay_steps: int | None = None  # cosine horizon; None: steps
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of the peak
    weight_decay: float = 1e-4  # on matrices only
    grad_clip: float = 1.0  # max gradient norm, per optimizer
    ema_decay: float | None = None  # average the weights, ema = decay * ema + (1 - decay) * w
    # after each step; validation and model/ then use the average (None: the last weights)
    noise_std: float | None = None  # training noise sigma, model units; None: the preset's
    val_every: int = 250
    val_batches: int = 4
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0  # weight init, batch order, noise
    split_seed: int = 0  # the train/val episode split and the validation batches: keep it across
    # runs that continue one another (init=), so validation stays held out and comparable
    resume: bool = False  # continue from out/checkpoint (exactly)
    init: str | None = None  # start from a trained model (a shipped name or a model folder)
    init_parts: list[str] = field(default_factory=lambda: list(PARTS))  # loaded from `init`
    train_parts: list[str] = field(default_factory=lambda: list(PARTS))  # the rest are frozen
    heads_batch: int = 64  # global (frame, next frame) pairs a step for the task heads
    heads_terminal_fraction: float = 0.5  # of them, drawn from terminal transitions
    threads: int | None = None  # torch CPU threads; None: torch's default
    fsdp: bool = False  # shard with FSDP2 (large presets, torchrun only)
    device: str = "cpu"
    progress: bool = True  # tqdm bar on rank 0


# ------------------------------------------------------------------------------ set-up
def build_model(cfg: TrainConfig, meta: dict) -> WorldFlow:
    """The preset (or `cfg.init`'s config) with `cfg.model` overrides, shaped by the
    dataset's meta (frames, actions); with `cfg.init`, its `init_parts` weights loaded."""
    if cfg.init:
        return _init_model(cfg, meta)
    overrides = dict(cfg.model)
    size = tuple(meta["frame_size"])
    if "frame_size" in overrides and tuple(overrides["frame_size"]) != size:
        raise ConfigError(
            f"model.frame_size: the dataset {cfg.data!r} has frames of {list(size)}, "
            f"got an override of {list(overrides['frame_size'])}"
        )
    if cfg.noise_std is not None:
        if overrides.get("noise_std", cfg.noise_std) != cfg.noise_std:
            raise ConfigError(f"noise_std: got {cfg.noise_std} and model.noise_std="
                              f"{overrides['noise_std']}; expected one of them")
        overrides["noise_std"] = cfg.noise_std
    overrides.update(dataset_fields(meta), task_heads=True)
    return WorldFlow(preset(cfg.preset, **overrides))


def dataset_fields(meta: dict) -> dict:
    """The ModelConfig fields a dataset fixes: frame size, crop, env id, action space."""
    space, crop = meta["action_space"], meta.get("crop")
    discrete = space["type"] == "discrete"
    return {"frame_size": tuple(meta["frame_size"]), "crop": None if crop is None else tuple(crop),
            "env_id": meta.get("env_id"),
            "num_actions": int(space["n"]) if discrete else None,
            "action_dim": None if discrete else int(np.prod(space["shape"]))}


def part_of(name: str) -> str:
    """Which optimizer a parameter belongs to: "denoiser", "heads" or (all else) "flow"."""
    head = name.split(".")[0]
    return head if head in PARTS else "flow"


def optimizer_parts(train_parts) -> tuple[str, ...]:
    """The optimizers `train_parts` needs, in PARTS order."""
    return tuple(p for p in PARTS if p in train_parts)


def _init_model(cfg: TrainConfig, meta: dict) -> WorldFlow:
    """`cfg.init`'s config with `cfg.model` overrides; weights of `cfg.init_parts` loaded."""
    path, config, tensors, info = read_pretrained(cfg.init, "init")
    config = dataclasses.replace(config, **cfg.model)
    if cfg.noise_std is not None:
        config = dataclasses.replace(config, noise_std=cfg.noise_std)
    needed = dataset_fields(meta)
    for name in ("frame_size", "num_actions", "action_dim"):
        if getattr(config, name) != needed[name]:
            raise ConfigError(f"init: {cfg.init!r} has {name}={getattr(config, name)}, the "
                              f"dataset {cfg.data!r} needs {needed[name]}")
    model = WorldFlow(dataclasses.replace(config, task_heads=True))
    load_weights(model, tensors, path, keep=lambda key: part_of(key) in cfg.init_parts)
    model.info = {"init": {"model": str(cfg.init), **info}}
    return model


def make_optimizers(model: torch.nn.Module, cfg: TrainConfig) -> dict[str, torch.optim.AdamW]:
    """AdamW for each trained part (flow, denoiser, heads); weight decay on matrices only.
    Parameters of the other parts stop requiring gradients."""
    params = {part: {"decay": [], "no_decay": []} for part in optimizer_parts(cfg.train_parts)}
    for name, p in model.named_parameters():
        trained = part_of(name) in params
        p.requires_grad_(trained)
        if trained:
            params[part_of(name)]["no_decay" if p.dim() < 2 else "decay"].append(p)
    lrs = {"flow": cfg.lr, "denoiser": cfg.denoiser_lr, "heads": cfg.heads_lr}
    return {
        part: torch.optim.AdamW([{"params": group["decay"], "weight_decay": cfg.weight_decay},
                                 {"params": group["no_decay"], "weight_decay": 0.0}], lr=lrs[part])
        for part, group in params.items()
    }


def lr_factor(step: int, warmup: int, horizon: int, floor: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 down to `floor` at `horizon`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(horizon - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_schedulers(optimizers: dict, cfg: TrainConfig) -> dict:
    horizon = cfg.lr_decay_steps or cfg.steps

    def schedule(step: int) -> float:  # a plain function: LambdaLR's state stays JSON
        return lr_factor(step, cfg.warmup_steps, horizon, cfg.min_lr_ratio)

    return {k: torch.optim.lr_scheduler.LambdaLR(o, schedule) for k, o in optimizers.items()}


def transitions(tensordict, episodes: list[int]) -> tuple[Tensor, Tensor]:
    """Indices i of the pairs (frame i, frame i + 1) inside `episodes`, and those of them
    whose transition terminated the episode (`terminated[i]`)."""
    episode = tensordict["episode"]
    same = (episode[:-1] == episode[1:]) & torch.isin(episode[:-1], torch.tensor(episodes))
    pairs = same.nonzero()[:, 0]
    return pairs, pairs[tensordict["terminated"][pairs]]


def first_frames(tensordict, episodes: list[int], limit: int = 64) -> Tensor:
    """The first frame of each of up to `limit` episodes, uint8 (K, H, W, 3): where the
    trained model's dreams start (`WorldFlow.start_frames`)."""
    first = (tensordict["step"] == 0) & torch.isin(tensordict["episode"], torch.tensor(episodes))
    return tensordict["frames"][first][:limit].clone()


# ------------------------------------------------------------------------------ batches
def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, stream, step)."""
    state = np.random.SeedSequence([seed, stream, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def sample_batch(clips: ClipDataset, batch_size: int, gen: torch.Generator, rank: int = 0,
                 world: int = 1) -> dict[str, Tensor]:
    """This rank's slice of a global batch of clips, with its noise eps (B, T, C, H, W)."""
    index = torch.randint(len(clips), (batch_size,), generator=gen)
    part = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    items = [clips[int(i)] for i in index[part]]
    t, h, w, c = items[0]["frames"].shape
    noise = torch.randn((batch_size, t, c, h, w), generator=gen)[part]
    return {**{key: torch.stack([item[key] for item in items]) for key in items[0]},
            "noise": noise}


def sample_pairs(tensordict, pairs: tuple[Tensor, Tensor], batch_size: int, terminal_fraction: float,
                 gen: torch.Generator, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
    """This rank's slice of a global batch of (frame, next frame) pairs for the heads:
    `round(terminal_fraction * batch_size)` terminal transitions, the rest uniform."""
    every, terminal = pairs
    k = round(terminal_fraction * batch_size) if len(terminal) else 0
    index = torch.cat([terminal[torch.randint(len(terminal), (k,), generator=gen)],
                       every[torch.randint(len(every), (batch_size - k,), generator=gen)]])
    return gather_pairs(tensordict, index[rank * batch_size // world:(rank + 1) * batch_size // world])


def gather_pairs(tensordict, index: Tensor) -> dict[str, Tensor]:
    """The pairs (frame i, frame i + 1) for i in `index`, with the transition's labels."""
    return {"previous": tensordict["frames"][index], "frames": tensordict["frames"][index + 1],
            "rewards": tensordict["rewards"][index], "terminated": tensordict["terminated"][index]}


# ------------------------------------------------------------------------------ one step
def heads_losses(model: WorldFlow, pairs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Reward MSE and termination BCE over a batch of clean (frame t, frame t + 1) pairs."""
    device = model.device
    reward, logit = model.heads(frames_to_model(pairs["previous"].to(device)),
                                frames_to_model(pairs["frames"].to(device)))
    return (F.mse_loss(reward, pairs["rewards"].to(device, reward.dtype)),
            F.binary_cross_entropy_with_logits(logit, pairs["terminated"].to(device, logit.dtype)))


def compute_gradients(model: WorldFlow, batch: dict, sigma: float, pairs: dict,
                      parts: tuple[str, ...] = PARTS) -> dict:
    """Forward once, fill every parameter's .grad; returns the (detached) losses.

    `parts` are the optimizers that step (`optimizer_parts`). The score target is
    d(flow loss)/dx times x.numel() * sigma, exactly `denoiser.score_target`, but read from
    x.grad after the backward that trains the flow instead of a second backward through the
    flow (a quarter of the step's cost). Without the denoiser no input gradient is taken,
    so a frozen half of the flow is run without building a graph.
    """
    if "flow" not in parts and "denoiser" not in parts:  # heads alone: no flow pass needed
        reward, termination = heads_losses(model, pairs)
        (reward + termination).backward()
        return {"reward_loss": reward.detach(), "termination_loss": termination.detach()}
    device = model.device
    x_clean = frames_to_model(batch["frames"].to(device))
    x = (x_clean + sigma * batch["noise"].to(device)).requires_grad_("denoiser" in parts)
    z, logdets, _ = model.flow_forward(x, batch["actions"].to(device))
    flow = model.reference_loss(z, logdets)
    flow.backward()  # a frozen flow: only x.grad
    losses = {"flow_loss": flow}
    if "denoiser" in parts:
        target = model.codec.to_tokens(x.grad * x.numel() * sigma)
        losses["denoiser_loss"] = F.mse_loss(model.denoiser_tokens(x.detach()), target)
    losses["reward_loss"], losses["termination_loss"] = heads_losses(model, pairs)
    rest = sum(v for k, v in losses.items() if k != "flow_loss")
    if rest.requires_grad:  # some of the denoiser and heads train
        rest.backward()
    return {k: v.detach() for k, v in losses.items()}


def average_gradients(params: list[Tensor]) -> None:
    """Mean of each gradient over the ranks, in one all-reduce: DDP's arithmetic.

    The DDP wrapper reduces from hooks armed by its `forward` for one backward; this step
    runs two (the flow's, whose input gradient is the denoiser's target, then the
    denoiser's and heads'), so the reduction is explicit.
    """
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(avg.view_as(g))


# ------------------------------------------------------------------------------ validation

@torch.no_grad()
def evaluate(model: WorldFlow, clips: ClipDataset, batch_size: int, batches: int, seed: int,
             tensordict, pairs: Tensor, rank: int = 0, world: int = 1) -> dict:
    """Validation figures on fixed batches with fixed noise (the same at every call).

    bits/dim in the 8-bit convention: (NLL per dim in model units + log 127.5) / ln 2, for
    the noisy clips x + sigma * eps, reported beside the noise floor (the noise's own
    entropy) and the excess above it. The heads are scored on every validation pair
    `pairs` (each rank a strided share): reward MSE, and the termination balanced accuracy,
    the mean of the true positive and true negative rates of `logit > 0` (None if a class
    is absent).
    """
    sigma, dims = model.config.noise_std, model.config.dims_per_frame
    # nll per dim summed over frames, frames, tp, fn, tn, fp, reward squared error, pairs
    sums = torch.zeros(8, dtype=torch.float64, device=model.device)
    for i in range(batches):
        batch = sample_batch(clips, batch_size, step_generator(seed, i, VAL_STREAM), rank, world)
        x = frames_to_model(batch["frames"].to(model.device))
        nll = model.frame_nll(x + sigma * batch["noise"].to(x.device),
                              batch["actions"].to(x.device))  # (B, T) nats, model units
        sums[:2] += torch.tensor([float(nll.sum()) / dims, nll.numel()], dtype=sums.dtype)
    for chunk in pairs[rank::world].split(1024):
        batch = {k: v.to(model.device) for k, v in gather_pairs(tensordict, chunk).items()}
        reward, logit = model.heads(frames_to_model(batch["previous"]), frames_to_model(batch["frames"]))
        label, pred = batch["terminated"], logit > 0
        error = reward - batch["rewards"]
        sums[2:] += torch.tensor([
            int((pred & label).sum()), int((~pred & label).sum()), int((~pred & ~label).sum()),
            int((pred & ~label).sum()), float(error.pow(2).sum()), label.numel(),
        ], dtype=sums.dtype, device=sums.device)
    if dist.is_initialized():
        dist.all_reduce(sums)
    nll_dim, frames, tp, fn, tn, fp, sq_err, pairs = sums.tolist()
    bits = (nll_dim / frames + LOG_PIXEL_SCALE) / math.log(2)
    floor = noise_floor_bits(sigma)
    balanced = 0.5 * (tp / (tp + fn) + tn / (tn + fp)) if tp + fn and tn + fp else None
    return {"val_bits_per_dim": bits, "noise_floor_bits_per_dim": floor,
            "val_excess_bits_per_dim": bits - floor, "val_reward_mse": sq_err / pairs,
            "val_termination_balanced_accuracy": balanced, "val_terminations": int(tp + fn)}


# ------------------------------------------------------------------------------ checkpoints
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


# ------------------------------------------------------------------------------ logging
LOG_FIELDS = ("step", "lr", "loss", "flow_loss", "denoiser_loss", "reward_loss",
              "termination_loss", "train_bits_per_dim", "seconds_per_step", "val_bits_per_dim",
              "noise_floor_bits_per_dim", "val_excess_bits_per_dim", "val_reward_mse",
              "val_termination_balanced_accuracy")


class RunLog:
    """`log.csv` and TensorBoard under the run folder; on resume, rows past `step` go."""

    def __init__(self, out: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "log.csv"
        rows = []
        if step and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writeheader()
            csv.DictWriter(f, LOG_FIELDS).writerows(rows)
        self.tb = SummaryWriter(str(out / "tb"), purge_step=step or None)

    def write(self, step: int, row: dict) -> None:
        row = {k: v for k, v in row.items() if k in LOG_FIELDS}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow({**row, "step": step})
        for key, value in row.items():
            if value is not None:
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def command_line(cfg: TrainConfig) -> str:
    """`worldflow train k=v ...` that reproduces this run from scratch (training is
    deterministic, so a resumed run and a straight one end identical)."""
    def value(v) -> str:
        if isinstance(v, bool) or v is None:
            return {True: "true", False: "false", None: "null"}[v]
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(value(x) for x in v) + "]"
        return str(v)

    default = TrainConfig()
    parts = ["worldflow", "train"]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "model":
            parts += [f"+model.{k}={value(x)}" for k, x in v.items()]
        elif f.name == "preset" and cfg.init:
            continue  # the model comes from `init`
        elif f.name in ("preset", "data", "out", "steps") or (
                f.name not in ("resume", "progress") and v != getattr(default, f.name)):
            parts.append(f"{f.name}={value(v)}")
    return shlex.join(parts)


# ------------------------------------------------------------------------------ the loop
def _distributed(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group)."""
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        started = True
    if not dist.is_initialized():
        return 0, 1, torch.device(device), started
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return rank, world, torch.device(device), started


def _shard(model: WorldFlow, world: int) -> None:
    """FSDP2: each flow block, the denoiser and the heads are sharded units, the model the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # FSDP2 warns about every module that returns a view (in-place edits of one would skip
    # its all-gather); no output is edited in place here, and the tests hold FSDP2 against
    # one process.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(model.device.type, (world,))
    for block in [*model.shallow_blocks, model.deep_block, model.denoiser, model.heads]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    register_fsdp_forward_method(model, "flow_forward")  # called in place of forward


def check_config(cfg: TrainConfig, world: int) -> None:
    positive = ("steps", "batch_size", "val_every", "val_batches", "checkpoint_every",
                "log_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {getattr(cfg, name)}")
    if cfg.clip_len < 2:
        raise ConfigError(f"clip_len: expected >= 2 (heads learn from frame pairs), "
                          f"got {cfg.clip_len}")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size: expected a multiple of the {world} ranks, "
                          f"got {cfg.batch_size}")
    for name in ("train_parts", "init_parts"):
        unknown = [p for p in getattr(cfg, name) if p not in PARTS]
        if unknown or (name == "train_parts" and not getattr(cfg, name)):
            raise ConfigError(f"{name}: expected a non-empty list of {list(PARTS)}, "
                              f"got {list(getattr(cfg, name))}")
    if cfg.heads_batch < 1 or cfg.heads_batch % world:
        raise ConfigError(f"heads_batch: expected a positive multiple of the {world} ranks, "
                          f"got {cfg.heads_batch}")
    if not 0.0 <= cfg.heads_terminal_fraction <= 1.0:
        raise ConfigError(f"heads_terminal_fraction: expected a number in [0, 1], "
                          f"got {cfg.heads_terminal_fraction}")
    if cfg.ema_decay is not None and not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay: expected a number in [0, 1) or null, got {cfg.ema_decay}")
    if cfg.ema_decay is not None and cfg.fsdp:
        raise ConfigError(f"ema_decay: expected null with fsdp=true (the average is not "
                          f"sharded), got {cfg.ema_decay}")
    if cfg.fsdp and world == 1:
        raise ConfigError("fsdp: expected a torchrun launch with WORLD_SIZE > 1, got one process")


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


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a world model on a collected dataset; returns the run's summary."""
    rank, world, device, started = _distributed(cfg.device)
    try:
        return _train(cfg, rank, world, device)
    finally:
        if started:
            # FSDP2's hooks hold the sharded model, and with it the process group, in
            # reference cycles: collect them first, so that the group is freed (its gloo
            # threads joined) here, while every rank is up, not at interpreter exit
            gc.collect()
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> dict:
    check_config(cfg, world)
    out, folder = Path(cfg.out), Path(cfg.out) / "checkpoint"
    tensordict, meta = load_dataset(cfg.data)
    train_clips = ClipDataset(tensordict, cfg.clip_len, "train", cfg.val_fraction, cfg.split_seed)
    val_clips = ClipDataset(tensordict, cfg.clip_len, "val", cfg.val_fraction, cfg.split_seed)
    if not len(train_clips) or not len(val_clips):
        raise ConfigError(f"data: expected train and val clips of {cfg.clip_len} frames in "
                          f"{cfg.data!r}, got {len(train_clips)} and {len(val_clips)}")
    train_pairs = transitions(tensordict, train_clips.episodes)
    val_pairs, _ = transitions(tensordict, val_clips.episodes)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, meta).to(device)
    if cfg.fsdp:
        _shard(model, world)
    optimizers = make_optimizers(model, cfg)
    schedulers = make_schedulers(optimizers, cfg)
    average = None if cfg.ema_decay is None else AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
    groups = {k: [p for g in o.param_groups for p in g["params"]] for k, o in optimizers.items()}
    resuming = cfg.resume and (folder / "latest.json").is_file()
    if cfg.resume and not resuming and rank == 0:
        warnings.warn(f"resume: no checkpoint at {folder}; starting from step 0", stacklevel=2)
    step = start = restore(folder, model, optimizers, schedulers, average) if resuming else 0
    sigma = model.config.noise_std
    record = {"model_config": model.config.to_dict(), "train_config": dataclasses.asdict(cfg),
              "world_size": world}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, step) if rank == 0 else None

    def checkpoint() -> tuple[dict, dict]:
        weights, optimizer_states = gather_state(model, optimizers)  # a collective
        if rank == 0:
            save_checkpoint(folder, step, weights, optimizer_states, schedulers, record,
                            None if average is None else average.state_dict())
        return weights, optimizer_states

    def validate() -> dict:
        scored = model if average is None else average.module
        scored.eval()
        figures = evaluate(scored, val_clips, cfg.batch_size, cfg.val_batches, cfg.split_seed,
                           tensordict, val_pairs, rank, world)
        if cfg.fsdp:  # FSDP2 keeps the root unsharded after a forward without backward
            model.reshard()
        model.train()
        if log is not None:
            log.write(step, figures)
        return figures

    figures = validate() if step == 0 else {}
    seconds, losses = [], {}
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0 or not cfg.progress,
               dynamic_ncols=True, desc="train")
    while step < cfg.steps:
        tic = time.perf_counter()
        batch = sample_batch(train_clips, cfg.batch_size,
                             step_generator(cfg.seed, step, BATCH_STREAM), rank, world)
        pairs = sample_pairs(tensordict, train_pairs, cfg.heads_batch, cfg.heads_terminal_fraction,
                             step_generator(cfg.seed, step, HEADS_STREAM), rank, world)
        losses = compute_gradients(model, batch, sigma, pairs, tuple(optimizers))
        if world > 1 and not cfg.fsdp:
            average_gradients([p for params in groups.values() for p in params])
        for name, optimizer in optimizers.items():
            torch.nn.utils.clip_grad_norm_(groups[name], cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedulers[name].step()
        if average is not None:
            average.update_parameters(model)
        step += 1
        seconds.append(time.perf_counter() - tic)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = _mean_over_ranks(losses)
            row.update(loss=sum(row.values()), train_bits_per_dim=_bits(row.get("flow_loss")),
                       lr=next(iter(optimizers.values())).param_groups[0]["lr"],
                       seconds_per_step=float(np.mean(seconds[-cfg.log_every:])))
            if log is not None:
                log.write(step, row)
            shown = {"loss": f"{row['loss']:.4f}"}
            if "val_bits_per_dim" in figures:  # a resumed run has none until it validates
                shown["val_bpd"] = f"{figures['val_bits_per_dim']:.3f}"
            bar.set_postfix(shown)
        if step % cfg.val_every == 0 or step == cfg.steps:
            figures = validate()
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            checkpoint()
    bar.close()

    figures = figures or validate()  # a resumed run with no steps left
    weights, _ = checkpoint()
    final = _mean_over_ranks(losses) if losses else {}
    summary = {
        "steps": step, "steps_this_run": step - start, "world_size": world,
        "train_flow_loss": final.get("flow_loss"),
        "train_loss": sum(final.values()) if final else None, **figures,
        "seconds_per_step": float(np.mean(seconds[1:] or seconds)) if seconds else None,
        "out": str(out), "checkpoint": str(folder), "model": str(out / "model"),
        "log": str(out / "log.csv"), "tensorboard": str(out / "tb"),
    }
    if rank == 0:
        plain = WorldFlow(model.config)
        plain.load_state_dict(weights if average is None else average.module.state_dict())
        plain.start_frames = first_frames(tensordict, train_clips.episodes)
        plain.save_pretrained(out / "model", extra={
            "env_id": model.config.env_id,
            "data": {"path": cfg.data, **{k: meta.get(k) for k in ("episodes", "frames", "policy")},
                     "chunks": [{k: v for k, v in chunk.items() if k not in ("seeds", "episode_ids")}
                                for chunk in meta.get("chunks", [])]},
            "training": {"command": command_line(cfg), "config": dataclasses.asdict(cfg),
                         "steps": step, "validation": figures, **model.info},
        })
        log.close()
    return summary


def _mean_over_ranks(losses: dict[str, Tensor]) -> dict[str, float]:
    values = torch.stack(list(losses.values())).double()
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(losses, values.tolist()))


def _bits(loss_per_dim: float | None) -> float | None:
    """Reference loss (model units, no 0.5 log 2 pi) -> bits/dim, 8-bit convention."""
    if loss_per_dim is None:
        return None
    return (loss_per_dim + 0.5 * math.log(2 * math.pi) + LOG_PIXEL_SCALE) / math.log(2)


def run(cfg: TrainConfig) -> dict:
    """CLI entry point: `train` with `cfg.threads` CPU threads (restored afterwards)."""
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)
