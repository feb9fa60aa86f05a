"""Reading context frames from the files people have: images, videos, arrays."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import build

from worldflow.cli import main
from worldflow.data.shapes import random_clip
from worldflow.errors import WorldFlowError
from worldflow.video import read_frames, write_video


def test_an_image_is_one_frame_and_a_written_video_reads_back_exactly(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "one.png", image)
    assert np.array_equal(read_frames(tmp_path / "one.png", (16, 24)), image[None, None])
    clip = random_clip(5).frames  # few colours: a GIF palette keeps them exactly
    write_video(tmp_path / "clip.gif", clip, scale=4)  # upscaled 4x on the way out
    assert np.array_equal(read_frames(tmp_path / "clip.gif", (32, 32)), clip[None])
    np.save(tmp_path / "clip.npy", clip)
    assert np.array_equal(read_frames(tmp_path / "clip.npy", (32, 32)), clip[None])


def test_unreadable_context_names_the_argument(tmp_path):
    iio.imwrite(tmp_path / "wide.png", np.zeros((16, 20, 3), np.uint8))
    with pytest.raises(WorldFlowError, match=r"context: expected 16x16 frames .* got 16x20"):
        read_frames(tmp_path / "wide.png", (16, 16))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(WorldFlowError, match=r"context: expected an existing .npy/.png"):
        read_frames(tmp_path / "notes.txt", (16, 16))
    np.save(tmp_path / "float.npy", np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(WorldFlowError, match="context: expected uint8 frames"):
        read_frames(tmp_path / "float.npy", (16, 16))


def test_generate_continues_an_image_like_the_python_api(tmp_path, capsys):
    model = build(seed=0, text_dim=16, text_len=8)
    path = model.save_pretrained(tmp_path / "model")
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "first.png", image)
    args = ["generate", f"model={path}", "num_frames=2", f"context={tmp_path / 'first.png'}",
            "prompt=a cart", "guidance=2", "seed=4", f"out={tmp_path / 'v.npy'}"]
    assert main(args) == 0
    expected = model.generate(2, context=torch.from_numpy(image)[None, None], prompt="a cart",
                              guidance=2.0, seed=4)
    assert np.array_equal(np.load(tmp_path / "v.npy"), expected.numpy())
    assert main([*args[:3], f"context={tmp_path / 'missing.png'}", *args[4:]]) == 2
    assert "context" in capsys.readouterr().err
