"""Tests for worldflow.data.cartpole_reader against CartPole's true state."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflow.data.cartpole_reader import cartpole_pixels_per_unit, read_cartpole_state
from worldflow.data.collect import collect, load_dataset
from worldflow.data.preprocess import CARTPOLE_CROP, CARTPOLE_FRAME_SIZE, preprocess_frames


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory):
    """Real CartPole frames with their true states: balancing runs that drive the cart across
    the track, and mixed/random runs that end with the pole fallen past 12 degrees."""
    path = tmp_path_factory.mktemp("reader") / "cartpole"
    collect("CartPole-v1", episodes=4, out=path, policy="heuristic", max_steps=150, seed=20, progress=False)
    collect("CartPole-v1", episodes=8, out=path, policy="mixed", max_steps=150, seed=20, progress=False)
    collect("CartPole-v1", episodes=6, out=path, policy="random", max_steps=150, seed=20, progress=False)
    data, _ = load_dataset(path)
    return data["frames"], data["state"]


def test_states_are_varied(real_frames):
    _, state = real_frames
    assert len(state) > 800
    assert state[:, 0].max() - state[:, 0].min() > 1.5  # metres of track visited
    assert state[:, 2].abs().max() > np.radians(12)  # falls past the termination angle


def test_reader_matches_true_state_within_2_pixels_and_5_degrees(real_frames):
    frames, state = real_frames
    x, theta = read_cartpole_state(frames)
    assert x.shape == theta.shape == (len(frames),) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and torch.isfinite(theta).all()
    x_error_px = (x - state[:, 0]).abs() * cartpole_pixels_per_unit()
    theta_error_deg = torch.rad2deg((theta - state[:, 2]).abs())
    assert x_error_px.max() < 2.0 and theta_error_deg.max() < 5.0
    assert x_error_px.mean() < 0.2 and theta_error_deg.mean() < 0.5


def test_reader_at_the_track_ends_and_off_screen():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=0)
    states = np.array(
        [
            [-2.4, 0, -0.2, 0],
            [-2.3, 0, 0.2, 0],
            [2.35, 0, -0.1, 0],
            [2.25, 0, 0.05, 0],
            [0.0, 0, 0.0, 0],
            [2.7, 0, 0.1, 0],
        ]
    )
    frames = []
    for s in states:
        env.unwrapped.state = s
        frames.append(preprocess_frames(env.render(), CARTPOLE_FRAME_SIZE, CARTPOLE_CROP))
    env.close()
    x, theta = read_cartpole_state(torch.stack(frames).numpy())
    assert isinstance(x, np.ndarray)
    # cart half off the frame at -2.4: still located from the edge it shows
    assert np.all(np.abs(x[:5] - states[:5, 0]) * cartpole_pixels_per_unit() < 1.0)
    assert np.all(np.degrees(np.abs(theta[1:5] - states[1:5, 2])) < 3.0)
    assert np.isnan(theta[0])  # pole leaning out of the picture: too little of it left
    assert np.isnan(x[5]) and np.isnan(theta[5])  # nothing on screen


def test_blank_frames_give_nan_and_batch_shape_is_kept():
    blank = torch.full((2, 3, *CARTPOLE_FRAME_SIZE, 3), 255, dtype=torch.uint8)
    x, theta = read_cartpole_state(blank)
    assert x.shape == theta.shape == (2, 3)
    assert torch.isnan(x).all() and torch.isnan(theta).all()


def test_pixels_per_unit():
    assert cartpole_pixels_per_unit() == pytest.approx(96 / 4.8)  # 4.8 m across 96 columns
    assert cartpole_pixels_per_unit((64, 48), None) == pytest.approx(48 / 4.8)
    assert cartpole_pixels_per_unit((32, 96), (0, 400, 150, 450)) == pytest.approx(96 / 2.4)


def test_other_resolutions():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    states = np.stack(
        [rng.uniform(-2, 2, 40), np.zeros(40), rng.uniform(-0.25, 0.25, 40), np.zeros(40)], axis=1
    )
    raw = []
    for s in states:
        env.unwrapped.state = s
        raw.append(env.render())
    env.close()
    for frame_size, crop in [((64, 96), None), ((16, 48), CARTPOLE_CROP)]:
        x, theta = read_cartpole_state(preprocess_frames(np.stack(raw), frame_size, crop), frame_size, crop)
        x_err = (x.numpy() - states[:, 0]) * cartpole_pixels_per_unit(frame_size, crop)
        assert np.abs(x_err).max() < 1.0
        assert np.degrees(np.abs(theta.numpy() - states[:, 2])).max() < 3.0


def test_bad_inputs():
    with pytest.raises(TypeError, match="frames"):
        read_cartpole_state(np.zeros((32, 96, 3), np.float32))
    with pytest.raises(ValueError, match=r"frames.*\(\.\.\., 32, 96, 3\).*\(32, 32, 3\)"):
        read_cartpole_state(np.zeros((32, 32, 3), np.uint8))
