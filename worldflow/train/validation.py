"""Validation figures: bits/dim over held-out clips beside the noise floor, the heads' scores."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from ..codec import LOG_PIXEL_SCALE, frames_to_model
from ..data import ClipDataset
from ..metrics import noise_floor_bits
from ..model import WorldFlow
from .batches import (
    VAL_STREAM,
    gather_pairs,
    sample_batch,
    step_generator,
)


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
