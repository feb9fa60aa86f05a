"""Dream environment speed: steps/s by batch, long-episode flatness, cache vs re-encoding.

    python benchmarks/env_step.py [--model cartpole|PATH|random] [--episode_steps 2000] ...

1. Throughput: `WorldFlowVectorEnv` steps per second (worlds x steps / s) at each batch.
2. A long episode in `WorldFlowEnv`: resident memory growth after warm-up (target under
   50 MB) and the median step time around step `warmup` vs around the last step (ratio
   target under 1.3): the sliding attention window keeps both flat.
3. History: a cached step (the env after a reset with H context frames) vs rebuilding the
   state from the whole history before every step (reset with the H frames, then step).

Uses the shipped `cartpole` model when present, else a randomized `small` preset
(2 actions; weights re-drawn so that the flow is not the identity) and says which.
Prints one JSON line; `--out` also writes it (e.g. benchmarks/results/env_step.json).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import worldflow as wf
from worldflow.benchmarking import benchmark_main
from worldflow.checkpoint import CheckpointError
from worldflow.envs import WorldFlowEnv, WorldFlowVectorEnv


@dataclass
class Args:
    model: str = "cartpole"  # a shipped name, a directory, or "random" (a randomized `small`)
    batches: str = "1,8,64"  # vector env sizes for the throughput figure
    throughput_steps: int = 4  # timed steps per batch size (after one warm-up step)
    episode_steps: int = 2000  # the long episode
    warmup: int = 100  # memory and the first step-time window are taken here
    window: int = 25  # steps per step-time window (medians: Jacobi iterations vary)
    histories: str = "8,32,128"  # frames of history for cached vs re-encoded steps
    history_steps: int = 3  # timed steps per history length and method
    threshold: float = 1e-4  # Jacobi settling threshold, latent units (the library default)
    threads: int = 1
    seed: int = 0
    out: str = ""  # e.g. benchmarks/results/env_step.json


def load(name: str, seed: int) -> tuple[wf.WorldFlow, str]:
    if name != "random":
        try:
            return wf.WorldFlow.from_pretrained(name), name
        except CheckpointError:
            if name != "cartpole":
                raise
    model = wf.WorldFlow.from_preset("small", num_actions=2)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial weights (a fresh flow is the identity), as tests/conftest.py
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if pname.endswith("proj_out.weight"):
                p.copy_(noise * 0.3 / p.shape[1] ** 0.5)
            elif p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * noise)
    return model.eval(), "random small (no shipped cartpole model found)"


def rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(model, args: Args, batch: int, rng) -> float:
    envs = WorldFlowVectorEnv(batch, model, sampler=wf.SamplerConfig(threshold=args.threshold))
    envs.reset(seed=args.seed)
    envs.step(rng.integers(0, 2, batch))  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.throughput_steps):
        envs.step(rng.integers(0, 2, batch))
    return batch * args.throughput_steps / (time.perf_counter() - t0)


def long_episode(model, args: Args, rng) -> dict:
    env = WorldFlowEnv(model, sampler=wf.SamplerConfig(threshold=args.threshold))
    env.reset(seed=args.seed)
    times, rss_warm = [], None
    for t in range(1, args.episode_steps + 1):
        t0 = time.perf_counter()
        env.step(int(rng.integers(0, 2)))
        times.append(time.perf_counter() - t0)
        if t == args.warmup:
            rss_warm = rss_mb()
        if t % 250 == 0:
            print(f"  episode step {t}/{args.episode_steps}", file=sys.stderr, flush=True)
    rss_end = rss_mb()
    early = statistics.median(times[args.warmup - args.window : args.warmup])
    late = statistics.median(times[-args.window :])
    return {
        "episode_steps": args.episode_steps,
        "rss_growth_mb_after_warmup": round(rss_end - rss_warm, 2),
        "step_ms_at_warmup": round(1000 * early, 2),
        "step_ms_at_end": round(1000 * late, 2),
        "step_time_ratio_end_over_warmup": round(late / early, 3),
    }


def history(model, args: Args, frames: int, rng) -> dict:
    """Per-step ms: cached (continuing after a reset with the history) vs re-encoding it."""
    h, w = model.config.frame_size
    video = torch.randint(
        0,
        256,
        (frames, h, w, model.config.channels),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(frames),
    )
    options = {"context": video.numpy(), "actions": rng.integers(0, 2, frames - 1)}
    sampler = wf.SamplerConfig(threshold=args.threshold)
    cached, fresh = WorldFlowEnv(model, sampler=sampler), WorldFlowEnv(model, sampler=sampler)
    cached.reset(seed=args.seed, options=options)
    cached.step(0)  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.history_steps):
        cached.step(int(rng.integers(0, 2)))
    cached_s = (time.perf_counter() - t0) / args.history_steps
    t0 = time.perf_counter()
    for _ in range(args.history_steps):
        fresh.reset(seed=args.seed, options=options)  # the whole history, encoded again
        fresh.step(int(rng.integers(0, 2)))
    fresh_s = (time.perf_counter() - t0) / args.history_steps
    return {
        "cached_ms": round(1000 * cached_s, 2),
        "reencode_ms": round(1000 * fresh_s, 2),
        "speedup": round(fresh_s / cached_s, 2),
    }


def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    model, which = load(args.model, args.seed)
    cfg = model.config
    rng = np.random.default_rng(args.seed)
    print(f"model: {which}", file=sys.stderr, flush=True)
    steps_per_s = {}
    for b in map(int, args.batches.split(",")):
        steps_per_s[str(b)] = round(throughput(model, args, b, rng), 2)
        print(f"  batch {b}: {steps_per_s[str(b)]} steps/s", file=sys.stderr, flush=True)
    histories = {}
    for frames in map(int, args.histories.split(",")):
        histories[str(frames)] = history(model, args, frames, rng)
        print(f"  history {frames}: {histories[str(frames)]}", file=sys.stderr, flush=True)
    episode = long_episode(model, args, rng)
    return {
        "benchmark": "env_step",
        "model": which,
        "frame_size": list(cfg.frame_size),
        "tokens_per_frame": cfg.tokens_per_frame,
        "max_frames": cfg.max_frames,
        "threshold": args.threshold,
        "steps_per_s": steps_per_s,
        **episode,
        "history_frames": histories,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
