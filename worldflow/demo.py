"""`worldflow demo`: the main job, on the shipped model.

1. Play a real episode of the model's Gymnasium environment.
2. Dream: from the first real frames, roll the world model forward open-loop under
   the same actions (KV cache + video-aware Jacobi + one-step denoiser).
3. Score: the exact per-frame likelihood of the real frames, and of the same episode
   with one frame tampered with (the cart shifted): a surprise spike, and per pixel
   (`log_prob(per_dim=True)`) where in the frame the surprise lies.
4. Plan: a short real episode driven by CEM in the dream (`worldflow.agents`): at every
   real step candidate plans are imagined `horizon` frames ahead and the best one's first
   action is taken in the real environment (models with task heads only).

Writes `dream.mp4` (real | dream), `surprise.png` (the per-frame curves; below them the
tampered frame, the real one and the tampered frame's surprise map), `plan.mp4` (the real
episode | the dream's next frame under each chosen action) and prints one JSON line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import WorldFlowError
from .metrics import noise_floor_bits
from .video import side_by_side, write_video


@dataclass
class DemoConfig:
    model: str = "cartpole"
    steps: int = 40  # real env steps (frames = steps + 1)
    context: int = 4  # real frames the dream starts from
    anomaly_at: int = 24  # frame whose cart is shifted in the tampered copy
    anomaly_shift: int = 8  # pixels
    seed: int = 7
    out: str = "outputs/demo"
    fps: int = 10
    plan_steps: int = 40  # real steps of the CEM episode (0: skip planning)


def run(cfg: DemoConfig) -> dict:
    from .data.collect import record_episode
    from .model import WorldFlow

    if not isinstance(cfg.plan_steps, int) or isinstance(cfg.plan_steps, bool) or cfg.plan_steps < 0:
        raise WorldFlowError(f"plan_steps: expected an int >= 0, got {cfg.plan_steps!r}")
    t0 = time.perf_counter()
    model = WorldFlow.from_pretrained(cfg.model)
    mc = model.config
    if mc.env_id is None:
        raise WorldFlowError(
            f"model: the demo needs a world model of a Gymnasium env; {cfg.model!r} has no env_id"
        )
    episode = record_episode(
        mc.env_id, seed=cfg.seed, max_steps=cfg.steps, frame_size=mc.frame_size, crop=mc.crop
    )
    real = episode["frames"]  # (T, H, W, 3)
    actions = episode["actions"]
    t = real.shape[0]
    if not 1 <= cfg.context < t:
        raise WorldFlowError(f"context: expected 1 <= context < {t} frames of the episode, got {cfg.context}")

    with torch.no_grad():
        dream = model.generate(
            t - cfg.context, context=real[None, : cfg.context], actions=actions[None, : t - 1], seed=cfg.seed
        )[0]
        real_lp = model.log_prob(real[None], actions[None], noise=True, seed=cfg.seed, per_dim=True)
        tampered = real.clone()
        k = min(cfg.anomaly_at, t - 1)
        tampered[k] = torch.roll(tampered[k], cfg.anomaly_shift, dims=1)
        tampered_lp = model.log_prob(tampered[None], actions[None], noise=True, seed=cfg.seed, per_dim=True)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = torch.cat([real[: cfg.context], dream]).numpy()
    write_video(out / "dream.mp4", side_by_side(real.numpy(), shown), fps=cfg.fps)
    bpd, bpd_tampered = real_lp.bits_per_dim[0].numpy(), tampered_lp.bits_per_dim[0].numpy()
    floor = noise_floor_bits(mc.noise_std)
    summary = {
        "command": "demo",
        "model": cfg.model,
        "env_id": mc.env_id,
        "frames": t,
        "dream_frames": t - cfg.context,
        "real_bits_per_dim_mean": float(bpd[1:].mean()),
        "noise_floor_bits_per_dim": floor,
        "tampered_frame": k,
        "surprise_spike_bits_per_dim": float(bpd_tampered[k] - bpd[k]),
        "surprise_spike_vs_typical_change": float(
            (bpd_tampered[k] - bpd[k]) / max(np.abs(np.diff(bpd[1:])).mean(), 1e-9)
        ),
    }
    extra = (tampered_lp.dim_bits[0, k] - real_lp.dim_bits[0, k]).sum(0)  # (H, W) bits
    moved = (tampered[k] != real[k]).any(-1)  # the pixels the shift changed
    total = float(extra.sum())  # a share only means something when the tampering cost bits
    summary["surprise_on_moved_pixels_fraction"] = float(extra[moved].sum()) / total if total > 0 else None
    if k + 1 < t:  # the real next frame, where the cart jumps back, under the tampered past
        summary["surprise_next_frame_bits_per_dim"] = float(bpd_tampered[k + 1] - bpd[k + 1])
    if mc.env_id.startswith("CartPole"):
        summary.update(_cartpole_dynamics(real, dream, cfg.context, mc))
    _plot(out / "surprise.png", bpd, bpd_tampered, floor, k, summary, (tampered[k], real[k]), extra)
    summary.update(video=str(out / "dream.mp4"), plot=str(out / "surprise.png"))
    if cfg.plan_steps and mc.task_heads:
        summary.update(_plan(model, cfg, out))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def _plan(model, cfg: DemoConfig, out: Path) -> dict:
    """A real episode of at most `plan_steps` steps, CEM planning in the dream at every step."""
    from worldflow.agents import AgentConfig, make_agent, play

    agent = make_agent(model, AgentConfig(agent="cem", seed=cfg.seed))
    episode = play(agent, model, cfg.seed, cfg.plan_steps, record=True)
    panels = side_by_side(np.stack(episode.frames[1:]), np.stack(episode.dreamed))
    write_video(out / "plan.mp4", panels, fps=cfg.fps)
    return {
        "plan_return": episode.ret,
        "plan_steps": episode.steps,
        "plan_seconds_per_step": round(episode.seconds / max(episode.steps, 1), 3),
        "plan_video": str(out / "plan.mp4"),
    }


def _cartpole_dynamics(real, dream, context, mc) -> dict:
    """Cart position / pole angle read from the pixels of the dream vs the real frames."""
    from .data.cartpole_reader import cartpole_pixels_per_unit, read_cartpole_state

    x_real, th_real = read_cartpole_state(real[context:], mc.frame_size, mc.crop)
    x_dream, th_dream = read_cartpole_state(dream, mc.frame_size, mc.crop)
    ppu = cartpole_pixels_per_unit(mc.frame_size, mc.crop)
    pos_err = np.nanmean(np.abs(np.asarray(x_dream) - np.asarray(x_real))) * ppu
    ang_err = np.degrees(np.nanmean(np.abs(np.asarray(th_dream) - np.asarray(th_real))))
    return {"dream_cart_error_pixels": float(pos_err), "dream_pole_error_degrees": float(ang_err)}


def _plot(path: Path, bpd, bpd_tampered, floor, k, summary, frames_k, extra) -> None:
    """The per-frame curves; below, the tampered frame, the real one and the surprise map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 5.5))
    grid = fig.add_gridspec(2, 3, height_ratios=(2, 1))
    ax = fig.add_subplot(grid[0, :])
    frames = np.arange(len(bpd))
    ax.plot(frames, bpd_tampered, color="tab:red", label=f"frame {k} tampered (cart shifted)")
    ax.plot(frames, bpd, color="tab:blue", label="real episode")
    ax.axhline(floor, color="gray", ls="--", label=f"noise floor {floor:.2f}")
    ax.set_xlabel("frame")
    ax.set_ylabel("bits / dim (8-bit)")
    ax.set_title(f"Surprise of real frames under the world model ({summary['env_id']})")
    ax.legend(loc="upper right", fontsize=8)
    subs = [fig.add_subplot(grid[1, i]) for i in range(3)]
    for sub, frame, title in zip(subs, frames_k, ("tampered", "real")):
        sub.imshow(frame.numpy())
        sub.set_title(f"frame {k}, {title}", fontsize=9)
    bound = float(extra.abs().max()) or 1.0
    shown = subs[2].imshow(extra.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
    fig.colorbar(shown, ax=subs[2], fraction=0.03)
    subs[2].set_title("extra bits per pixel", fontsize=9)
    for sub in subs:
        sub.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
