"""Entry-point smoke runs: each command with tiny settings prints one JSON line."""

import json

import numpy as np
import pytest
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
    args = ["demo", f"model={path}", "steps=10", "context=2", "anomaly_at=6", f"out={out}", "plan_steps=3"]
    assert main(args) == 0
    summary = last_json(capsys)
    assert summary["frames"] == 11 and summary["dream_frames"] == 9
    assert (out / "dream.mp4").stat().st_size > 0 and (out / "surprise.png").stat().st_size > 0
    assert summary["noise_floor_bits_per_dim"] < summary["real_bits_per_dim_mean"]
    assert 1 <= summary["plan_steps"] <= 3 and summary["plan_return"] == summary["plan_steps"]
    assert (out / "plan.mp4").stat().st_size > 0
    assert main(["demo", f"model={path}", "plan_steps=-1", f"out={out}"]) == 2
    assert "plan_steps" in capsys.readouterr().err


def test_unknown_command_prints_usage(capsys):
    assert main(["fly"]) == 2
    assert "usage" in capsys.readouterr().err


def test_command_help_lists_fields_with_defaults(capsys):
    from worldflow.train import TrainConfig

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: worldflow train")
    assert f"steps: {TrainConfig.steps}" in out and f"lr: {TrainConfig.lr}" in out


def test_bad_arguments_end_in_one_line_naming_them(tmp_path, capsys):
    cases = [
        (["train", "steps=abc"], "steps"),  # wrong type for a field
        (["train", "stepz=3"], "stepz"),  # no such field
        (["demo", "model=no-such-model"], "model: expected a directory or a shipped model name"),
        (["collect", "env=NoSuchEnv-v0", "episodes=1", f"out={tmp_path / 'd'}"], "env: expected"),
    ]
    for argv, named in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"worldflow {argv[0]}: error:"), err
        assert named in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # the failed collect left nothing behind


def test_debug_mode_reraises(monkeypatch):
    monkeypatch.setenv("WORLDFLOW_DEBUG", "1")
    with pytest.raises(ValueError, match="model"):
        main(["demo", "model=no-such-model"])


def test_imagine_plays_real_episodes_and_writes_the_video(tmp_path, capsys):
    path = tiny_world_model(tmp_path)
    out = tmp_path / "im"
    args = ["imagine", f"model={path}", "agent=cem", "episodes=2", "max_steps=3", "horizon=2",
            "candidates=4", f"out={out}"]
    assert main(args) == 0
    summary = last_json(capsys)
    assert summary["agent"] == "cem" and len(summary["returns"]) == 2
    assert summary["steps"] == sum(summary["returns"]) <= 6  # CartPole: +1 a step, at most 3 steps
    assert summary["mean_return"] == pytest.approx(np.mean(summary["returns"]))
    assert summary["seconds_per_step"] > 0 and (out / "episode.mp4").stat().st_size > 0
    for bad, field in (("agent=dqn", "agent"), ("horizon=0", "horizon"), ("episodes=0", "episodes")):
        assert main(["imagine", f"model={path}", bad, f"out={out}"]) == 2
        assert field in capsys.readouterr().err
