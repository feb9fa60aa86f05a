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

Checkpoints (`out/checkpoint/`) are committed atomically and verified on load
(`worldflow.train.checkpoints`); a resumed run continues exactly.

| module          | holds                                                          |
|-----------------|----------------------------------------------------------------|
| `config`        | `TrainConfig`, its checks, the command that reproduces a run   |
| `batches`       | clips with their noise, frame pairs for the heads (seeded)     |
| `losses`        | one step's losses and gradients                                |
| `optim`         | AdamW per part, warmup + cosine                                |
| `validation`    | bits/dim over held-out clips, the heads' scores                |
| `checkpoints`   | commit, verify, restore                                        |
| `distributed`   | torchrun: DDP averaging, FSDP2 sharding                        |
| `loop`          | `train` / `run`: the loop itself                               |
"""


from .config import TrainConfig
from .loop import run, train

__all__ = ["TrainConfig", "run", "train"]
