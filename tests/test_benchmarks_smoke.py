"""Smoke test of the benchmark scripts: they run end to end and print the keys they promise.

A tiny randomized CartPole-shaped model with tiny settings: seconds, no claims on quality.
"""

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build

import worldflow as wf
from worldflow.data.collect import record_episode
from worldflow.data.preprocess import CARTPOLE_CROP

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    if str(BENCHMARKS) not in sys.path:  # as `python benchmarks/NAME.py` would: baselines/ imports
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cartpole_dir(tmp_path):
    """A randomized tiny CartPole world model (16 x 48 frames, heads) saved to a folder."""
    model = build(
        seed=5, frame_size=(16, 48), num_actions=2, env_id="CartPole-v1", crop=CARTPOLE_CROP, task_heads=True
    )
    return str(model.save_pretrained(tmp_path / "model"))


def test_likelihood_benchmark_smoke(cartpole_dir, tmp_path):
    bench = load_script("likelihood")
    args = bench.Args(
        model=cartpole_dir,
        baseline=cartpole_dir,
        episodes=2,
        max_steps=12,
        context=2,
        horizons=3,
        summary_from=2,
        control_horizon=2,
        samples=1,
        starts_per_episode=1,
        batch=2,
        termination_episodes=1,
        track_end=0.02,  # the cart of a 12-step episode stays near the centre; both places get frames
        excess_map=str(tmp_path / "maps" / "excess.png"),
        threads=torch.get_num_threads(),
    )
    result = bench.run(args)
    json.dumps(result, allow_nan=False)  # one valid JSON line: NaN became null

    assert result["benchmark"] == "likelihood"
    assert {"likelihood", "reader", "dynamics", "action_control", "pixels", "termination", "seconds"} <= set(
        result
    )
    lik = result["likelihood"]
    for key in (
        "bits_per_dim_all_frames",
        "bits_per_dim_frames_from_1",
        "noise_floor_bits_per_dim",
        "excess_all_frames",
        "excess_frames_from_1",
        "excess_reduction_frames_from_1",
    ):
        assert isinstance(lik[key], float), key
    assert math.isclose(
        lik["noise_floor_bits_per_dim"],
        0.5 * math.log2(2 * math.pi * math.e * (127.5 * 0.05) ** 2),
        rel_tol=1e-3,
    )
    assert isinstance(lik["baseline"]["excess_frames_from_1"], float)
    assert abs(lik["excess_reduction_frames_from_1"]) < 1e-6  # the baseline is the model itself
    assert lik["gain_over_baseline_bits_per_frame"] == 0
    split = lik["excess_frames_from_1_bits_per_frame"]  # the exact per-pixel split adds up
    dims = 3 * result["frame_size"][0] * result["frame_size"][1]
    assert split["foreground"] + split["background"] == pytest.approx(
        lik["excess_frames_from_1"] * dims, abs=0.1 + 5e-5 * dims  # the figures are rounded
    )
    assert 0 < split["foreground_dims"] < dims
    places, later = lik["excess_frames_from_1_by_cart_place"], lik["frames"] - args.episodes
    assert sum(part["frames"] for part in places.values()) == later
    assert all(part["frames"] > 0 for part in places.values())
    mean = sum(part["frames"] * part["bits_per_frame"] for part in places.values()) / later
    assert mean == pytest.approx(lik["excess_frames_from_1"] * dims, abs=0.1 + 5e-5 * dims)
    assert lik["excess_reduction_median_frame"] == 0  # the same model
    assert lik["excess_reduction_by_cart_place"] == {"track_centre": 0, "track_ends": 0}
    top, (height, width) = lik["excess_top_pixels"], result["frame_size"]  # 1% of the positions
    assert top["pixels"] == round(0.01 * height * width) == len(top["where"])
    assert top == lik["baseline"]["excess_top_pixels"]  # the same model
    assert all(0 <= r < height and 0 <= c < width for r, c in top["where"])
    assert (tmp_path / "maps" / "excess.png").stat().st_size > 0
    assert result["excess_map"].endswith("excess.png")
    info = lik["frame_entropy"]  # over the held-out and the termination episodes' frames
    assert info["frames"] > result["episode_frames"]["total"] and 1 <= info["distinct"] <= info["frames"]
    assert 0 <= info["plug_in_bits"] <= info["chao_shen_bits"] + 1e-9
    assert info["plug_in_bits"] <= math.log2(info["distinct"]) + 0.01  # rounded to 2 places

    fg = torch.zeros(2, 16, 16, dtype=torch.bool)  # 2x2 patches of 8: one fg pixel a frame
    fg[0, 3, 12], fg[1, 9, 2] = True, True  # top right patch, then bottom left
    empty = bench.empty_patches(fg, 8)[0]
    assert empty[:8, :8].all() and empty[8:, 8:].all() and not empty[:8, 8:].any() and not empty[8:, :8].any()
    assert {"empty_patches", "empty_patches_without_past"} <= set(split)
    excess = torch.zeros(10, 10)  # one hot pixel carries half the frame's excess
    excess[3, 7], excess[0, :9] = 9.0, 1.0
    top = bench.top_pixels(excess)
    assert top["pixels"] == 1 and top["where"] == [[3, 7]] and top["share"] == pytest.approx(0.5)

    reader = result["reader"]
    assert reader["frames"] == result["episode_frames"]["total"]
    assert isinstance(reader["x_nan"], int) and isinstance(reader["theta_nan"], int)

    dyn = result["dynamics"]
    assert dyn["starts"] == 2 and dyn["horizons"] == [1, 2, 3]
    for key in (
        "x_error_px_t0",
        "theta_error_deg_t0",
        "x_error_px_t1",
        "theta_error_deg_t1",
        "x_error_px_copy_last",
        "theta_error_deg_copy_last",
    ):
        assert len(dyn[key]) == 3 and all(v is None or isinstance(v, float) for v in dyn[key]), key
    assert set(dyn["summary"]) >= {
        "horizons",
        "x_over_copy_last_t0",
        "x_beats_copy_last_all_t0",
        "theta_over_copy_last_t1",
        "theta_beats_copy_last_all_t1",
    }

    control = result["action_control"]
    assert control["horizon"] == 2
    assert isinstance(control["reversed_worse_x"], bool)

    pixels = result["pixels"]
    assert len(pixels["band_rows"]) == 2
    for temp in ("t0", "t1"):
        assert set(pixels[temp]) == {"psnr", "ssim", "psnr_band", "ssim_band", "psnr_foreground"}
        assert all(len(v) == 3 for v in pixels[temp].values())

    term = result["termination"]
    assert isinstance(term["positives"], int) and term["episodes"] == 3
    assert term["transitions"] > result["episode_frames"]["total"] - 2  # plus the extra episode
    assert term["balanced_accuracy"] is None or 0 <= term["balanced_accuracy"] <= 1


def test_anomaly_benchmark_smoke(cartpole_dir):
    bench = load_script("anomaly")
    args = bench.Args(model=cartpole_dir, baseline=cartpole_dir, episodes=2, max_steps=20, every=5,
                      ae_episodes=1, ae_seconds=1.0, batch=4, threads=torch.get_num_threads())
    result = bench.run(args)
    json.dumps(result, allow_nan=False)
    methods = result["methods"]
    assert set(methods) == {"worldflow", "worldflow_bits", "frame_independent", "frame_difference",
                            "autoencoder"}
    assert methods["frame_independent"] == methods["worldflow_bits"]  # the same model, the same frames
    first = 7  # the tiny model's window is 8 frames
    episodes = [  # the same episodes, played here
        record_episode("CartPole-v1", seed=s, max_steps=20, frame_size=(16, 48), crop=CARTPOLE_CROP,
                       policy="mixed")["frames"]
        for s in (args.seed, args.seed + 1)
    ]
    steps = [(t, f) for f in episodes for t in range(first, len(f))]
    assert result["normal_frames"] == len(steps)
    marked = [(t, f) for t, f in steps if (t - first) % args.every == 0]
    counts, left_out = result["anomalies_per_kind"], result["identical_left_out"]
    # a frozen or skipped frame equal to the real one is no anomaly: left out, counted
    same = {"frozen": sum(torch.equal(f[t - 1], f[t]) for t, f in marked),
            "skipped": sum(t + args.skip < len(f) and torch.equal(f[t + args.skip], f[t]) for t, f in marked)}
    assert left_out == {k: n for k, n in same.items() if n}
    assert counts["skipped"] == sum(t + args.skip < len(f) for t, f in marked) - same["skipped"]
    assert counts["frozen"] == len(marked) - same["frozen"]
    assert all(counts[k] == len(marked) for k in bench.KINDS if k not in same)
    for method in methods.values():
        assert all(0 <= method[k]["auroc"] <= 1 and 0 <= method[k]["auprc"] <= 1 for k in counts)
    # a frozen frame differs from the one before by nothing: the least anomalous to frame difference
    assert methods["frame_difference"]["frozen"]["auroc"] <= 0.5
    assert methods["frame_difference"]["inverted"]["auroc"] > 0.9
    for bad in ({"episodes": 1}, {"skip": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bench.run(bench.Args(model=cartpole_dir, **bad))


def test_anomaly_kinds_are_the_named_corruptions():
    bench = load_script("anomaly")
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (6, 16, 24, 3), generator=gen, dtype=torch.uint8)
    other = torch.randint(0, 256, (4, 16, 24, 3), generator=gen, dtype=torch.uint8)
    args, rng = bench.Args(skip=2), np.random.default_rng(0)

    def bad(kind, t=3):
        return bench.corrupt(kind, frames, t, other, args, rng)

    assert torch.equal(bad("frozen"), frames[2]) and torch.equal(bad("skipped"), frames[5])
    assert bad("skipped", t=4) is None  # no frame 2 steps after the episode's last but one
    assert torch.equal(bad("mirrored").flip(1), frames[3]) and torch.equal(255 - bad("inverted"), frames[3])
    assert torch.equal(bad("teleport"), other[3]) and torch.equal(bad("teleport", t=5), other[3])
    assert (bad("blended").float() - (frames[3].float() + other[3].float()) / 2).abs().max() <= 0.5
    shaken = bad("shake")
    assert not torch.equal(shaken, frames[3])  # a roll moves every pixel and keeps them all
    assert sorted(shaken.flatten().tolist()) == sorted(frames[3].flatten().tolist())
    hidden = bad("occluded") != frames[3]
    assert 0 < hidden.any(-1).sum() <= args.occlusion**2
    assert abs((bad("noise").float() - frames[3].float()).std().item() - args.noise) < 0.3 * args.noise
    with pytest.raises(ValueError, match="kind"):
        bad("melted")


def test_planning_benchmark_smoke(cartpole_dir):
    bench = load_script("planning")
    args = bench.Args(model=cartpole_dir, agents="cem,random", episodes=2, max_steps=4, horizon=2,
                      candidates=4, agreement_states=2, threads=torch.get_num_threads())
    result = bench.run(args)
    json.dumps(result, allow_nan=False)
    assert result["benchmark"] == "planning" and result["seeds"] == [args.seed, args.seed + 1]
    for name in ("cem", "random"):
        part = result[name]
        assert len(part["returns"]) == 2 and all(1 <= r <= 4 for r in part["returns"])
        assert part["mean_return"] == pytest.approx(sum(part["returns"]) / 2, abs=0.05)
        assert part["seconds_per_step"] > 0
    agree = result["cheap_vs_full"]
    assert agree["states"] == 2 and agree["agreement"] in (0.0, 0.5, 1.0)
    assert result["cem_true_dynamics"]["returns"] == [4.0, 4.0]  # no pole falls within 4 steps


def test_planner_with_true_dynamics_balances_where_random_actions_fall():
    """The benchmark's perfect-model reference: CEM's one round over CartPole's true dynamics,
    scored by the pole, keeps the pole up for 150 steps; random actions last ~20."""
    bench = load_script("planning")
    args = bench.Args(episodes=2, max_steps=150, horizon=8, candidates=16, top_k=3)
    assert bench.cem_with_true_dynamics(args)["returns"] == [150.0, 150.0]


def test_generation_benchmark_smoke(tmp_path):
    bench = load_script("generation")
    model = build(seed=3, frame_size=(32, 32), patch_size=8, text_dim=16, text_len=72, max_frames=4,
                  context_frames=2)
    path = str(model.save_pretrained(tmp_path / "shapes"))
    result = bench.run(bench.Args(model=path, clips=2, long_factor=5, threads=1))
    json.dumps(result, allow_nan=False)
    shares = [*result["text_to_video"]["guided"].values(), *result["video_to_video"].values(),
              result["image_to_video"]["motion_as_captioned"], result["long_video"]["objects_present_4x"]]
    assert all(0.0 <= v for v in shares)
    assert result["long_video"]["frames"] == 20 and "objects_present_5x" in result["long_video"]
    # a perfect model's first frame after the image differs from it by the world's motion alone
    assert 10 < result["image_to_video"]["psnr_true_next_to_image"] < 40
    with pytest.raises(ValueError, match="model: expected a text model"):
        bench.run(bench.Args(model=str(build(seed=0).save_pretrained(tmp_path / "plain")), clips=1))


def test_consistency_benchmark_smoke(cartpole_dir):
    from worldflow.agents.imagined import LinearPolicy

    bench = load_script("consistency")
    LinearPolicy([0.0, 1.0, 0.0, 0.5], 0.0).save(Path(cartpole_dir) / "policy.json")  # for the closed loop
    args = bench.Args(model=cartpole_dir, episodes=2, max_steps=30, context=2, horizon=4,
                      starts_per_episode=2, summary_horizons=3, rssm_episodes=2, rssm_seconds=1.0,
                      dream_frames=12, batch=4, threads=torch.get_num_threads())
    result = bench.run(args)
    json.dumps(result, allow_nan=False)
    assert result["rollouts"] == 4 and set(result["methods"]) == {"worldflow", "rssm", "copy_last"}
    for method in result["methods"].values():
        assert len(method["psnr_db"]) == len(method["ssim"]) == len(method["cart_px"]) == 4
    # copy-last scored independently: the last context frame against each real next frame
    episodes = bench.held_out(wf.WorldFlow.from_pretrained(cartpole_dir).config, args)
    data = bench.starts(episodes, args)
    last = data["context"][:, -1].float() / 255
    for k in range(4):
        truth = data["truth"][:, k].float() / 255
        psnr = 10 * torch.log10(1 / (last - truth).pow(2).mean())
        assert abs(result["methods"]["copy_last"]["psnr_db"][k] - float(psnr)) < 1e-3
    assert set(result["summary"]) == {f"{q}_beats_{m}_1_to_3" for q in ("cart_px", "pole_deg")
                                      for m in ("rssm", "copy_last")}
    for dream in (result["dream"], result["dream_policy"]):
        assert dream["frames"] == 12 and 0 <= dream["longest_still_run"] <= 11
        assert 0 <= dream["mean_intensity_in_real_range"] <= 1 and 0 <= dream["pole_angle_in_real_range"] <= 1
        assert (dream["mean_intensity_furthest_outside"] == 0) == (dream["mean_intensity_in_real_range"] == 1)
    assert result["denoise"] == "auto"
    with pytest.raises(wf.WorldFlowError, match="denoise"):
        bench.run(dataclasses.replace(args, denoise="sharp"))


def test_rssm_learns_its_training_clips():
    sys.path.insert(0, str(BENCHMARKS))
    from baselines.rssm import RSSM

    torch.manual_seed(0)
    episodes = [record_episode("CartPole-v1", seed=s, max_steps=20, frame_size=(16, 48), crop=CARTPOLE_CROP)
                for s in (0, 1)]
    frames = torch.stack([ep["frames"][:8] for ep in episodes])
    actions = torch.stack([ep["actions"][:8] for ep in episodes])
    model = RSSM(2, (16, 48), state_dim=8, hidden=32, channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = model.loss(frames, actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    pred = model.predict(frames[:, :3], actions, 5)
    assert pred.shape == (2, 5, 16, 48, 3) and pred.dtype == torch.uint8


def test_bench_report_tables_every_method_and_kind(cartpole_dir, tmp_path, capsys):
    from worldflow.cli import main

    results = tmp_path / "results"
    results.mkdir()
    anomaly = load_script("anomaly").run(load_script("anomaly").Args(
        model=cartpole_dir, baseline="", episodes=2, max_steps=16, every=4, ae_episodes=0, batch=8))
    consistency = load_script("consistency").run(load_script("consistency").Args(
        model=cartpole_dir, episodes=1, max_steps=30, context=2, horizon=3, starts_per_episode=1,
        rssm_episodes=0, dream_frames=4))
    for name, result in (("anomaly", anomaly), ("consistency", consistency), ("sampling", {"ms": 1.0})):
        (results / f"{name}.json").write_text(json.dumps(result))
    assert main(["bench", "report_only=true", f"results={results}"]) == 0
    report = (results / "REPORT.md").read_text()
    for kind in load_script("anomaly").KINDS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {kind} |"))
        assert row.count("/") == 3  # worldflow, worldflow_bits, frame_difference: AUROC / AUPRC each
    assert "| copy_last |" in report and "| worldflow |" in report and '"ms": 1.0' in report
    assert "| worst AUROC |" in report
    assert all((results / f).stat().st_size > 0 for f in ("anomaly_auroc.png", "consistency.png"))
    assert main(["bench", "only=[nope]", f"results={results}"]) == 2
    assert "only" in capsys.readouterr().err
    assert main(["bench", "only=[sampling]", f"scripts={tmp_path}", f"results={results}"]) == 2
    assert "scripts" in capsys.readouterr().err


def test_bench_skips_a_benchmark_whose_model_is_not_shipped(tmp_path, monkeypatch, capsys):
    import worldflow.bench as bench
    from worldflow.cli import main

    monkeypatch.setattr(bench, "ASSETS", tmp_path / "assets")  # no shapes model there
    monkeypatch.setattr(bench, "QUICK", {"generation": bench.QUICK["generation"]})
    results = tmp_path / "results"
    out = bench.run(bench.BenchConfig(scripts=str(BENCHMARKS), results=str(results)))
    assert out["ran"] == [] and "shapes" in out["skipped"]["generation"]
    assert "Skipped `generation.py`: no shipped 'shapes' model" in (results / "REPORT.md").read_text()
    assert main(["bench", "only=[generation]", f"scripts={BENCHMARKS}", f"results={results}"]) == 2
    err = capsys.readouterr().err
    assert "only" in err and "'shapes' model" in err


def test_autoencoder_reconstructs_better_than_the_mean_frame():
    """The baseline must learn frames, not their average (a tanh output once kept it above it)."""
    sys.path.insert(0, str(BENCHMARKS))
    from baselines.autoencoder import train_autoencoder

    frames = torch.cat([record_episode("CartPole-v1", seed=s, max_steps=60, frame_size=(16, 48),
                                       crop=CARTPOLE_CROP)["frames"] for s in (0, 1, 2)])
    # a fixed number of steps, not seconds: on a loaded machine 8 s were too few steps to pass
    steps = 400
    model, summary = train_autoencoder(frames, seconds=math.inf, max_steps=steps)
    mean_frame = (frames.float() - frames.float().mean(0)).pow(2).mean()
    assert summary["steps"] == steps
    assert model.score(frames).mean() < 0.9 * mean_frame


def test_benchmark_flags_read_true_and_false(monkeypatch, capsys):
    from dataclasses import dataclass

    from worldflow.benchmarking import benchmark_main

    @dataclass
    class Args:
        denoise: bool = True
        clips: int = 2

    def parsed(*argv):
        monkeypatch.setattr(sys, "argv", ["bench", *argv])
        return benchmark_main(Args, lambda a: {"denoise": a.denoise, "clips": a.clips}, "A test.")

    assert parsed() == {"denoise": True, "clips": 2}
    assert parsed("--denoise", "false", "--clips", "3") == {"denoise": False, "clips": 3}
    assert parsed("--denoise", "True") == {"denoise": True, "clips": 2}
    with pytest.raises(SystemExit):
        parsed("--denoise", "maybe")
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err
