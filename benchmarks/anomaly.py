"""Anomaly scoring by likelihood: the world model against the frame-independent baseline.

    python benchmarks/anomaly.py [--model cartpole] [--baseline cartpole-frame-independent] ...

Held-out real CartPole episodes (seeds training never saw, played to `max_steps` with the
`mixed` policy) give the normal frames. A frame's anomaly score is its bits/dim under
`WorldFlow.log_prob` (clean frames, as the env's surprise), scored as the last frame of a
clip of the model's attention window: the `window - 1` real frames and the actions before
it are its past (a frame-independent model's window is one frame). Every `every`-th frame
from the first full window on is also replaced, in a copy of its clip, by an anomaly:
- `shift`: the frame rolled `shift` pixels sideways (the cart jumps),
- `rewind`: the frame `rewind` steps earlier (the cart goes back),
- `teleport`: the frame at the same step of the next held-out episode (another state).
Each is a real or plausible picture on its own; only the frames before it say it is wrong.

Reported per model: the AUROC of each kind against all normal frames (scikit-learn), and,
at the threshold that passes `pass_rate` of the normal frames with the cart near the
track's centre (|x| < `track_end` m, the true state), the share of each kind caught and of
the normal frames with the cart at the track's ends flagged. Few training frames lie at
the ends (3% beyond 1.5 m); there a frame-independent flow can fail, and its alarms are
false ones on legitimate states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

import worldflow as wf
from worldflow.benchmarking import benchmark_main, load_baseline, machine
from worldflow.data.collect import record_episode

KINDS = ("shift", "rewind", "teleport")


@dataclass
class Args:
    model: str = "cartpole"  # a shipped name or a directory from save_pretrained
    baseline: str = "cartpole-frame-independent"  # "" skips it
    episodes: int = 20  # held-out episodes
    seed: int = 20000  # first held-out episode seed (training used 0..299)
    max_steps: int = 300  # as the training episodes; long runs reach the track's ends
    every: int = 10  # an anomaly of each kind at every this many frames
    shift: int = 8  # pixels, for `shift`
    rewind: int = 4  # steps back, for `rewind`
    track_end: float = 1.5  # |cart x| (m) from which a normal frame counts as at the track's ends
    pass_rate: float = 0.99  # share of the centre's normal frames under the alarm threshold
    batch: int = 32  # clips scored at once
    threads: int = 1
    out: str = ""  # e.g. benchmarks/results/anomaly.json


def make_clips(episodes: list, args: Args, window: int, first: int) -> tuple[dict, torch.Tensor]:
    """Per set, "normal" (every frame from step `first` on) and each kind, the clips
    (n, window, H, W, 3) uint8 ending at those frames and their actions (n, window); and
    the true cart x (n,) at the normal frames."""
    sets = {name: {"frames": [], "actions": []} for name in ("normal", *KINDS)}
    cart_x = []
    for e, ep in enumerate(episodes):
        frames, actions, length = ep["frames"], ep["actions"], ep.shape[0]
        other = episodes[(e + 1) % len(episodes)]["frames"]
        for t in range(first, length):
            clip, acts = frames[t - window + 1 : t + 1], actions[t - window + 1 : t + 1]
            sets["normal"]["frames"].append(clip)
            sets["normal"]["actions"].append(acts)
            cart_x.append(float(ep["state"][t, 0]))
            if (t - first) % args.every:
                continue
            wrong = {
                "shift": torch.roll(frames[t], args.shift, dims=1),
                "rewind": frames[t - args.rewind],
                "teleport": other[min(t, other.shape[0] - 1)],
            }
            for kind, frame in wrong.items():
                bad = clip.clone()
                bad[-1] = frame
                sets[kind]["frames"].append(bad)
                sets[kind]["actions"].append(acts)
    out = {name: (torch.stack(s["frames"]), torch.stack(s["actions"])) for name, s in sets.items()}
    return out, torch.tensor(cart_x)


def score(model: wf.WorldFlow, frames: torch.Tensor, actions: torch.Tensor, batch: int, desc: str):
    """bits/dim of each clip's last frame given the frames before it: (n,)."""
    use_actions = model.config.has_actions
    bits = []
    for i in tqdm(range(0, frames.shape[0], batch), desc=desc, unit="batch"):
        acts = actions[i : i + batch] if use_actions else None
        with torch.no_grad():
            bits.append(model.log_prob(frames[i : i + batch], acts).bits_per_dim[:, -1])
    return torch.cat(bits)


def evaluate(model: wf.WorldFlow, episodes: list, args: Args, first: int, name: str) -> dict:
    window = model.config.max_frames
    clips, cart_x = make_clips(episodes, args, window, first)
    scores = {s: score(model, *clips[s], args.batch, f"{name}: {s}") for s in clips}
    normal = scores["normal"]
    ends = cart_x.abs() >= args.track_end
    threshold = torch.quantile(normal[~ends].double(), args.pass_rate).item()
    result = {
        "window": window,
        "normal_frames": int(normal.numel()),
        "normal_frames_at_track_ends": int(ends.sum()),
        "normal_bits_per_dim_median": round(normal.median().item(), 4),
        "threshold_bits_per_dim": round(threshold, 4),
        "false_alarms_at_track_ends": round((normal[ends] > threshold).double().mean().item(), 4)
        if ends.any()
        else None,
    }
    for kind in KINDS:
        bad = scores[kind]
        labels = torch.cat([torch.zeros_like(normal), torch.ones_like(bad)])
        result[kind] = {
            "anomalies": int(bad.numel()),
            "auroc": round(float(roc_auc_score(labels.numpy(), torch.cat([normal, bad]).numpy())), 4),
            "caught": round((bad > threshold).double().mean().item(), 4),
            "bits_per_dim_median": round(bad.median().item(), 4),
        }
    return result


def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    for field in ("every", "batch", "max_steps", "shift", "rewind"):
        if getattr(args, field) < 1:
            raise ValueError(f"{field}: expected a positive integer, got {getattr(args, field)}")
    if args.episodes < 2:  # a teleported frame comes from another episode
        raise ValueError(f"episodes: expected at least 2, got {args.episodes}")
    if not 0 < args.pass_rate < 1:
        raise ValueError(f"pass_rate: expected a share in (0, 1), got {args.pass_rate}")
    model = wf.WorldFlow.from_pretrained(args.model)
    cfg = model.config
    if not (cfg.env_id or "").startswith("CartPole"):
        raise ValueError(f"model: expected a CartPole world model, got one of env_id={cfg.env_id!r}")
    episodes = [
        record_episode(cfg.env_id, seed=seed, max_steps=args.max_steps, frame_size=cfg.frame_size,
                       crop=cfg.crop, policy="mixed")
        for seed in tqdm(range(args.seed, args.seed + args.episodes), desc="held-out episodes", unit="ep")
    ]
    models = {"model": model}
    if args.baseline:
        models["baseline"] = load_baseline(args.baseline, model)
    # the same frames for every model: from the first step with a full window for all
    first = max(args.rewind, *(m.config.max_frames - 1 for m in models.values()))
    results = {name: evaluate(m, episodes, args, first, name) for name, m in models.items()}
    return {
        "benchmark": "anomaly",
        "model_path": args.model,
        "baseline_path": args.baseline or None,
        "seeds": [args.seed, args.seed + args.episodes - 1],
        "max_steps": args.max_steps,
        "frames": sum(ep.shape[0] for ep in episodes),
        **results,
        "seconds": round(time.perf_counter() - t_start, 2),
        **machine(),
    }


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
