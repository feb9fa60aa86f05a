"""Tests for worldflow.data.collect: rollouts into a TensorDict memmap dataset."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflow.data.collect import collect, load_dataset
from worldflow.data.preprocess import CARTPOLE_CROP, preprocess_frames

KEYS = {
    "frames": torch.uint8,
    "actions": torch.int64,
    "rewards": torch.float32,
    "terminated": torch.bool,
    "truncated": torch.bool,
    "last": torch.bool,
    "episode": torch.int64,
    "step": torch.int64,
    "state": torch.float32,
}


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cartpole"
    summary = collect("CartPole-v1", episodes=3, out=path, max_steps=20, progress=False)
    return path, summary


def _snapshot(path):
    """Every file under ``path`` with its bytes."""
    return {
        os.path.relpath(os.path.join(root, name), path): open(os.path.join(root, name), "rb").read()
        for root, _, names in os.walk(path)
        for name in names
    }


def _episodes(data):
    """(start, stop) of each episode's contiguous run of frames."""
    ids = data["episode"].numpy()
    bounds = np.flatnonzero(np.diff(ids)) + 1
    return list(zip([0, *bounds], [*bounds, len(ids)]))


def test_layout_and_meta(cartpole):
    path, summary = cartpole
    assert sorted(os.listdir(path)) == ["chunk_000", "meta.json"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["env_id"] == "CartPole-v1"
    assert meta["frame_size"] == [32, 96]
    assert meta["crop"] == list(CARTPOLE_CROP)
    assert meta["action_space"] == {"type": "discrete", "n": 2}
    assert meta["state_size"] == 4 and meta["policy"] == "mixed"
    [chunk] = meta["chunks"]
    assert chunk["name"] == "chunk_000"
    assert chunk["episode_ids"] == [0, 1, 2] and chunk["seeds"] == [0, 1, 2]
    data, loaded_meta = load_dataset(path)
    assert loaded_meta == meta
    assert chunk["frames"] == meta["frames"] == data.shape[0] == summary["frames"]
    assert summary["steps"] == summary["frames"] - 3 and summary["episodes"] == 3


def test_keys_dtypes_shapes(cartpole):
    data, _ = load_dataset(cartpole[0])
    n = data.shape[0]
    assert set(data.keys()) == set(KEYS)
    for key, dtype in KEYS.items():
        assert data[key].dtype == dtype, key
        assert data[key].shape[0] == n
    assert data["frames"].shape == (n, 32, 96, 3)
    assert data["actions"].shape == (n,) and data["state"].shape == (n, 4)


def test_episode_step_and_flag_consistency(cartpole):
    data, _ = load_dataset(cartpole[0])
    episodes = _episodes(data)
    assert [int(data["episode"][a]) for a, _ in episodes] == [0, 1, 2]
    for a, b in episodes:
        length = b - a
        assert 2 <= length <= 21  # max_steps=20 env steps -> at most 21 frames
        assert torch.equal(data["step"][a:b], torch.arange(length))
        assert data["last"][a:b].tolist() == [False] * (length - 1) + [True]
        # the transition into the final frame ended the episode; nothing follows the final one
        assert bool(data["terminated"][b - 2] or data["truncated"][b - 2])
        assert not data["terminated"][a : b - 2].any() and not data["truncated"][a : b - 2].any()
        assert not data["terminated"][b - 1] and not data["truncated"][b - 1]
        assert data["actions"][b - 1] == 0 and data["rewards"][b - 1] == 0
        if length < 21:  # CartPole pays 1 per step, the terminating one included
            assert data["terminated"][b - 2]
    assert set(data["actions"].unique().tolist()) <= {0, 1}
    assert torch.all(data["rewards"][~data["last"]] == 1.0)


def test_replaying_the_actions_reproduces_states_and_frames(cartpole):
    data, meta = load_dataset(cartpole[0])
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    for (a, b), seed in zip(_episodes(data), meta["chunks"][0]["seeds"]):
        obs, _ = env.reset(seed=seed)
        for t in range(a, b):
            assert np.allclose(data["state"][t].numpy(), obs, atol=1e-6)
            frame = preprocess_frames(env.render(), (32, 96), CARTPOLE_CROP)
            assert torch.equal(data["frames"][t], frame)
            if t < b - 1:
                obs, reward, term, trunc, _ = env.step(int(data["actions"][t]))
                assert (reward, term) == (float(data["rewards"][t]), bool(data["terminated"][t]))
    env.close()
    frames = data["frames"].float()
    assert (frames - frames[0]).abs().amax(dim=(1, 2, 3)).gt(0).sum() > 0.5 * len(frames)


def test_collection_is_deterministic(cartpole, tmp_path):
    collect("CartPole-v1", episodes=3, out=tmp_path / "again", max_steps=20, progress=False)
    first, _ = load_dataset(cartpole[0])
    again, _ = load_dataset(tmp_path / "again")
    assert all(torch.equal(first[key], again[key]) for key in KEYS)


def test_extending_adds_a_chunk_with_fresh_ids_and_seeds(tmp_path):
    path = tmp_path / "ds"
    collect("CartPole-v1", episodes=3, out=path, max_steps=10, seed=5, progress=False)
    summary = collect(
        "CartPole-v1", episodes=3, out=path, max_steps=10, seed=2, policy="random", progress=False
    )
    meta = json.loads((path / "meta.json").read_text())
    first, second = meta["chunks"]
    assert first["seeds"] == [5, 6, 7]
    assert second["name"] == "chunk_001" and second["episode_ids"] == [3, 4, 5]
    assert not set(second["seeds"]) & set(first["seeds"])  # 2 + k for k=3.. hits 5, 6, 7
    assert second["seeds"] == [8, 9, 10]
    assert meta["policy"] == "mixed+random" and meta["episodes"] == 6
    data, _ = load_dataset(path)
    assert data.shape[0] == first["frames"] + second["frames"] == summary["dataset_frames"]
    assert data["episode"].unique().tolist() == list(range(6))
    assert sorted(p for p in os.listdir(path)) == ["chunk_000", "chunk_001", "meta.json"]


@pytest.mark.parametrize(
    "kwargs",
    [{"env_id": "MountainCar-v0"}, {"frame_size": (16, 48)}, {"crop": (0, 400, 0, 600)}],
)
def test_mismatched_extension_raises_and_changes_nothing(cartpole, kwargs):
    path = cartpole[0]
    before = _snapshot(path)
    args = {"env_id": "CartPole-v1", "episodes": 1, "out": path, "max_steps": 5}
    with pytest.raises(ValueError, match="out") as info:
        collect(**{**args, **kwargs}, progress=False)
    assert "CartPole-v1" in str(info.value)
    assert _snapshot(path) == before


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="policy"):
        collect("CartPole-v1", episodes=1, out=tmp_path / "a", policy="greedy", progress=False)
    with pytest.raises(ValueError, match="episodes"):
        collect("CartPole-v1", episodes=0, out=tmp_path / "b", progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match="out"):
        collect("CartPole-v1", episodes=1, out=tmp_path / "c", max_steps=3, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_load_dataset_errors(cartpole, tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_dataset(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text((cartpole[0] / "meta.json").read_text())
    with pytest.raises(FileNotFoundError, match="chunk_000"):
        load_dataset(broken)


def test_heuristic_balances_and_mixed_varies(tmp_path):
    heuristic = collect(
        "CartPole-v1",
        episodes=2,
        out=tmp_path / "h",
        policy="heuristic",
        max_steps=150,
        progress=False,
    )
    random = collect(
        "CartPole-v1",
        episodes=4,
        out=tmp_path / "r",
        policy="random",
        max_steps=150,
        progress=False,
    )
    assert heuristic["min_episode_length"] == 150  # never drops the pole
    assert random["mean_episode_length"] < 60
    data, _ = load_dataset(tmp_path / "h")
    moves = data["actions"][~data["last"]].float().mean()
    assert 0.2 < moves < 0.8  # both directions, not a constant push


@pytest.mark.parametrize(
    ("env_id", "state_size", "action_shape", "action_dtype"),
    [
        ("Pendulum-v1", 2, (1,), torch.float32),
        ("MountainCar-v0", 2, (), torch.int64),
        ("Acrobot-v1", 4, (), torch.int64),
    ],
)
def test_other_classic_control_envs(tmp_path, env_id, state_size, action_shape, action_dtype):
    summary = collect(env_id, episodes=1, out=tmp_path / "ds", max_steps=6, progress=False)
    data, meta = load_dataset(tmp_path / "ds")
    assert summary["frames"] == 7 and data.shape[0] == 7
    assert data["frames"].shape == (7, 32, 32, 3) and meta["crop"] is None
    assert data["state"].shape == (7, state_size)
    assert data["actions"].shape == (7, *action_shape) and data["actions"].dtype == action_dtype
    assert data["truncated"][5] and data["last"][6]
    space = gym.make(env_id).action_space
    if isinstance(space, gym.spaces.Box):
        assert meta["action_space"] == {"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]}
        assert data["actions"].abs().max() <= 2.0
    else:
        assert meta["action_space"] == {"type": "discrete", "n": 3}
        assert set(data["actions"].tolist()) <= {0, 1, 2}
    if env_id == "Pendulum-v1":  # state is [theta, thetadot]; the observation [cos, sin, dot]
        obs, _ = gym.make(env_id).reset(seed=meta["chunks"][0]["seeds"][0])
        theta, theta_dot = data["state"][0].tolist()
        assert np.allclose(obs, [np.cos(theta), np.sin(theta), theta_dot], atol=1e-5)
