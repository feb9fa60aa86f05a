"""Anomaly scoring: worldflow against the baselines a user would reach for, on nine kinds.

    python benchmarks/anomaly.py [--model cartpole] [--baseline cartpole-frame-independent] ...

Held-out real CartPole episodes (seeds training never saw, played to `max_steps` with the
`mixed` policy) give the normal frames, each the last frame of a clip of the model's window
(the `window - 1` real frames and actions before it are its past). Every `every`-th frame
from the first full window on is also replaced, in a copy of its clip, by each kind:
- `frozen`: the frame before it again (time stands still),
- `skipped`: the frame `skip` steps later (time jumps ahead),
- `mirrored`: flipped left to right,
- `occluded`: a grey square of `occlusion` pixels over the cart's row, at a random column,
- `inverted`: colours inverted (255 - v),
- `blended`: half this frame, half the same step of another held-out episode,
- `shake`: the whole picture rolled by up to `shake` pixels each way (camera shake),
- `noise`: Gaussian sensor noise of `noise` levels std,
- `teleport`: the same step of another held-out episode (another state, a real picture).
A corrupted frame identical to the real one is no anomaly and is left out (counted in
`identical_left_out`): at the model's 32x96 pixels the cart often moves less than rounding
can show, so about a fifth of real frames equal the frame before and so do their `frozen`
copies.

Methods, each scoring a clip's last frame (higher: more anomalous):
- `worldflow`: `worldflow.scoring`'s anomaly, the larger of the robust z-scores of the log
  of the model's temperature-0 prediction error and of its stillness (that log minus the
  log of copy-last's error), both against the normal frames (no labels are used),
- `worldflow_bits`: the exact bits/dim alone (the env's surprise),
- `frame_independent`: bits/dim under the frame-independent flow (`--baseline`),
- `frame_difference`: mean squared difference to the frame before (= copy-last's error),
- `autoencoder`: reconstruction error of a convolutional autoencoder trained for
  `ae_seconds` on `ae_episodes` training-seed episodes.
Reported: AUROC and AUPRC (scikit-learn) of each kind against all normal frames for every
method, the best methods per kind (AUROCs within `TIE` of the best share it; many kinds are
perfect for several) and each method's mean and worst AUROC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from baselines.autoencoder import train_autoencoder
from baselines.heuristics import frame_difference, mean_squared
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm import tqdm

import worldflow as wf
from worldflow.benchmarking import benchmark_main, check_positive, load_baseline, load_cartpole_model, machine
from worldflow.data.collect import record_episode
from worldflow.scoring import FrameScores

TIE = 5e-4  # AUROCs this close share "best"
KINDS = ("frozen", "skipped", "mirrored", "occluded", "inverted", "blended", "shake", "noise", "teleport")


@dataclass
class Args:
    model: str = "cartpole"  # a shipped name or a directory from save_pretrained
    baseline: str = "cartpole-frame-independent"  # "" skips it
    episodes: int = 20  # held-out episodes
    seed: int = 20000  # first held-out episode seed (training used 0..299)
    max_steps: int = 300  # as the training episodes
    every: int = 10  # an anomaly of each kind at every this many frames
    skip: int = 3  # steps ahead, for `skipped`
    occlusion: int = 12  # square side in pixels, for `occluded`
    shake: int = 3  # largest roll in pixels each way, for `shake`
    noise: float = 24.0  # std in 8-bit levels, for `noise`
    ae_episodes: int = 40  # training-seed episodes for the autoencoder (0: skip it)
    ae_seconds: float = 120.0  # its wall-clock training budget
    batch: int = 32  # clips scored at once
    threads: int = 1
    out: str = ""  # e.g. benchmarks/results/anomaly.json


def corrupt(kind: str, frames: torch.Tensor, t: int, other: torch.Tensor, args: Args,
            rng: np.random.Generator) -> torch.Tensor | None:
    """Frame t of an episode's frames (T, H, W, 3) turned into `kind`, or None where the
    episode cannot give it (no frame `skip` steps later)."""
    frame = frames[t]
    h, w = frame.shape[:2]
    if kind == "frozen":
        return frames[t - 1]
    if kind == "skipped":
        return frames[t + args.skip] if t + args.skip < frames.shape[0] else None
    if kind == "mirrored":
        return frame.flip(1)
    if kind == "occluded":
        s = min(args.occlusion, h, w)
        top, left = (h - s) // 2, int(rng.integers(0, w - s + 1))
        out = frame.clone()
        out[top : top + s, left : left + s] = 128
        return out
    if kind == "inverted":
        return 255 - frame
    if kind == "blended":
        return ((frame.float() + other[min(t, other.shape[0] - 1)].float()) / 2).round().to(torch.uint8)
    if kind == "shake":
        dy, dx = (int(v) for v in rng.integers(-args.shake, args.shake + 1, 2))
        dx = dx or args.shake  # always some motion
        return torch.roll(frame, (dy, dx), dims=(0, 1))
    if kind == "noise":
        noisy = frame.float() + args.noise * torch.from_numpy(rng.standard_normal(frame.shape)).float()
        return noisy.clamp(0, 255).round().to(torch.uint8)
    if kind == "teleport":
        return other[min(t, other.shape[0] - 1)]
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def make_clips(episodes: list, args: Args, window: int, first: int) -> tuple[dict, dict]:
    """Per set ("normal" and each kind): clips (n, window, H, W, 3) uint8, their actions
    (n, window) and, for a kind, the index of the normal clip it was made from; and per kind
    how many corrupted frames were left out as identical to the real frame."""
    sets = {name: {"frames": [], "actions": [], "base": []} for name in ("normal", *KINDS)}
    identical = dict.fromkeys(KINDS, 0)
    rng = np.random.default_rng(args.seed)
    for e, ep in enumerate(episodes):
        frames, actions = ep["frames"], ep["actions"]
        other = episodes[(e + 1) % len(episodes)]["frames"]
        for t in range(first, ep.shape[0]):
            clip, acts = frames[t - window + 1 : t + 1], actions[t - window + 1 : t + 1]
            base = len(sets["normal"]["frames"])
            for key, value in (("frames", clip), ("actions", acts), ("base", base)):
                sets["normal"][key].append(value)
            if (t - first) % args.every:
                continue
            for kind in KINDS:
                frame = corrupt(kind, frames, t, other, args, rng)
                if frame is None:
                    continue
                if torch.equal(frame, frames[t]):
                    identical[kind] += 1
                    continue
                bad = clip.clone()
                bad[-1] = frame
                for key, value in (("frames", bad), ("actions", acts), ("base", base)):
                    sets[kind][key].append(value)
    out = {name: {"frames": torch.stack(s["frames"]), "actions": torch.stack(s["actions"]),
                  "base": torch.tensor(s["base"])} for name, s in sets.items() if s["frames"]}
    return out, identical


@torch.no_grad()
def last_bits(model: wf.WorldFlow, clips: dict, batch: int, desc: str) -> torch.Tensor:
    """bits/dim of each clip's last frame given the frames before it: (n,)."""
    frames, actions = clips["frames"], clips["actions"] if model.config.has_actions else None
    out = []
    for i in tqdm(range(0, frames.shape[0], batch), desc=desc, unit="batch"):
        acts = None if actions is None else actions[i : i + batch]
        out.append(model.log_prob(frames[i : i + batch], acts).bits_per_dim[:, -1])
    return torch.cat(out)


@torch.no_grad()
def predictions(model: wf.WorldFlow, clips: dict, batch: int) -> torch.Tensor:
    """The model's temperature-0 prediction of each clip's last frame from the rest: (n, H, W, 3)."""
    frames, actions = clips["frames"], clips["actions"] if model.config.has_actions else None
    out = []
    for i in tqdm(range(0, frames.shape[0], batch), desc="worldflow: predictions", unit="batch"):
        acts = None if actions is None else actions[i : i + batch, :-1]
        out.append(model.generate(1, context=frames[i : i + batch, :-1], actions=acts, temperature=0.0,
                                  seed=0)[:, 0])
    return torch.cat(out)


def method_scores(model, baseline, autoencoder, sets: dict, args: Args) -> dict[str, dict[str, torch.Tensor]]:
    """method -> set -> the score of each clip's last frame."""
    bits = {name: last_bits(model, s, args.batch, f"worldflow: {name}") for name, s in sets.items()}
    guess = predictions(model, sets["normal"], args.batch)
    measured = {name: (bits[name], mean_squared(s["frames"][:, -1], guess[s["base"]]),
                       frame_difference(s["frames"])) for name, s in sets.items()}
    normal = FrameScores.of(*measured["normal"])
    scores = {
        "worldflow": {name: FrameScores.of(*m, reference=normal).anomaly for name, m in measured.items()},
        "worldflow_bits": bits,
        "frame_difference": {name: frame_difference(s["frames"]) for name, s in sets.items()},
    }
    if baseline is not None:
        scores["frame_independent"] = {name: last_bits(baseline, s, args.batch, f"frame-independent: {name}")
                                       for name, s in sets.items()}
    if autoencoder is not None:
        scores["autoencoder"] = {name: autoencoder.score(s["frames"][:, -1]) for name, s in sets.items()}
    return scores


def evaluate(scores: dict[str, torch.Tensor]) -> dict:
    normal = scores["normal"]
    out = {}
    for kind in KINDS:
        if kind not in scores:
            continue
        bad = scores[kind]
        labels = np.r_[np.zeros(normal.numel()), np.ones(bad.numel())]
        values = torch.cat([normal, bad]).double().numpy()
        out[kind] = {"auroc": round(float(roc_auc_score(labels, values)), 4),
                     "auprc": round(float(average_precision_score(labels, values)), 4)}
    aurocs = [v["auroc"] for v in out.values()]
    out["mean_auroc"] = round(float(np.mean(aurocs)), 4)
    out["min_auroc"] = round(float(np.min(aurocs)), 4)
    return out


def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    check_positive(args, "every", "batch", "max_steps", "skip", "occlusion", "shake")
    if args.episodes < 2:  # blended and teleported frames come from another episode
        raise ValueError(f"episodes: expected at least 2, got {args.episodes}")
    model = load_cartpole_model(args.model)
    cfg = model.config

    def episodes(first_seed: int, count: int, desc: str) -> list:
        return [record_episode(cfg.env_id, seed=s, max_steps=args.max_steps, frame_size=cfg.frame_size,
                               crop=cfg.crop, policy="mixed")
                for s in tqdm(range(first_seed, first_seed + count), desc=desc, unit="ep")]

    held_out = episodes(args.seed, args.episodes, "held-out episodes")
    baseline = load_baseline(args.baseline, model).eval() if args.baseline else None
    autoencoder, ae_summary = None, None
    if args.ae_episodes:
        train = torch.cat([ep["frames"] for ep in episodes(0, args.ae_episodes, "autoencoder episodes")])
        autoencoder, ae_summary = train_autoencoder(train, args.ae_seconds)
    sets, identical = make_clips(held_out, args, cfg.max_frames, first=max(cfg.max_frames - 1, 1))
    scores = method_scores(model, baseline, autoencoder, sets, args)
    results = {method: evaluate(s) for method, s in scores.items()}
    kinds = [k for k in KINDS if k in sets]
    top = {k: max(results[m][k]["auroc"] for m in results) for k in kinds}
    best = {k: [m for m in results if results[m][k]["auroc"] >= top[k] - TIE] for k in kinds}
    return {
        "benchmark": "anomaly",
        "model_path": args.model,
        "baseline_path": args.baseline or None,
        "seeds": [args.seed, args.seed + args.episodes - 1],
        "normal_frames": int(sets["normal"]["frames"].shape[0]),
        "anomalies_per_kind": {k: int(sets[k]["frames"].shape[0]) for k in kinds},
        "identical_left_out": {k: n for k, n in identical.items() if n},
        "methods": results,
        "best_per_kind": best,
        "worldflow_best_share": round(sum("worldflow" in best[k] for k in kinds) / len(kinds), 4),
        "worldflow_alone_best_share": round(sum(best[k] == ["worldflow"] for k in kinds) / len(kinds), 4),
        "autoencoder_training": ae_summary,
        "seconds": round(time.perf_counter() - t_start, 2),
        **machine(),
    }


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
