"""Per-frame anomaly scores (`worldflow.scoring`) and `worldflow score`."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import build

import worldflow as wf
from worldflow.cli import main
from worldflow.data import collect
from worldflow.scoring import FLOOR, MAD_TO_STD, FrameScores, combine, robust_z, score_frames


@pytest.fixture
def video():
    """A tiny world model (window 8) and 11 random frames with actions."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 11, 16, 16, 3), generator=gen, dtype=torch.uint8)
    actions = torch.randint(0, 2, (2, 11), generator=gen)
    return build(seed=1, num_actions=2), frames, actions


def test_bits_are_the_exact_conditionals_of_each_frames_window(video):
    model, frames, actions = video
    scores = score_frames(model, frames, actions, batch=5)
    w = model.config.max_frames
    first = model.log_prob(frames[:, :w], actions[:, :w]).bits_per_dim
    assert torch.allclose(scores.bits_per_dim[:, :w], first, atol=1e-5)  # causal: one pass = many
    for e in range(w, 11):
        window = model.log_prob(frames[:, e - w + 1 : e + 1], actions[:, e - w + 1 : e + 1]).bits_per_dim
        assert torch.allclose(scores.bits_per_dim[:, e], window[:, -1], atol=1e-5)


def test_prediction_and_copy_errors_line_up_with_their_frames(video):
    model, frames, actions = video
    frames = frames.clone()
    frames[:, 9] = frames[:, 8]  # frozen time at frame 9
    scores = score_frames(model, frames, actions, batch=5, sampler="sequential")
    assert scores.copy_error[:, 9].eq(0).all() and scores.copy_error[:, 1:9].gt(0).all()
    ratio = (scores.prediction_error + FLOOR) / (scores.copy_error + FLOOR)
    torch.testing.assert_close(scores.stillness, ratio.log(), equal_nan=True)
    assert scores.prediction_error[:, 0].isnan().all() and scores.prediction_error[:, 1:].isfinite().all()
    for e in (2, 9):  # a short history and a full window
        lo = max(0, e - model.config.max_frames + 1)
        guess = model.generate(1, context=frames[:, lo:e], actions=actions[:, lo:e], temperature=0.0,
                               sampler="sequential")
        error = (guess[:, 0].float() - frames[:, e].float()).pow(2).mean(dim=(1, 2, 3))
        # batched matmuls differ with the batch in their last bits and inverting the flow
        # amplifies that (random weights most): the same prediction to within 2%
        assert torch.allclose(scores.prediction_error[:, e], error, rtol=0.02)


def test_robust_z_and_their_combination():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    z = robust_z(torch.tensor([3.0, 3.0 + MAD_TO_STD]), ref)
    assert torch.allclose(z, torch.tensor([0.0, 1.0]))
    nan = float("nan")
    bits, miss = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([nan, 5.0, -1.0])
    still = torch.tensor([nan, 4.0, 0.5])
    assert torch.equal(combine(bits, miss, still), torch.tensor([1.0, 5.0, 0.5]))


def test_a_frame_that_stands_still_where_motion_was_expected_is_the_anomaly():
    """Normal frames move as predicted (small prediction error, copy error about the motion);
    a frozen one has copy error 0 and the whole predicted motion as its prediction error; a
    jumped one is far from the prediction. Both stand out."""
    gen = torch.Generator().manual_seed(0)
    motion = 4.0 + torch.rand(50, generator=gen)  # each normal frame's squared change
    pred = 0.2 + 0.1 * torch.rand(50, generator=gen)
    bits = 5.0 + 0.01 * torch.randn(50, generator=gen)
    normal = FrameScores.of(bits, pred, motion)
    odd = FrameScores.of(torch.full((2,), 5.0), torch.tensor([4.5, 40.0]), torch.tensor([0.0, 45.0]),
                         reference=normal)
    assert torch.allclose(odd.stillness[0], torch.log(torch.tensor((4.5 + FLOOR) / FLOOR)))
    assert (odd.anomaly > normal.anomaly.max()).all()
    z_still = robust_z(odd.stillness, normal.stillness)
    assert z_still[0] > 3 and odd.anomaly[0] >= z_still[0]  # frozen: still where motion was due


def test_bad_input_names_the_argument(video):
    model, frames, actions = video
    with pytest.raises(wf.WorldFlowError, match="frames: expected uint8"):
        score_frames(model, frames.float(), actions)
    with pytest.raises(wf.WorldFlowError, match="batch"):
        score_frames(model, frames, actions, batch=0)
    with pytest.raises(wf.WorldFlowError, match="prompt"):
        score_frames(model, frames, actions, prompt="a cart")


def test_score_command_writes_a_row_a_frame_and_a_plot(tmp_path, capsys):
    model = build(seed=2, num_actions=2, env_id="CartPole-v1")
    path = model.save_pretrained(tmp_path / "model")
    data = tmp_path / "episodes"
    collect("CartPole-v1", episodes=2, out=data, frame_size=(16, 16), max_steps=12, seed=7, progress=False)
    out = tmp_path / "score"
    assert main(["score", f"model={path}", f"data={data}", f"out={out}", "top=3", "threads=1",
                 "progress=false"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    episodes = wf.data.load_dataset(data)[0]
    assert summary["frames"] == len(rows) == episodes.shape[0] and len(summary["top"]) == 3
    best = max(rows, key=lambda r: float(r["anomaly"]))
    top = summary["top"][0]
    assert (top["episode"], top["frame"]) == (int(best["episode"]), int(best["frame"]))
    assert (out / "scores.png").stat().st_size > 0
    np.save(tmp_path / "clip.npy", episodes["frames"][:5].numpy())
    clip = tmp_path / "clip.npy"
    assert main(["score", f"model={path}", f"data={clip}", f"out={out}", "progress=false"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["frames"] == 5
    assert main(["score", f"model={path}", f"data={data}", "episodes=[99]", f"out={out}"]) == 2
    assert "episodes" in capsys.readouterr().err
