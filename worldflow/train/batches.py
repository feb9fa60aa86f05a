"""What a step trains on: clips with their noise, and (frame, next frame) pairs for the heads.

Every batch is drawn by a generator seeded by (seed, stream, step) alone, so a resumed run
draws exactly what a straight one would, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data import ClipDataset

BATCH_STREAM, VAL_STREAM, HEADS_STREAM = 0, 1, 2  # independent streams of (seed, step) generators


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


def transitions(tensordict, episodes: list[int]) -> tuple[Tensor, Tensor]:
    """Indices i of the pairs (frame i, frame i + 1) inside `episodes`, and those of them
    whose transition terminated the episode (`terminated[i]`)."""
    episode = tensordict["episode"]
    same = (episode[:-1] == episode[1:]) & torch.isin(episode[:-1], torch.tensor(episodes))
    pairs = same.nonzero()[:, 0]
    return pairs, pairs[tensordict["terminated"][pairs]]


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


def first_frames(tensordict, episodes: list[int], limit: int = 64) -> Tensor:
    """The first frame of each of up to `limit` episodes, uint8 (K, H, W, 3): where the
    trained model's dreams start (`WorldFlow.start_frames`)."""
    first = (tensordict["step"] == 0) & torch.isin(tensordict["episode"], torch.tensor(episodes))
    return tensordict["frames"][first][:limit].clone()
