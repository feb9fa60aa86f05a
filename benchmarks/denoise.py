"""One-step denoising: the learned causal denoiser vs the exact flow score.

    python benchmarks/denoise.py [--model cartpole] [--episodes 6] ...

Held-out real episodes (seeds training never saw) are cut into clips of the model's
window, noised with the training sigma, and cleaned in one step, `x + sigma^2 * score`:
by the learned denoiser and by the exact score (autograd through the flow). Reports the
mean squared error to the clean frames before and after, the median wall time of each
over `repeats` calls after a warm-up, and the
PSNR of generated continuations against the real continuation with and without
denoising. Prints one JSON line; `--out` also writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

import worldflow as wf
from worldflow.benchmarking import benchmark_main
from worldflow.codec import frames_to_model
from worldflow.data.collect import record_episode


@dataclass
class Args:
    model: str = "cartpole"
    episodes: int = 6  # held-out episodes
    seed: int = 30000  # first held-out episode seed (training used 0..299)
    max_steps: int = 120
    clips_per_episode: int = 2
    context: int = 4  # real frames before a generated continuation
    horizon: int = 8  # frames generated per continuation
    repeats: int = 5  # timed calls of each denoiser after a warm-up (the median is reported)
    threads: int = 1
    out: str = ""


def clips(model: wf.WorldFlow, args: Args):
    """Clips of `max_frames` real frames and their actions from held-out episodes."""
    cfg = model.config
    length = cfg.max_frames
    frames, actions = [], []
    for i in range(args.episodes):
        ep = record_episode(
            cfg.env_id,
            seed=args.seed + i,
            max_steps=args.max_steps,
            policy="mixed",
            frame_size=cfg.frame_size,
            crop=cfg.crop,
        )
        n = ep.shape[0]
        if n < length:
            continue
        for start in torch.linspace(0, n - length, args.clips_per_episode).long().tolist():
            frames.append(ep["frames"][start : start + length])
            actions.append(ep["actions"][start : start + length])
    return torch.stack(frames), torch.stack(actions)


def timed(fn, repeats: int):
    """fn's output and its median wall time over `repeats` calls after a warm-up call."""
    out, times = fn(), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, sorted(times)[len(times) // 2]


@torch.no_grad()
def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    model = wf.WorldFlow.from_pretrained(args.model)
    sigma = model.config.noise_std
    frames, actions = clips(model, args)
    clean = frames_to_model(frames)
    gen = torch.Generator().manual_seed(args.seed)
    noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
    learned, learned_s = timed(lambda: model.denoise(noisy, actions), args.repeats)
    exact, exact_s = timed(lambda: model.denoise(noisy, actions, method="exact"), args.repeats)

    def mse(x):
        return (x - clean).pow(2).mean().item()

    # continuations: same noise, with and without the denoiser, against the real frames
    c, h = args.context, min(args.horizon, frames.shape[1] - args.context)
    kw = dict(context=frames[:, :c], actions=actions[:, : c + h - 1], seed=args.seed)
    raw = model.generate(h, denoise=False, **kw)
    cleaned = model.generate(h, denoise=True, **kw)
    real = frames[:, c : c + h]

    def psnr(video):
        return peak_signal_noise_ratio(video.float(), real.float(), data_range=255.0).item()

    return {
        "benchmark": "denoise",
        "model": args.model,
        "noise_std": sigma,
        "denoiser": {k: getattr(model.config, f"denoiser_{k}") for k in ("depth", "width", "predicts")},
        "clips": int(frames.shape[0]),
        "frames_per_clip": int(frames.shape[1]),
        "mse_noisy": mse(noisy),
        "mse_learned": mse(learned),
        "mse_exact": mse(exact),
        "learned_over_noisy": mse(learned) / mse(noisy),
        "exact_over_noisy": mse(exact) / mse(noisy),
        "learned_over_exact": mse(learned) / mse(exact),
        "learned_seconds": learned_s,
        "exact_seconds": exact_s,
        "learned_speedup_vs_exact": exact_s / learned_s,
        "continuation_psnr_denoised": psnr(cleaned),
        "continuation_psnr_raw": psnr(raw),
        "threads": args.threads,
    }


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
