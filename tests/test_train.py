"""Training loop: it learns, resumes exactly, survives crashes, scales over ranks.

Data: a few short CartPole episodes collected at the `tiny` preset's 16x16 frames.
Processes spawned here (a crash mid-checkpoint, torchrun) use one thread each.
"""

import csv
import json
import math
import os
import pickle
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

import worldflow as wf
from worldflow import cli
from worldflow.data import ClipDataset, collect, load_dataset
from worldflow.denoiser import score_target
from worldflow.metrics import noise_floor_bits
from worldflow.train import TrainConfig, run
from worldflow.train.batches import sample_batch, sample_pairs, step_generator, transitions
from worldflow.train.checkpoints import load_checkpoint
from worldflow.train.config import command_line
from worldflow.train.loop import build_model
from worldflow.train.losses import compute_gradients, heads_losses
from worldflow.train.optim import lr_factor
from worldflow.train.sources import EpisodeSource

REPO = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Six short CartPole episodes at 16x16 (a few seconds to collect)."""
    path = tmp_path_factory.mktemp("cartpole16")
    collect("CartPole-v1", episodes=6, out=path, frame_size=(16, 16), max_steps=30, seed=0,
            progress=False)
    return path


def config(data: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(data=str(data), out=str(out), steps=6, batch_size=4, clip_len=4,
                       warmup_steps=2, val_every=100, val_batches=2, checkpoint_every=100,
                       log_every=2, progress=False, threads=1)
    return replace(base, **changes)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(out) / "checkpoint")[1]["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- the step
def test_fused_step_gives_the_specified_gradients(data):
    """One backward yields what flow loss + score_target (2nd backward) + MSE + heads give."""
    tensordict, _ = load_dataset(data)
    clips = ClipDataset(tensordict, 4)
    cfg = config(data, "unused")
    model = randomize(build_model(cfg, EpisodeSource(cfg)), seed=1)
    batch = sample_batch(clips, 3, step_generator(0, 0, 0))
    pairs = sample_pairs(tensordict, transitions(tensordict, clips.episodes), 8, 0.5,
                         step_generator(0, 0, 2))
    sigma = model.config.noise_std
    losses = compute_gradients(model, batch, sigma, pairs)
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    x_clean = wf.codec.frames_to_model(batch["frames"])
    x = (x_clean + sigma * batch["noise"]).requires_grad_(True)
    flow = model.reference_loss(*model.flow_forward(x, batch["actions"])[:2])
    target = score_target(flow, x, sigma, retain_graph=True)
    denoiser = F.mse_loss(model.denoiser_tokens(x.detach()), model.codec.to_tokens(target))
    reward, termination = heads_losses(model, pairs)
    (flow + denoiser + reward + termination).backward()

    assert torch.allclose(losses["denoiser_loss"], denoiser, rtol=1e-5)
    assert denoiser > 0 and target.abs().max() > 0
    for name, p in model.named_parameters():
        assert torch.allclose(fused[name], p.grad, rtol=1e-4, atol=1e-7), name


def test_schedule_and_batches():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == 1.0
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert noise_floor_bits(0.05) == pytest.approx(4.7195, abs=1e-4)  # DESIGN.md: 4.72


def test_rank_slices_make_the_global_batch(data):
    clips = ClipDataset(data, 4)
    whole = sample_batch(clips, 4, step_generator(3, 7, 0))
    halves = [sample_batch(clips, 4, step_generator(3, 7, 0), rank, 2) for rank in (0, 1)]
    for key in whole:
        assert torch.equal(whole[key], torch.cat([h[key] for h in halves]))
    tensordict, _ = load_dataset(data)
    pairs = transitions(tensordict, clips.episodes)
    whole = sample_pairs(tensordict, pairs, 8, 0.5, step_generator(3, 7, 2))
    halves = [sample_pairs(tensordict, pairs, 8, 0.5, step_generator(3, 7, 2), r, 2) for r in (0, 1)]
    for key in whole:
        assert torch.equal(whole[key], torch.cat([h[key] for h in halves]))


def test_heads_pairs_are_transitions_with_terminations_oversampled(data):
    """Pairs never cross an episode; half of each heads batch are the rare terminations."""
    tensordict, _ = load_dataset(data)
    episodes = ClipDataset(tensordict, 4).episodes
    every, terminal = transitions(tensordict, episodes)
    episode, step = tensordict["episode"], tensordict["step"]
    assert torch.equal(episode[every], episode[every + 1])
    assert torch.equal(step[every + 1], step[every] + 1)
    assert torch.isin(episode[every], torch.tensor(episodes)).all()
    ended = tensordict["terminated"].nonzero()[:, 0]  # every termination of these episodes
    assert torch.equal(terminal, ended[torch.isin(episode[ended], torch.tensor(episodes))])
    assert 0 < len(terminal) < 0.1 * len(every)
    batch = sample_pairs(tensordict, (every, terminal), 40, 0.5, step_generator(0, 0, 2))
    assert batch["terminated"][:20].all() and batch["previous"].shape == batch["frames"].shape
    uniform = sample_pairs(tensordict, (every, terminal), 400, 0.0, step_generator(0, 1, 2))
    assert uniform["terminated"].float().mean() < 0.1  # the data's own (low) rate


def test_init_loads_chosen_parts_and_freezes_the_rest(data, short_run, tmp_path):
    """A new denoiser (another parameterization) and heads on a trained, frozen flow."""
    start = wf.WorldFlow.from_pretrained(short_run / "model")
    cfg = config(data, tmp_path / "stage2", init=str(short_run / "model"), init_parts=["flow"],
                 train_parts=["denoiser", "heads"], model={"denoiser_predicts": "clean"}, steps=3)
    run(cfg)
    after = wf.WorldFlow.from_pretrained(tmp_path / "stage2" / "model")
    assert after.config.denoiser_predicts == "clean" and start.config.denoiser_predicts == "score"
    before = start.state_dict()
    for name, value in after.state_dict().items():
        part = name.split(".")[0]
        same = torch.equal(value, before[name])
        assert same == (part not in ("denoiser", "heads")), name
    assert after.info["training"]["init"]["model"] == str(short_run / "model")
    assert "init=" in after.info["training"]["command"]
    with pytest.raises(wf.ConfigError, match=r"train_parts: expected a non-empty list.*\['decoder'\]"):
        run(replace(cfg, train_parts=["decoder"]))

    # the heads alone (no flow pass at all): everything else is the init's, bit for bit
    heads = run(replace(cfg, init=str(tmp_path / "stage2" / "model"), out=str(tmp_path / "heads"),
                        init_parts=["flow", "denoiser", "heads"], train_parts=["heads"], steps=2))
    last = wf.WorldFlow.from_pretrained(heads["model"]).state_dict()
    for name, value in last.items():
        assert torch.equal(value, after.state_dict()[name]) == (not name.startswith("heads.")), name


def _validation_rows(out: Path) -> list[dict]:
    with open(Path(out) / "log.csv") as f:
        return [r for r in csv.DictReader(f) if r["val_bits_per_dim"]]


def test_a_continuation_with_another_seed_keeps_the_held_out_episodes(data, short_run, tmp_path):
    """`seed` moves batches and noise, never the split: the continuation's first validation
    (same weights, same held-out batches) equals the init run's last, figure for figure."""
    out = tmp_path / "reseeded"
    run(config(data, out, init=str(short_run / "model"), seed=7, steps=1, train_parts=["flow"]))
    last, first = _validation_rows(short_run)[-1], _validation_rows(out)[0]
    assert int(first["step"]) == 0
    figures = [k for k, v in last.items() if k.startswith("val_") and v]
    assert "val_bits_per_dim" in figures
    for key in figures:
        assert float(first[key]) == float(last[key]), key


def test_frame_size_override_must_match_the_data(data):
    bad = config(data, "unused", model={"frame_size": [32, 32]})
    with pytest.raises(wf.ConfigError, match=r"model.frame_size.*\[16, 16\].*\[32, 32\]"):
        build_model(bad, EpisodeSource(bad))
    cfg = config(data, "unused")
    model = build_model(cfg, EpisodeSource(cfg))
    assert (model.config.num_actions, model.config.env_id) == (2, "CartPole-v1")
    assert model.config.task_heads and model.config.frame_size == (16, 16)


# ---------------------------------------------------------------------------- training
def test_twenty_steps_lower_the_validation_loss(data, tmp_path):
    out = tmp_path / "run"
    summary = run(config(data, out, steps=20, batch_size=8, lr=2e-3, warmup_steps=5,
                         val_every=10, log_every=5))
    rows = _validation_rows(out)
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    before = float(rows[0]["val_bits_per_dim"])
    assert summary["val_bits_per_dim"] == pytest.approx(float(rows[-1]["val_bits_per_dim"]))
    assert summary["val_bits_per_dim"] < before - 1.0, (before, summary["val_bits_per_dim"])
    floor = summary["noise_floor_bits_per_dim"]
    assert floor == pytest.approx(noise_floor_bits(0.05))
    assert summary["val_excess_bits_per_dim"] == pytest.approx(summary["val_bits_per_dim"] - floor)
    assert summary["steps"] == 20 and summary["seconds_per_step"] > 0
    assert any((out / "tb").iterdir())


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_continues_exactly(data, tmp_path, ema_decay):
    """6 steps straight == 3 steps, resume, 3 steps: every tensor bit-identical (with a
    weight average, it too, and the model/ it writes)."""
    straight = config(data, tmp_path / "straight", lr_decay_steps=6, ema_decay=ema_decay)
    run(straight)
    split = replace(straight, out=str(tmp_path / "split"))
    run(replace(split, steps=3))
    assert load_checkpoint(tmp_path / "split" / "checkpoint")[0]["step"] == 3
    summary = run(replace(split, resume=True))
    assert summary["steps_this_run"] == 3
    (_, a), (_, b) = load_checkpoint(tmp_path / "straight/checkpoint"), load_checkpoint(
        tmp_path / "split/checkpoint")
    parts = ("model", "optimizer") + (("ema",) if ema_decay else ())
    assert set(a) == set(b) == {"rng", *parts}
    for part in parts:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    saved = [wf.WorldFlow.from_pretrained(tmp_path / name / "model").state_dict()
             for name in ("straight", "split")]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])


def test_weight_average_follows_its_recursion(data, tmp_path):
    """model/ of an `ema_decay=d` run is e1 = w1, e_t = d e_(t-1) + (1 - d) w_t over the
    raw weights w_t of runs stopped after t steps (training is deterministic); validation
    scores it, not the last weights."""
    d = 0.6
    base = config(data, tmp_path / "ema", steps=3, lr_decay_steps=3, lr=2e-3)
    raw = []
    for t in (1, 2, 3):
        run(replace(base, steps=t, out=str(tmp_path / f"raw{t}")))
        raw.append(weights(tmp_path / f"raw{t}"))
    summary = run(replace(base, ema_decay=d))
    expected = {k: v for k, v in raw[0].items() if v.is_floating_point()}
    for w in raw[1:]:
        expected = {k: d * expected[k] + (1 - d) * w[k] for k in expected}
    averaged = wf.WorldFlow.from_pretrained(tmp_path / "ema" / "model")
    got = averaged.state_dict()
    last = weights(tmp_path / "ema")  # the raw weights train as without an average
    assert all(torch.equal(last[k], raw[2][k]) for k in raw[2])
    trained = [k for k in expected if not torch.equal(raw[0][k], raw[2][k])]
    assert trained and all(not torch.allclose(got[k], raw[2][k]) for k in trained)
    for k in expected:
        assert torch.allclose(got[k], expected[k], rtol=0, atol=1e-6), k
    plain = run(replace(base, out=str(tmp_path / "plain")))
    assert summary["val_bits_per_dim"] != plain["val_bits_per_dim"]


def test_weight_average_settings_are_checked(short_run, data, tmp_path):
    for bad in (1.0, -0.1):
        with pytest.raises(wf.ConfigError, match=rf"ema_decay: expected a number in \[0, 1\).*{bad}"):
            run(config(data, tmp_path / "bad", ema_decay=bad))
    shutil.copytree(short_run, tmp_path / "run")
    with pytest.raises(wf.CheckpointError, match="written with ema_decay=None; expected the same"):
        run(config(data, tmp_path / "run", steps=3, resume=True, ema_decay=0.9))
    summary = run(config(data, tmp_path / "run", steps=3, resume=True))  # nothing was lost
    assert summary["steps_this_run"] == 1


CRASH_SCRIPT = """
import sys, time
from dataclasses import replace
import torch
torch.set_num_threads(1)
from safetensors.torch import save
import worldflow.checkpoint as checkpoint
from worldflow.train import TrainConfig, run

cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], steps=1, batch_size=4, clip_len=4,
                  val_batches=1, progress=False, threads=1)
run(cfg)  # commits the checkpoint of step 1

def stalling_save_file(tensors, path, metadata=None):
    # the real bytes, but only half of them reach the disk before the process dies
    data = save(tensors, metadata=metadata)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
    print("WRITING", path, flush=True)
    time.sleep(600)

checkpoint.save_file = stalling_save_file
run(replace(cfg, steps=2, resume=True))
"""


def test_kill_during_checkpoint_write_keeps_the_previous_one(data, tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    child = subprocess.Popen([sys.executable, str(script), str(data), str(out)],
                             stdout=subprocess.PIPE, text=True, env=CHILD_ENV)
    try:
        line = child.stdout.readline()
        assert line.startswith("WRITING"), line
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    partial = Path(line.split()[1])
    assert partial.is_file() and partial.name.endswith(".tmp")  # interrupted mid-write

    folder = out / "checkpoint"
    state, tensors = load_checkpoint(folder)
    assert state["step"] == 1 and "model" in tensors
    for path in folder.rglob("*"):  # every file under its final name is complete
        if path.suffix == ".safetensors":
            wf.checkpoint.read_tensors(path)
        elif path.suffix == ".json":
            wf.checkpoint.read_json(path)
    summary = run(config(data, out, steps=2, val_batches=1, resume=True))
    assert summary["steps_this_run"] == 1
    assert not list(folder.rglob("*.tmp")) and len(list(folder.glob("step_*"))) == 1


@pytest.fixture(scope="module")
def short_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("short")
    run(config(data, out, steps=2))
    return out


def _flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", _flip_middle_byte, r"model.safetensors: expected SHA-256 .* corrupted"),
    ("optimizer.safetensors", _truncate, r"optimizer.safetensors: expected SHA-256 .* truncated"),
    ("trainer.json", lambda p: p.unlink(), r"trainer.json: expected a file"),
    ("../latest.json", _truncate, r"latest.json: expected valid JSON"),
])
def test_damaged_checkpoint_raises(short_run, tmp_path, name, damage, message):
    folder = tmp_path / "checkpoint"
    shutil.copytree(short_run / "checkpoint", folder)
    damage(next(folder.glob("step_*")) / name)
    with pytest.raises(wf.CheckpointError, match=message):
        load_checkpoint(folder)


def test_checkpoints_load_without_unpickling(short_run, data, tmp_path, monkeypatch):
    for path in (short_run / "checkpoint").rglob("*.*"):
        raw = path.read_bytes()
        if path.suffix == ".safetensors":  # u64 header length, then a JSON header
            (size,) = struct.unpack("<Q", raw[:8])
            json.loads(raw[8 : 8 + size])
        else:
            assert path.suffix == ".json"
            json.loads(raw)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    shutil.copytree(short_run, tmp_path / "run")
    summary = run(config(data, tmp_path / "run", steps=3, resume=True))  # the whole resume path
    assert summary["steps_this_run"] == 1
    wf.WorldFlow.from_pretrained(tmp_path / "run" / "model")


# ---------------------------------------------------------------------------- entry points
def _torchrun(args: list[str], timeout: int = 180) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "worldflow.cli", "train", *args]
    done = subprocess.run(command, env=CHILD_ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def _overrides(cfg: TrainConfig) -> list[str]:
    return shlex.split(command_line(cfg))[2:]


def test_two_gloo_ranks_equal_one_process(data, tmp_path):
    one = config(data, tmp_path / "one", steps=3)
    run(one)
    _torchrun(_overrides(replace(one, out=str(tmp_path / "ddp"))))
    a, b = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.slow  # two torchrun launches: 10-20 s on two cores
def test_fsdp2_equals_one_process_and_resumes(data, tmp_path):
    one = config(data, tmp_path / "one", steps=4, lr_decay_steps=4)
    run(one)
    sharded = replace(one, out=str(tmp_path / "fsdp"), fsdp=True)
    _torchrun(_overrides(replace(sharded, steps=2)))
    _torchrun(_overrides(sharded) + ["resume=true"])
    a, b = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_cli_prints_one_json_line_and_writes_a_loadable_model(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "preset=tiny", f"data={data}", f"out={out}", "steps=3", "batch_size=4",
            "clip_len=4", "val_batches=1", "progress=false", "threads=1", "+model.deep_depth=1"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["steps"] == 3 and math.isfinite(summary["val_bits_per_dim"])
    model = wf.WorldFlow.from_pretrained(out / "model")
    assert model.config.deep_depth == 1 and model.config.env_id == "CartPole-v1"
    assert model.start_frames.dtype == torch.uint8 and model.start_frames.shape[1:] == (16, 16, 3)
    training = model.info["training"]
    assert training["validation"]["val_bits_per_dim"] == summary["val_bits_per_dim"]
    # the recorded command parses back into the same configuration
    again = cli.parse(TrainConfig, shlex.split(training["command"])[2:], "worldflow_train_again")
    assert again == replace(TrainConfig(**training["config"]), progress=True)
