"""Entry-point smoke runs: each command with tiny settings prints one JSON line."""

import json

import numpy as np
import torch
from conftest import build

from worldflow.cli import main


def tiny_world_model(tmp_path):
    model = build(seed=0, num_actions=2, env_id="CartPole-v1", task_heads=True)
    model.start_frames = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    return model.save_pretrained(tmp_path / "model")


def last_json(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_generate_writes_a_video_and_frames(tmp_path, capsys):
    path = tiny_world_model(tmp_path)
    assert main(["generate", f"model={path}", "num_frames=3", f"out={tmp_path / 'v.npy'}", "seed=1"]) == 0
    summary = last_json(capsys)
    frames = np.load(tmp_path / "v.npy")
    assert summary["frames"] == 3 and frames.shape == (1, 3, 16, 16, 3) and frames.dtype == np.uint8
    assert main(["generate", f"model={path}", "num_frames=2", f"out={tmp_path / 'v.gif'}"]) == 0
    assert (tmp_path / "v.gif").stat().st_size > 0


def test_demo_dreams_scores_and_plots(tmp_path, capsys):
    path = tiny_world_model(tmp_path)
    out = tmp_path / "demo"
    args = ["demo", f"model={path}", "steps=10", "context=2", "anomaly_at=6", f"out={out}"]
    assert main(args) == 0
    summary = last_json(capsys)
    assert summary["frames"] == 11 and summary["dream_frames"] == 9
    assert (out / "dream.mp4").stat().st_size > 0 and (out / "surprise.png").stat().st_size > 0
    assert summary["noise_floor_bits_per_dim"] < summary["real_bits_per_dim_mean"]


def test_unknown_command_prints_usage(capsys):
    assert main(["fly"]) == 2
    assert "usage" in capsys.readouterr().err
