"""Tests for worldflow.data.preprocess: crop + area resize of raw renders."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflow.data.preprocess import (
    CARTPOLE_CROP,
    CARTPOLE_FRAME_SIZE,
    default_preprocessing,
    preprocess_frames,
)

POLE_RGB = np.array([202, 152, 101])


def test_shapes_and_dtype_numpy_and_torch():
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 400, 600, 3), dtype=np.uint8)
    out = preprocess_frames(raw, (32, 96), CARTPOLE_CROP)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert out.shape == (2, 3, 32, 96, 3)
    out_torch = preprocess_frames(torch.from_numpy(raw[0, 0]), (16, 16))
    assert out_torch.shape == (16, 16, 3)
    assert torch.equal(preprocess_frames(raw[0, 0], (16, 16)), out_torch)


def test_blocks_downsample_to_their_colour():
    # An image made of 8x8 blocks of one colour each, downsampled by 8, is the block image.
    small = np.random.default_rng(1).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    raw = small.repeat(8, axis=0).repeat(8, axis=1)  # (48, 80, 3)
    assert np.array_equal(preprocess_frames(raw, (6, 10)).numpy(), small)


def test_area_average_of_a_checkerboard():
    raw = np.zeros((4, 4, 3), dtype=np.uint8)
    raw[::2, ::2] = 100
    raw[1::2, 1::2] = 100
    assert np.all(preprocess_frames(raw, (2, 2)).numpy() == 50)


def test_crop_selects_raw_pixels_before_resizing():
    raw = np.full((40, 60, 3), 255, dtype=np.uint8)
    raw[10:20, 30:50] = (255, 0, 0)  # a red block
    out = preprocess_frames(raw, (5, 10), crop=(10, 20, 30, 50))
    assert np.all(out.numpy() == (255, 0, 0))
    half = preprocess_frames(raw, (1, 2), crop=(10, 20, 20, 40))  # left half white
    assert half[0, 0].tolist() == [255, 255, 255] and half[0, 1].tolist() == [255, 0, 0]


@pytest.mark.parametrize("offset", range(7))
def test_ten_pixel_pole_stays_a_clear_line(offset):
    # CartPole's pole is 10 raw px wide; at 600 -> 96 columns (6.25 px each) some column is
    # still mostly pole-coloured wherever the pole falls.
    raw = np.full((150, 600, 3), 255, dtype=np.uint8)
    raw[20:130, 300 + offset : 310 + offset] = POLE_RGB
    out = preprocess_frames(raw, (32, 96)).numpy().astype(float)
    blue_drop = (255 - out[16, :, 2]) / (255 - POLE_RGB[2])  # pole share per column
    assert blue_drop.max() > 0.8
    assert (blue_drop > 0.05).sum() <= 3  # and stays thin


def test_default_preprocessing_table():
    assert default_preprocessing("CartPole-v1") == (CARTPOLE_FRAME_SIZE, CARTPOLE_CROP)
    assert CARTPOLE_FRAME_SIZE == (32, 96)
    for env_id in ("Pendulum-v1", "MountainCar-v0", "Acrobot-v1", "Unknown-v3"):
        assert default_preprocessing(env_id) == ((32, 32), None)


def test_cartpole_crop_holds_everything_that_is_ever_drawn():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=0)
    top, bottom, left, right = CARTPOLE_CROP
    assert (left, right) == (0, 600)
    for x in (-2.4, -1.0, 0.0, 1.3, 2.4):
        for theta in (-0.3, -0.21, 0.0, 0.1, 0.21, 0.3):  # termination at +-0.21 rad
            env.unwrapped.state = np.array([x, 0.0, theta, 0.0])
            frame = env.render()
            rows = np.flatnonzero((frame != 255).any(axis=(1, 2)))
            assert rows.min() >= top + 2 and rows.max() < bottom - 2, (x, theta)
    env.close()
    # the band is tight: an upright pole reaches within a few pixels of the top
    assert 140 <= bottom - top <= 160


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"raw": np.zeros((4, 4, 3), np.float32)}, TypeError, ["raw", "uint8", "float32"]),
        ({"raw": [[0]]}, TypeError, ["raw", "list"]),
        ({"raw": np.zeros((4, 4, 4), np.uint8)}, ValueError, ["raw", "(4, 4, 4)"]),
        ({"frame_size": (0, 4)}, ValueError, ["frame_size", "(0, 4)"]),
        ({"frame_size": 8}, ValueError, ["frame_size", "8"]),
        ({"crop": (0, 5, 0, 4)}, ValueError, ["crop", "(0, 5, 0, 4)", "4 x 4"]),
        ({"crop": (2, 2, 0, 4)}, ValueError, ["crop"]),
        ({"crop": (0, 2)}, ValueError, ["crop"]),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, error, names):
    args = {"raw": np.zeros((4, 4, 3), np.uint8), "frame_size": (2, 2), "crop": None}
    args.update(kwargs)
    with pytest.raises(error) as info:
        preprocess_frames(**args)
    for name in names:
        assert name in str(info.value)
