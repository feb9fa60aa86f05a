"""One step's losses and gradients: the flow's likelihood, flow-score matching, the task heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..codec import frames_to_model
from ..model import WorldFlow
from .config import PARTS


def heads_losses(model: WorldFlow, pairs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Reward MSE and termination BCE over a batch of clean (frame t, frame t + 1) pairs."""
    device = model.device
    reward, logit = model.heads(frames_to_model(pairs["previous"].to(device)),
                                frames_to_model(pairs["frames"].to(device)))
    return (F.mse_loss(reward, pairs["rewards"].to(device, reward.dtype)),
            F.binary_cross_entropy_with_logits(logit, pairs["terminated"].to(device, logit.dtype)))


def compute_gradients(model: WorldFlow, batch: dict, sigma: float, pairs: dict | None,
                      parts: tuple[str, ...] = PARTS) -> dict:
    """Forward once, fill every parameter's .grad; returns the (detached) losses.

    `batch` holds `frames`, `noise` and `actions` or `prompts` (a text model's; the text
    encoder trains with the flow and the denoiser reads the text detached); `pairs` are the
    task heads' (frame, next frame) pairs, None for a model without heads.

    `parts` are the optimizers that step (`optimizer_parts`). The score target is
    d(flow loss)/dx times x.numel() * sigma, exactly `denoiser.score_target`, but read from
    x.grad after the backward that trains the flow instead of a second backward through the
    flow (a quarter of the step's cost). Without the denoiser no input gradient is taken,
    so a frozen half of the flow is run without building a graph.
    """
    heads = pairs is not None and model.heads is not None
    if "flow" not in parts and "denoiser" not in parts:  # heads alone: no flow pass needed
        reward, termination = heads_losses(model, pairs)
        (reward + termination).backward()
        return {"reward_loss": reward.detach(), "termination_loss": termination.detach()}
    device = model.device
    x_clean = frames_to_model(batch["frames"].to(device))
    x = (x_clean + sigma * batch["noise"].to(device)).requires_grad_("denoiser" in parts)
    actions = batch.get("actions")
    actions = None if actions is None else actions.to(device)
    text = model.encode_prompt(batch["prompts"], x.shape[0]) if "prompts" in batch else None
    z, logdets, _ = model.flow_forward(x, actions, text)
    flow = model.reference_loss(z, logdets)
    flow.backward()  # a frozen flow: only x.grad
    losses = {"flow_loss": flow}
    if "denoiser" in parts:
        target = model.codec.to_tokens(x.grad * x.numel() * sigma)
        guide = None if text is None else text.detach()
        losses["denoiser_loss"] = F.mse_loss(model.denoiser_tokens(x.detach(), guide), target)
    if heads:
        losses["reward_loss"], losses["termination_loss"] = heads_losses(model, pairs)
    rest = sum(v for k, v in losses.items() if k != "flow_loss")
    if torch.is_tensor(rest) and rest.requires_grad:  # some of the denoiser and heads train
        rest.backward()
    return {k: v.detach() for k, v in losses.items()}
