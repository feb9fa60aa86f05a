"""Long-horizon consistency: open-loop rollouts against a recurrent world model and copy-last.

    python benchmarks/consistency.py [--model cartpole] [--horizon 64] [--rssm_seconds 600] ...

From `context` real frames of held-out CartPole episodes (seeds training never saw, the
`mixed` policy, long enough for the horizon), each method predicts the next `horizon`
frames open loop under the real actions: worldflow at temperature 0, a Dreamer-style RSSM
(`baselines/rssm.py`, TorchRL's modules, trained for `rssm_seconds` on `rssm_episodes`
training-seed episodes) from its posterior, and copy-last. Per horizon: the state read back
from the pixels by the CartPole reader against the true state (cart position in model
pixels, pole angle in degrees; NaN reads are left out and counted), PSNR (of the mean
squared error over rollouts) and SSIM (torchmetrics) to the real frames.

Then two `dream_frames`-frame dreams from a real start: one under random actions (p = 1/2
each), one closed loop under the shipped policy learned in the dream (`policy.json` beside
the model: it reads each imagined frame and chooses the next action, as an agent rolling
out its imagination does). For each, its cart position and mean intensity per frame
against the range of the real held-out frames, and the longest run of frames that do not
change (a frozen dream). A real pole under random actions falls within about 20 steps
and the episode ends; the random dream runs on into states no real episode reaches, so
only the policy's dream has a real range to stay in (the real policy keeps the pole up
for 500 steps).
Prints one JSON line; `--out` also writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from baselines.heuristics import copy_last
from baselines.rssm import train_rssm
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm import tqdm

from worldflow.agents.episodes import shipped_policy
from worldflow.agents.imagined import LinearPolicy, PolicyAgent
from worldflow.benchmarking import benchmark_main, check_positive, load_cartpole_model, machine
from worldflow.codec import model_to_frames
from worldflow.data.cartpole_reader import cartpole_pixels_per_unit, read_cartpole_state
from worldflow.data.collect import record_episode
from worldflow.data.preprocess import model_preprocessing
from worldflow.generation import denoising_at


@dataclass
class Args:
    model: str = "cartpole"
    episodes: int = 12  # held-out episodes with at least context + horizon frames
    seed: int = 30000  # first held-out seed tried (training used 0..299)
    max_steps: int = 300
    context: int = 4
    horizon: int = 64
    starts_per_episode: int = 3
    summary_horizons: int = 16  # "beats at every horizon 1..this"
    rssm_episodes: int = 60  # training-seed episodes for the RSSM (0: skip it)
    rssm_seconds: float = 600.0
    dream_frames: int = 1000
    denoise: str = "auto"  # after each worldflow frame: auto (none at temperature 0), true, false, exact
    still_threshold: float = 0.5  # mean squared pixel change under which a frame "did not change"
    batch: int = 16
    threads: int = 2
    out: str = ""


def held_out(cfg, args: Args) -> list:
    need, found = args.context + args.horizon, []
    for seed in tqdm(range(args.seed, args.seed + 50 * args.episodes), desc="held-out episodes", unit="ep"):
        ep = record_episode(cfg.env_id, seed=seed, max_steps=args.max_steps, frame_size=cfg.frame_size,
                            crop=cfg.crop, policy="mixed")
        if ep.shape[0] >= need:
            found.append(ep)
        if len(found) == args.episodes:
            return found
    raise ValueError(f"episodes: expected {args.episodes} held-out episodes of {need} frames, "
                     f"found {len(found)}")


def starts(episodes: list, args: Args) -> dict:
    """context (n, C, H, W, 3), actions (n, C + horizon - 1), truth frames (n, horizon, ...)
    and true states (n, horizon, S)."""
    need, out = args.context + args.horizon, {"context": [], "actions": [], "truth": [], "state": []}
    for ep in episodes:
        for s in np.linspace(0, ep.shape[0] - need, args.starts_per_episode).round().astype(int):
            c = s + args.context
            out["context"].append(ep["frames"][s:c])
            out["actions"].append(ep["actions"][s : c + args.horizon - 1])
            out["truth"].append(ep["frames"][c : c + args.horizon])
            out["state"].append(ep["state"][c : c + args.horizon])
    return {k: torch.stack(v) for k, v in out.items()}


def per_horizon(pred: torch.Tensor, data: dict, geometry) -> dict:
    """State-reader errors, PSNR and SSIM per horizon of predicted frames (n, horizon, ...)."""
    size, crop, px_per_m = geometry
    x, theta = read_cartpole_state(pred, size, crop)
    x_err = (x - data["state"][..., 0]).abs() * px_per_m
    theta_err = torch.rad2deg((theta - data["state"][..., 2]).abs())
    n, h = pred.shape[:2]
    p = pred.permute(0, 1, 4, 2, 3).float() / 255
    t = data["truth"].permute(0, 1, 4, 2, 3).float() / 255
    mse = (p - t).pow(2).mean(dim=(0, 2, 3, 4))  # over rollouts and pixels, per horizon
    psnr = [None if m == 0 else round(float(10 * torch.log10(1 / m)), 3) for m in mse]
    ssim = [round(float(structural_similarity_index_measure(p[:, k], t[:, k], data_range=1.0)), 4)
            for k in range(h)]
    return {"cart_px": _nanmean(x_err), "pole_deg": _nanmean(theta_err), "psnr_db": psnr, "ssim": ssim,
            "nan_reads": int(x_err.isnan().sum() + theta_err.isnan().sum())}


def _nanmean(err: torch.Tensor) -> list:
    return [None if np.isnan(v) else round(float(v), 4) for v in err.nanmean(dim=0).tolist()]


@torch.no_grad()
def random_dream(model, context: torch.Tensor, frames: int, denoise: bool | str = "auto") -> torch.Tensor:
    """`frames` new frames (T, H, W, 3) after uint8 `context` (C, H, W, 3) under random actions."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randint(0, 2, (1, context.shape[0] + frames - 1), generator=gen)
    return model.generate(frames, context=context[None], actions=acts, temperature=0.0, seed=0,
                          denoise=denoise)[0]


@torch.no_grad()
def policy_dream(model, context: torch.Tensor, context_actions: torch.Tensor, frames: int,
                 policy: LinearPolicy, denoise: bool | str = "auto") -> torch.Tensor:
    """`frames` new frames after `context`, each action chosen by `policy` from the two frames before it."""
    state = model.start(1, context[None], context_actions[None, : context.shape[0] - 1], seed=0)
    agent, video = PolicyAgent(model, policy), []
    agent.reset(context[-2].numpy())
    agent.observe(context[-1].numpy(), None)
    for _ in tqdm(range(frames), desc="policy dream", unit="frame", leave=False):
        x, _ = model.step(state, torch.tensor([agent.act()]), temperature=0.0, denoise=denoise)
        video.append(model_to_frames(x[:, None])[0, 0].numpy())
        agent.observe(video[-1], None)
    return torch.from_numpy(np.stack(video))


def dream_statistics(video: torch.Tensor, seconds: float, episodes: list, args: Args, geometry) -> dict:
    """A long dream's cart position and mean intensity against the real frames' range."""
    real = torch.cat([ep["frames"] for ep in episodes])
    real_x, real_theta = read_cartpole_state(real, geometry[0], geometry[1])
    real_mean = real.float().mean(dim=(1, 2, 3))
    x, theta = read_cartpole_state(video, geometry[0], geometry[1])
    mean = video.float().mean(dim=(1, 2, 3))
    lo_x, hi_x = np.nanmin(real_x.numpy()), np.nanmax(real_x.numpy())
    in_x = ((x >= lo_x) & (x <= hi_x)).float().mean().item()
    in_mean = ((mean >= real_mean.min()) & (mean <= real_mean.max())).float().mean().item()
    outside = torch.maximum(real_mean.min() - mean, mean - real_mean.max()).clamp_min(0)
    lo_t, hi_t = np.nanmin(real_theta.numpy()), np.nanmax(real_theta.numpy())
    in_theta = ((theta >= lo_t) & (theta <= hi_t)).float().mean().item()
    change = (video[1:].float() - video[:-1].float()).pow(2).mean(dim=(1, 2, 3))
    still = (change < args.still_threshold).tolist()
    longest = run = 0
    for s in still:
        run = run + 1 if s else 0
        longest = max(longest, run)
    return {
        "frames": args.dream_frames,
        "cart_x_in_real_range": round(in_x, 4),
        "cart_x_unread": round(x.isnan().float().mean().item(), 4),
        "mean_intensity_in_real_range": round(in_mean, 4),
        "mean_intensity_furthest_outside": round(outside.max().item(), 4),  # 8-bit levels
        "mean_intensity_range_real": [round(real_mean.min().item(), 3), round(real_mean.max().item(), 3)],
        "pole_angle_in_real_range": round(in_theta, 4),
        "pole_deg_range_dream": _span(np.degrees(theta.numpy())),
        "pole_deg_range_real": [_round(np.degrees(lo_t)), _round(np.degrees(hi_t))],
        "cart_x_range_dream": _span(x.numpy()),
        "cart_x_range_real": [_round(lo_x), _round(hi_x)],
        "longest_still_run": longest,
        "ms_per_frame": round(1000 * seconds / args.dream_frames, 1),
    }


def _span(values: np.ndarray) -> list:
    """[min, max] of the values read (NaN: unread), [None, None] if none was."""
    read = values[~np.isnan(values)]
    return [_round(read.min()), _round(read.max())] if read.size else [None, None]


def _round(v) -> float | None:
    return None if np.isnan(v) else round(float(v), 3)


def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    check_positive(args, "episodes", "context", "horizon", "starts_per_episode", "dream_frames", "batch")
    model = load_cartpole_model(args.model)
    cfg = model.config
    size, crop = model_preprocessing(cfg)
    geometry = (size, crop, cartpole_pixels_per_unit(size, crop))
    denoise = {"true": True, "false": False}.get(args.denoise.lower(), args.denoise)
    denoising_at(denoise, 0.0)  # a bad --denoise fails here, before any work
    episodes = held_out(cfg, args)
    data = starts(episodes, args)

    predictions, seconds = {}, {}
    t0 = time.perf_counter()
    with torch.no_grad():
        parts = [model.generate(args.horizon, context=data["context"][i : i + args.batch],
                                actions=data["actions"][i : i + args.batch], temperature=0.0, seed=0,
                                denoise=denoise)
                 for i in tqdm(range(0, len(data["context"]), args.batch), desc="worldflow rollouts")]
    predictions["worldflow"], seconds["worldflow"] = torch.cat(parts), time.perf_counter() - t0
    rssm_summary = None
    if args.rssm_episodes:
        train = [record_episode(cfg.env_id, seed=s, max_steps=args.max_steps, frame_size=cfg.frame_size,
                                crop=cfg.crop, policy="mixed")
                 for s in tqdm(range(args.rssm_episodes), desc="rssm episodes", unit="ep")]
        rssm, rssm_summary = train_rssm(train, cfg.num_actions, cfg.frame_size, args.rssm_seconds)
        t0 = time.perf_counter()
        predictions["rssm"] = rssm.predict(data["context"], data["actions"], args.horizon)
        seconds["rssm"] = time.perf_counter() - t0
    predictions["copy_last"] = copy_last(data["context"], args.horizon)
    results = {name: per_horizon(pred, data, geometry) for name, pred in predictions.items()}

    def measured(dream) -> dict:
        t0 = time.perf_counter()
        video = dream()
        return dream_statistics(video, time.perf_counter() - t0, episodes, args, geometry)

    context, context_actions = episodes[0]["frames"][: args.context], episodes[0]["actions"][: args.context]
    random_stats = measured(lambda: random_dream(model, context, args.dream_frames, denoise))
    policy = shipped_policy(model)  # None for a model without one: no policy dream
    policy_stats = None if policy is None else measured(lambda: policy_dream(
        model, context, context_actions, args.dream_frames, LinearPolicy.load(policy), denoise))

    k = min(args.summary_horizons, args.horizon)
    beats = {}
    for other in (m for m in results if m != "worldflow"):
        for q in ("cart_px", "pole_deg"):
            ours, theirs = results["worldflow"][q][:k], results[other][q][:k]
            beats[f"{q}_beats_{other}_1_to_{k}"] = all(
                a is not None and b is not None and a < b for a, b in zip(ours, theirs))
    return {
        "benchmark": "consistency",
        "model": args.model,
        "rollouts": int(data["context"].shape[0]),
        "context": args.context,
        "horizon": args.horizon,
        "denoise": args.denoise,
        "methods": results,
        "summary": beats,
        "rollout_seconds": {m: round(s, 2) for m, s in seconds.items()},
        "rssm_training": rssm_summary,
        "dream": random_stats,
        "dream_policy": policy_stats,
        "seconds": round(time.perf_counter() - t_start, 1),
        **machine(),
    }


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
