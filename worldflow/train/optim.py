"""Optimizers and schedules: one AdamW per trained part, linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch

from .config import PARTS, TrainConfig


def part_of(name: str) -> str:
    """Which optimizer a parameter belongs to: "denoiser", "heads" or (all else) "flow"."""
    head = name.split(".")[0]
    return head if head in PARTS else "flow"


def optimizer_parts(train_parts) -> tuple[str, ...]:
    """The optimizers `train_parts` needs, in PARTS order."""
    return tuple(p for p in PARTS if p in train_parts)


def make_optimizers(model: torch.nn.Module, cfg: TrainConfig) -> dict[str, torch.optim.AdamW]:
    """AdamW for each trained part (flow, denoiser, heads); weight decay on matrices only.
    Parameters of the other parts stop requiring gradients; a part the model lacks (the
    heads of a model without task heads) gets no optimizer."""
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
        for part, group in params.items() if group["decay"] or group["no_decay"]
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
