"""Tests for worldflow.data.clips: episode-split clip windows."""

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from worldflow.data.clips import ClipDataset
from worldflow.data.collect import collect

LENGTHS = [3, 10, 7, 1, 12, 8, 5, 4, 9, 6, 15, 2, 11, 5, 7, 13, 6, 8, 10, 4]


def synthetic(lengths=LENGTHS, first_id=0, action_dim=None):
    """Episodes of the given lengths; frame pixel 0 encodes (episode, step)."""
    episode = torch.cat([torch.full((n,), first_id + i) for i, n in enumerate(lengths)])
    step = torch.cat([torch.arange(n) for n in lengths])
    total = len(episode)
    frames = torch.zeros(total, 2, 3, 3, dtype=torch.uint8)
    frames[:, 0, 0, 0] = episode.to(torch.uint8)
    frames[:, 0, 0, 1] = step.to(torch.uint8)
    if action_dim is None:
        actions = step % 2
    else:
        actions = step[:, None].float().expand(total, action_dim).contiguous()
    return TensorDict(
        {
            "frames": frames,
            "actions": actions,
            "terminated": step == 0,  # arbitrary, just traceable
            "rewards": step.float(),
            "episode": episode,
        },
        batch_size=[total],
    )


@pytest.mark.parametrize("clip_len", [1, 4, 5, 9])
def test_windows_stay_inside_episodes_and_cover_them(clip_len):
    data = synthetic()
    train = ClipDataset(data, clip_len, "train", val_fraction=0.3, seed=0)
    val = ClipDataset(data, clip_len, "val", val_fraction=0.3, seed=0)
    eligible = {i for i, n in enumerate(LENGTHS) if n >= clip_len}
    assert set(train.episodes).isdisjoint(val.episodes)
    assert set(train.episodes) | set(val.episodes) == eligible
    assert train.episodes and val.episodes
    for ds in (train, val):
        assert len(ds) == sum(LENGTHS[e] - clip_len + 1 for e in ds.episodes)
        seen = set()
        for i in range(len(ds)):
            frames = ds[i]["frames"]
            episode, step = frames[:, 0, 0, 0], frames[:, 0, 0, 1]
            assert torch.all(episode == episode[0])  # never crosses an episode boundary
            assert torch.equal(step, step[0] + torch.arange(clip_len))  # consecutive frames
            assert int(episode[0]) in ds.episodes
            seen.add((int(episode[0]), int(step[0])))
        assert len(seen) == len(ds)  # every window once


def test_item_contents_line_up_with_the_data():
    data = synthetic()
    ds = ClipDataset(data, 4, val_fraction=0.0)
    assert len(ds.episodes) == sum(n >= 4 for n in LENGTHS)
    for i in (0, 7, len(ds) - 1):
        item = ds[i]
        start = int(ds.starts[i])
        assert set(item) == {"frames", "actions", "terminated", "rewards"}
        for key in item:
            assert torch.equal(item[key], data[key][start : start + 4])
    # episode ids in the data's own "episode" key agree with the windows
    episodes = data["episode"][ds.starts[:, None] + torch.arange(4)]
    assert torch.all(episodes == episodes[:, :1])


def test_split_is_deterministic_depends_on_seed_and_survives_extension():
    data = synthetic(LENGTHS * 3)
    val = lambda d, seed: ClipDataset(d, 3, "val", val_fraction=0.3, seed=seed).episodes
    assert val(data, 0) == val(data, 0)
    assert val(data, 0) != val(data, 1)
    assert 0.1 < len(val(data, 0)) / len(ClipDataset(data, 3, val_fraction=0.0).episodes) < 0.5
    extended = torch.cat([data, synthetic(LENGTHS, first_id=len(LENGTHS) * 3)])
    old = set(range(len(LENGTHS) * 3))
    assert set(val(extended, 0)) & old == set(val(data, 0))


def test_tiny_dataset_gets_both_sides():
    data = synthetic([6, 6])
    train = ClipDataset(data, 3, "train", val_fraction=0.1)
    val = ClipDataset(data, 3, "val", val_fraction=0.1)
    assert len(train.episodes) == len(val.episodes) == 1
    assert len(train) == len(val) == 4


def test_continuous_actions_and_too_long_clips():
    ds = ClipDataset(synthetic(action_dim=2), 5, val_fraction=0.0)
    item = ds[3]
    assert item["actions"].shape == (5, 2) and item["actions"].dtype == torch.float32
    assert len(ClipDataset(synthetic(), 16, val_fraction=0.0)) == 0


def test_from_a_collected_folder(tmp_path):
    collect("CartPole-v1", episodes=4, out=tmp_path, max_steps=12, policy="heuristic", progress=False)
    train = ClipDataset(tmp_path, 6, "train", val_fraction=0.25)
    val = ClipDataset(tmp_path, 6, "val", val_fraction=0.25)
    assert sorted(train.episodes + val.episodes) == [0, 1, 2, 3]
    assert len(train) + len(val) == 4 * (13 - 6 + 1)
    item = train[len(train) - 1]
    assert item["frames"].shape == (6, 32, 96, 3) and item["frames"].dtype == torch.uint8
    assert item["actions"].shape == (6,) and item["actions"].dtype == torch.int64
    assert item["terminated"].dtype == torch.bool and item["rewards"].dtype == torch.float32
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=3)))
    assert batch["frames"].shape == (3, 6, 32, 96, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"clip_len": 0}, "clip_len"), ({"split": "test"}, "split"), ({"val_fraction": 1.5}, "val_fraction")],
)
def test_bad_arguments(kwargs, name):
    args = {"data": synthetic(), "clip_len": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        ClipDataset(**args)
    with pytest.raises(ValueError, match="episode"):
        ClipDataset(synthetic().exclude("episode"), 3)


def test_split_fraction_is_roughly_right():
    ids = np.arange(2000)
    data = synthetic([3] * len(ids))
    n_val = len(ClipDataset(data, 3, "val", val_fraction=0.2).episodes)
    assert abs(n_val / len(ids) - 0.2) < 0.03
