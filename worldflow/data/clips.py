"""Fixed-length training clips cut from a collected dataset, split by episode.

A clip is ``clip_len`` consecutive frames of one episode with the actions taken after each
(``actions[t]`` conditions frame ``t + 1``; the last action of a clip is unused by a model
that sees only the clip, and is the filler action when the clip ends an episode). Every
window of every episode at least ``clip_len`` frames long is a clip (stride 1).

The split assigns whole episodes: episode ``e`` goes to validation when a uniform draw from
``numpy.random.default_rng([seed, e])`` falls below ``val_fraction``. Each episode's side
depends only on ``(seed, e)``, so extending a dataset with new chunks never moves an old
episode from validation into training.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tensordict import TensorDict
from torch.utils.data import Dataset

from worldflow.data.collect import load_dataset

SPLITS = ("train", "val")
CLIP_KEYS = ("frames", "actions", "terminated", "rewards")


class ClipDataset(Dataset):
    """Windows of ``clip_len`` frames that never cross an episode boundary.

    Args:
        data: a dataset folder written by ``collect``, or the TensorDict ``load_dataset``
            returns (batch size ``(N,)``, keys ``frames``, ``actions``, ``terminated``,
            ``rewards``, ``episode``).
        clip_len: frames per clip; shorter episodes are skipped.
        split: ``"train"`` or ``"val"``.
        val_fraction: expected fraction of episodes in validation, in ``[0, 1]``. With at
            least two eligible episodes and ``0 < val_fraction < 1`` both sides get one.
        seed: seed of the episode split.

    Items are dicts: ``frames`` uint8 ``(T, H, W, 3)``, ``actions`` int64 ``(T,)`` or
    float32 ``(T, A)``, ``terminated`` bool ``(T,)``, ``rewards`` float32 ``(T,)``.

    Example:
        >>> train = ClipDataset("data/cartpole", clip_len=8)  # doctest: +SKIP
        >>> train[0]["frames"].shape  # doctest: +SKIP
        torch.Size([8, 32, 96, 3])
    """

    def __init__(
        self,
        data: str | os.PathLike | TensorDict,
        clip_len: int,
        split: str = "train",
        val_fraction: float = 0.1,
        seed: int = 0,
    ):
        if isinstance(clip_len, bool) or not isinstance(clip_len, int) or clip_len < 1:
            raise ValueError(f"clip_len: expected a positive int, got {clip_len!r}")
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction: expected a number in [0, 1], got {val_fraction!r}")
        if not isinstance(data, TensorDict):
            data, _ = load_dataset(data)
        missing = [key for key in (*CLIP_KEYS, "episode") if key not in data.keys()]
        if missing:
            raise ValueError(f"data: expected keys {CLIP_KEYS + ('episode',)}, missing {missing}")
        self.clip_len = clip_len
        self.split = split
        self._tensors = {key: data[key] for key in CLIP_KEYS}

        episode = data["episode"].numpy()  # (N,), each episode one contiguous run
        ids, lengths = np.unique(episode, return_counts=True)
        eligible = ids[lengths >= clip_len]
        in_val = _validation_episodes(eligible, val_fraction, seed)
        self._episodes = np.sort(eligible[in_val if split == "val" else ~in_val])

        # A window starting at i stays in one episode iff its first and last frames do.
        n_windows = max(len(episode) - clip_len + 1, 0)
        same = episode[:n_windows] == episode[clip_len - 1 :]
        starts = np.flatnonzero(same & np.isin(episode[:n_windows], self._episodes))
        self.starts = torch.from_numpy(starts)  # (num_clips,) indices into the dataset

    @property
    def episodes(self) -> list[int]:
        """Ids of the episodes in this split that are long enough for a clip, ascending."""
        return self._episodes.tolist()

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[index])
        return {key: value[start : start + self.clip_len] for key, value in self._tensors.items()}


def _validation_episodes(episodes: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over ``episodes``: which go to validation."""
    draws = np.array([np.random.default_rng([seed, int(e)]).random() for e in episodes])
    in_val = draws < val_fraction
    # Tiny datasets: keep both sides non-empty when the fraction asks for both.
    if len(episodes) >= 2 and 0.0 < val_fraction < 1.0:
        if not in_val.any():
            in_val[np.argmin(draws)] = True
        elif in_val.all():
            in_val[np.argmax(draws)] = False
    return in_val
