"""Training a text-to-video model on the captioned shapes world (`data=shapes`)."""

import csv
import json
import math
import socket
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

import worldflow as wf
from worldflow import cli
from worldflow.codec import frames_to_model
from worldflow.denoiser import score_target
from worldflow.errors import ConfigError
from worldflow.train import TrainConfig
from worldflow.train.loop import build_model
from worldflow.train.losses import compute_gradients
from worldflow.train.sources import HELD_OUT, ShapesSource


def config(out="unused", **changes) -> TrainConfig:
    base = TrainConfig(data="shapes", preset="tiny", out=str(out), steps=12, batch_size=4, clip_len=4,
                       warmup_steps=2, val_every=12, val_batches=2, checkpoint_every=100, log_every=2,
                       progress=False, threads=1, lr=3e-3, model={"patch_size": 8})
    return replace(base, **changes)


def test_the_text_encoder_trains_with_the_flow_and_the_denoiser_reads_text_detached():
    cfg = config()
    source = ShapesSource(cfg)
    model = randomize(build_model(cfg, source), seed=2)
    assert model.config.has_text and model.config.frame_size == (32, 32)
    batch = source.batch(0, 0, 1)
    assert batch["frames"].shape == (4, 4, 32, 32, 3) and len(batch["prompts"]) == 4
    sigma = model.config.noise_std
    losses = compute_gradients(model, batch, sigma, None)
    fused = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    x = (frames_to_model(batch["frames"]) + sigma * batch["noise"]).requires_grad_(True)
    text = model.encode_prompt(batch["prompts"], 4)
    flow = model.reference_loss(*model.flow_forward(x, None, text)[:2])
    target = score_target(flow, x, sigma, retain_graph=True)
    denoiser = F.mse_loss(model.denoiser_tokens(x.detach(), text.detach()), model.codec.to_tokens(target))
    (flow + denoiser).backward()

    assert torch.allclose(losses["flow_loss"], flow) and torch.allclose(losses["denoiser_loss"], denoiser)
    text_grads = [p.grad for n, p in model.named_parameters() if n.startswith("text_encoder.")]
    assert text_grads and all(g is not None for g in text_grads)
    assert sum(float(g.abs().sum()) for g in text_grads) > 0
    for name, p in model.named_parameters():
        assert torch.allclose(fused[name], p.grad, rtol=1e-4, atol=1e-7), name


def test_training_and_validation_clips_are_disjoint_and_validation_keeps_every_prompt():
    source = ShapesSource(config(caption_dropout=1.0))
    train = source.batch(3, 0, 1)
    assert all(p == "" for p in train["prompts"])  # all dropped in training
    assert all(p for p in (source.val[HELD_OUT + i]["prompt"] for i in range(8)))  # none in validation


def test_shapes_settings_are_checked():
    with pytest.raises(ConfigError, match="train_parts"):
        ShapesSource(config(train_parts=["heads"]))
    with pytest.raises(ConfigError, match="^shapes_size: expected room"):
        ShapesSource(config(shapes_size=12))
    with pytest.raises(ConfigError, match="model.frame_size"):
        ShapesSource(config(model={"frame_size": [16, 16]})).model_fields()


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_a_short_run_learns_and_writes_a_text_model_that_generates(tmp_path, capsys, offline):
    """The whole text path (captions, byte encoder, training, guided generation) offline."""
    out = tmp_path / "run"
    argv = ["train", "data=shapes", "preset=tiny", f"out={out}", "steps=12", "batch_size=4", "clip_len=4",
            "warmup_steps=2", "val_every=12", "val_batches=2", "lr=3e-3", "progress=false", "threads=1",
            "+model.patch_size=8"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(summary["val_text_gain_bits_per_dim"])
    rows = [r for r in csv.DictReader(open(out / "log.csv")) if r["val_bits_per_dim"]]
    assert float(rows[-1]["val_bits_per_dim"]) < float(rows[0]["val_bits_per_dim"])  # step 12 < step 0

    model = wf.WorldFlow.from_pretrained(out / "model")
    assert model.info["data"]["path"] == "shapes" and model.config.env_id is None
    a = model.generate(2, prompt="a red circle moving left", batch_size=2, guidance=2.0, seed=3)
    b = model.generate(2, prompt="a red circle moving left", batch_size=2, guidance=2.0, seed=3)
    assert a.shape == (2, 2, 32, 32, 3) and torch.equal(a, b)
