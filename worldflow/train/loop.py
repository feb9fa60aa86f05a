"""The training loop: build or load the model, step, validate, checkpoint, write the model."""

from __future__ import annotations

import csv
import dataclasses
import gc
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..checkpoint import load_weights, read_pretrained
from ..codec import LOG_PIXEL_SCALE
from ..config import preset
from ..errors import ConfigError
from ..model import WorldFlow
from .checkpoints import gather_state, restore, save_checkpoint
from .config import TrainConfig, check_config, command_line
from .distributed import average_gradients, init_distributed, mean_over_ranks, shard
from .losses import compute_gradients
from .optim import make_optimizers, make_schedulers, part_of
from .sources import make_source


def build_model(cfg: TrainConfig, source) -> WorldFlow:
    """The preset (or `cfg.init`'s config) with `cfg.model` overrides, shaped by the data
    (`source.model_fields()`: frames, actions, heads); with `cfg.init`, its `init_parts`
    weights loaded."""
    if cfg.init:
        return _init_model(cfg, source)
    overrides = dict(cfg.model)
    needed = source.model_fields()
    size = needed["frame_size"]
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
    config = preset(cfg.preset, **{**overrides, **needed})
    if hasattr(source, "text_fields"):
        config = dataclasses.replace(config, **source.text_fields(config))
    return WorldFlow(config)


def _init_model(cfg: TrainConfig, source) -> WorldFlow:
    """`cfg.init`'s config with `cfg.model` overrides; weights of `cfg.init_parts` loaded."""
    path, config, tensors, info = read_pretrained(cfg.init, "init")
    config = dataclasses.replace(config, **cfg.model)
    if cfg.noise_std is not None:
        config = dataclasses.replace(config, noise_std=cfg.noise_std)
    needed = source.model_fields()
    for name in ("frame_size", "num_actions", "action_dim"):
        if getattr(config, name) != needed[name]:
            raise ConfigError(f"init: {cfg.init!r} has {name}={getattr(config, name)}, the "
                              f"dataset {cfg.data!r} needs {needed[name]}")
    model = WorldFlow(dataclasses.replace(config, task_heads=needed["task_heads"]))
    load_weights(model, tensors, path, keep=lambda key: part_of(key) in cfg.init_parts)
    model.info = {"init": {"model": str(cfg.init), **info}}
    return model


LOG_FIELDS = ("step", "lr", "loss", "flow_loss", "denoiser_loss", "reward_loss",
              "termination_loss", "train_bits_per_dim", "seconds_per_step", "val_bits_per_dim",
              "noise_floor_bits_per_dim", "val_excess_bits_per_dim", "val_reward_mse",
              "val_termination_balanced_accuracy", "val_text_gain_bits_per_dim")


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


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a world model on a collected dataset; returns the run's summary."""
    rank, world, device, started = init_distributed(cfg.device)
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
    source = make_source(cfg)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, source).to(device)
    if cfg.fsdp:
        shard(model, world)
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
        figures = source.evaluate(scored, rank, world)
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
        batch = source.batch(step, rank, world)
        losses = compute_gradients(model, batch, sigma, batch.pop("pairs", None), tuple(optimizers))
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
            row = mean_over_ranks(losses)
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
    final = mean_over_ranks(losses) if losses else {}
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
        plain.start_frames = source.start_frames()
        plain.save_pretrained(out / "model", extra={
            "env_id": model.config.env_id, "data": source.record(),
            "training": {"command": command_line(cfg), "config": dataclasses.asdict(cfg),
                         "steps": step, "validation": figures, **model.info},
        })
        log.close()
    return summary


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
