"""torchrun: process group, DDP's gradient averaging, FSDP2 sharding (all behind WORLD_SIZE > 1)."""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from ..model import WorldFlow


def init_distributed(device: str) -> tuple[int, int, torch.device, bool]:
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


def shard(model: WorldFlow, world: int) -> None:
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


def mean_over_ranks(losses: dict[str, Tensor]) -> dict[str, float]:
    values = torch.stack(list(losses.values())).double()
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(losses, values.tolist()))
