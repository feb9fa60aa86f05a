"""The CartPole world model on fresh held-out episodes: likelihood, physics, pixels, heads.

    python benchmarks/likelihood.py [--model cartpole] [--baseline PATH] [--episodes 12] ...

Episodes are played afresh with seeds `seed, seed + 1, ...` (training used 0..299) and
the `mixed` policy (long balanced runs and short failing ones, so terminations occur).

1. Likelihood. bits/dim in the 8-bit convention of `WorldFlow.log_prob(noise=True)`:
   with x = v / 127.5 - 1 and eps ~ N(0, I) (seeded per episode),
   bits/dim = (-log p_model(x + sigma eps) + D log 127.5) / (D ln 2), D = 3 H W. It
   estimates the cross-entropy of the noise-augmented frames, bounded below by the noise's
   own entropy, the floor 0.5 log2(2 pi e (127.5 sigma)^2) (4.72 at sigma = 0.05). Reported
   over all frames and over frames >= 1 (frame 0 has no past), with the floor and the
   excess above it. `--baseline` (a frame-independent model) is scored on the same noisy
   frames; "excess reduction" = 1 - excess_model / excess_baseline.
   Frame entropy: the clean frames are a discrete function of CartPole's state (the
   renderer draws at whole pixels), so their entropy H (estimated over all frames played
   here, `frame_entropy_bits`) bounds what the past can tell an ideal model: a
   frame-independent one pays I(state; noisy frame) <= H above the floor, one that knows
   the state pays nothing. Reported beside the model's gain over the baseline (bits a
   frame, frames >= 1) and H / baseline excess: the largest excess reduction a model
   drawing as sharply as the baseline could get from knowing the state.
   Where the excess lies: `log_prob(per_dim=True)` splits each frame's bits exactly over
   its pixels; the excess of frames >= 1 is reported in bits a frame over the foreground
   (pixels off the background, as in 5) and over the background, and the same with each
   frame scored alone, as a one-frame video under the same noise: what the past buys.
   Constant background pixels cost an ideal model nothing; the foreground is where the
   past can help. `empty_patches`: the excess on the patches that hold only background in
   the frame and in the one before, which the past tells exactly (part of the background
   figure). The same split per pixel position, averaged over frames >= 1, is the
   excess map (bits a frame at each pixel, its channels summed): `excess_top_pixels`
   gives the share of the excess carried by the 1% of positions that carry the most, and
   the positions themselves; `--excess_map PATH` draws the map of the model, the
   baseline and their difference on one colour scale, with the patch grid (a flow's
   cost can gather at one place of its patches).
2. Reader check: `read_cartpole_state` on the real frames against the true state
   (position in model pixels via `cartpole_pixels_per_unit`, angle in degrees).
3. Dynamics: from `context` real frames and the real actions, `horizons` frames are
   generated open-loop (temperature 0, and `samples` samples at temperature 1; denoised)
   from starts whose whole horizon lies inside the episode. (x, theta) read from each
   predicted frame is compared with the true state at the same step; the copy-last
   baseline holds the last context frame's read state. Summary over horizons
   `summary_from`..`horizons`: mean of model error / copy-last error per horizon, and
   whether the model beats copy-last at every one of them.
4. Action control: at horizon `control_horizon`, temperature 0, the real actions vs the
   same actions reversed (a -> num_actions - 1 - a, i.e. left/right swapped) from the
   first predicted frame on; the reversed ones should predict the true state worse.
5. Pixels: PSNR and SSIM (torchmetrics, data range 255) per horizon against the real
   frames, over the whole frame and over the "band": the rows in which some held-out real
   frame differs from the background (the per-pixel median of the held-out frames) by
   more than `fg_threshold` in some channel. CartPole's default crop already is the band
   where cart and pole move, so there the band is (nearly) the whole frame; the
   "foreground" PSNR, over the pixels where the real or the predicted frame differs from
   the background, is the sharper figure. PSNR pools the squared error over all frames
   at a horizon (finite even when one frame is exact); SSIM is the mean over frames.
6. Termination: balanced accuracy of `heads(frame t, frame t + 1)` logits > 0 against
   `terminated[t]` on all real transitions of the held-out episodes and of
   `termination_episodes` more (seeds `seed + 1000, ...`; only the heads see them: a
   dozen episodes end in too few terminations to measure a rate), with the count of
   positives.

NaN reads (cart off screen, pole leaning out of the picture, or a garbled prediction)
are left out of the means (nanmean) and counted. Prints one JSON line (NaN -> null);
`--out` also writes it under benchmarks/results/.

Runtime (one thread of a 2-core CPU, the `small` 32x96 model, defaults): about 1.5 to 4
minutes. Measured on a randomized `small` model: collecting ~1500 frames ~10 s, log_prob
~9 ms a frame (~15 s, twice that with a baseline), generation ~0.04 s a frame in batches
of 8 at ~21 Jacobi calls a frame; 24 starts x (16 frames at temperature 0 + 2 x 16 at
temperature 1 + 8 reversed) = ~1350 frames, ~1 min. A trained flow may need more Jacobi
calls a frame (at most 3 blocks x 48 tokens), which scales the generation part.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm import tqdm

import worldflow as wf
from worldflow.benchmarking import benchmark_main, load_baseline, load_cartpole_model
from worldflow.codec import frames_to_model
from worldflow.data.cartpole_reader import cartpole_pixels_per_unit, read_cartpole_state
from worldflow.data.collect import record_episode
from worldflow.data.preprocess import model_preprocessing
from worldflow.metrics import frame_entropy_bits, noise_floor_bits


@dataclass
class Args:
    model: str = "cartpole"  # a shipped name or a directory from save_pretrained
    baseline: str = "cartpole-frame-independent"  # frame-independent model of equal size; "" skips it
    episodes: int = 12  # held-out episodes
    seed: int = 20000  # first held-out episode seed (training used 0..299); also noise seeds
    max_steps: int = 150  # env steps per episode at most (frames = steps + 1)
    policy: str = "mixed"  # behaviour policy of the held-out episodes
    context: int = 4  # real frames a prediction starts from
    horizons: int = 16  # predictions 1..horizons frames past the context
    summary_from: int = 4  # summary over horizons summary_from..horizons
    control_horizon: int = 8  # horizon of the real-vs-reversed actions check
    samples: int = 2  # temperature-1 samples per start
    termination_episodes: int = 100  # extra held-out episodes for the termination head
    starts_per_episode: int = 2  # evenly spaced over the valid starts
    batch: int = 8  # starts generated at once (a tqdm step)
    fg_threshold: int = 16  # uint8 difference from the background that counts as foreground
    track_end: float = 1.5  # |cart x| (m) from which a frame counts as "track_ends" (3% of training frames)
    excess_map: str = ""  # e.g. benchmarks/results/likelihood_excess.png: where the excess lies
    threads: int = 1
    out: str = ""  # e.g. benchmarks/results/likelihood.json


def _num(value, digits: int = 4):
    """A JSON-safe rounded float (NaN/inf -> None)."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _nanmean(x: torch.Tensor, dim=None) -> torch.Tensor:
    return torch.nanmean(x.double(), dim=dim) if dim is not None else torch.nanmean(x.double())


def _abs_errors(frames: torch.Tensor, x_true: torch.Tensor, theta_true: torch.Tensor, geometry):
    """Read frames (..., H, W, 3) -> |x error| in model px, |theta error| in degrees (...)."""
    frame_size, crop, ppu = geometry
    x, theta = read_cartpole_state(frames, frame_size, crop)
    return (x - x_true).abs() * ppu, torch.rad2deg((theta - theta_true).abs())


# ------------------------------------------------------------------------------ sections
def likelihood(
    model: wf.WorldFlow, episodes: list, seed: int, desc: str, background, threshold, track_end
) -> tuple[dict, torch.Tensor]:
    """bits/dim (noise=True) pooled over all frames and over frames >= 1; the excess of
    frames >= 1 split between foreground and background pixels (`LogProb.dim_bits`), and
    that of the patches holding only background in the frame and in the one before; the
    same excess a frame by where the true cart is (within `track_end` metres of the
    centre or beyond) and its median over frames; and the excess map, (H, W) bits a frame
    at each pixel."""
    bits, fg_dims, maps, cart_x = [], [], [], []
    split = {f"{part}{suffix}": [] for suffix in ("", "_without_past")
             for part in ("foreground", "background", "empty_patches")}
    patch = model.config.patch_size
    use_actions = model.config.has_actions
    floor = noise_floor_bits(model.config.noise_std)
    for i, ep in enumerate(tqdm(episodes, desc=desc, unit="ep")):
        actions = ep["actions"][None] if use_actions else None
        with torch.no_grad():
            lp = model.log_prob(ep["frames"][None], actions, noise=True, seed=seed + i, per_dim=True)
            # each frame as a one-frame video, under the same noise (same draws, same order)
            alone = model.log_prob(ep["frames"][:, None], None, noise=True, seed=seed + i, per_dim=True)
        bits.append(lp.bits_per_dim[0])
        cart_x.append(ep["state"][1:, 0])
        fg_all = foreground(ep["frames"], background, threshold)  # (T, H, W)
        fg = fg_all[1:, None].expand_as(lp.dim_bits[0, 1:])
        fg_dims.append(fg.sum(dim=(1, 2, 3)).double())
        empty = empty_patches(fg_all, patch)
        for suffix, dim_bits in (("", lp.dim_bits[0, 1:]), ("_without_past", alone.dim_bits[1:, 0])):
            excess = (dim_bits - floor).double()  # (T - 1, C, H, W)
            split["foreground" + suffix].append((excess * fg).sum(dim=(1, 2, 3)))
            split["background" + suffix].append((excess * ~fg).sum(dim=(1, 2, 3)))
            split["empty_patches" + suffix].append((excess * empty[:, None]).sum(dim=(1, 2, 3)))
            if not suffix:
                maps.append(excess.sum(dim=1))  # (T - 1, H, W)
    all_frames = torch.cat(bits).double().mean().item()
    later_bits = torch.cat([b[1:] for b in bits]).double()  # frames >= 1
    later = later_bits.mean().item()
    first = torch.stack([b[0] for b in bits]).double().mean().item()
    excess_map = torch.cat(maps).mean(0)  # (H, W) bits a frame at each pixel
    frame_excess = (later_bits - floor) * model.config.dims_per_frame
    ends = torch.cat(cart_x).abs() >= track_end
    by_place = {
        name: {"frames": int(mask.sum()),
               "bits_per_frame": _num(frame_excess[mask].mean().item(), 1) if mask.any() else None}
        for name, mask in (("track_centre", ~ends), ("track_ends", ends))
    }
    return {
        "bits_per_dim_all_frames": all_frames,
        "bits_per_dim_frames_from_1": later,
        "bits_per_dim_frame_0": first,
        "noise_floor_bits_per_dim": floor,
        "excess_all_frames": all_frames - floor,
        "excess_frames_from_1": later - floor,
        "excess_frames_from_1_bits_per_frame": {
            **{key: _num(torch.cat(parts).mean().item(), 1) for key, parts in split.items()},
            "foreground_dims": _num(torch.cat(fg_dims).mean().item(), 1),
        },
        "excess_frames_from_1_median_bits_per_frame": _num(frame_excess.median().item(), 1),
        "excess_frames_from_1_by_cart_place": by_place,
        "excess_top_pixels": top_pixels(excess_map),
        "frames": int(sum(b.numel() for b in bits)),
    }, excess_map


def empty_patches(fg: torch.Tensor, patch: int) -> torch.Tensor:
    """(T - 1, H, W) bool from a foreground mask (T, H, W): the pixels of frames >= 1 whose
    patch holds no foreground in the frame nor in the one before."""
    empty = ~F.max_pool2d(fg[:, None].float(), patch).bool()[:, 0]  # (T, H / p, W / p)
    both = empty[1:] & empty[:-1]
    return both.repeat_interleave(patch, 1).repeat_interleave(patch, 2)


def top_pixels(excess_map: torch.Tensor, fraction: float = 0.01) -> dict:
    """The share of a frame's excess on the `fraction` of pixel positions that carry the
    most, and those positions as [row, column], most first."""
    flat = excess_map.flatten()
    count = max(1, round(fraction * flat.numel()))
    top = flat.topk(count).indices
    width = excess_map.shape[1]
    return {
        "pixels": count,
        "share": _num((flat[top].sum() / flat.sum()).item(), 3),
        "bits_per_frame": _num(flat[top].sum().item(), 1),
        "where": [[int(i) // width, int(i) % width] for i in top],
    }


def plot_excess_maps(path: str, maps: dict, patch: int) -> None:
    """The excess maps side by side on one colour scale, and the first minus the second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    panels = [(f"{name}: {m.sum():.1f} bits a frame", m) for name, m in maps.items()]
    if len(names) == 2:
        diff = maps[names[0]] - maps[names[1]]
        panels.append((f"difference: {diff.sum():+.1f}", diff))
    bound = max(float(m.abs().max()) for _, m in panels) or 1.0
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), squeeze=False)
    for ax, (title, m) in zip(axes[:, 0], panels):
        shown = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_xticks(np.arange(-0.5, m.shape[1], patch), minor=True)
        ax.set_yticks(np.arange(-0.5, m.shape[0], patch), minor=True)
        ax.grid(which="minor", color="gray", lw=0.3)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(title, fontsize=9)
        fig.colorbar(shown, ax=ax, fraction=0.02)
    fig.suptitle("excess above the noise floor at each pixel, frames >= 1 (bits a frame)", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def frame_information(episodes: list, dims_per_frame: int) -> dict:
    """Entropy of the clean held-out frames: the most the past can save an ideal model."""
    info = frame_entropy_bits(torch.cat([ep["frames"] for ep in episodes]))
    for key in ("plug_in", "chao_shen"):
        bits = info[f"{key}_bits"]
        info[f"{key}_bits"], info[f"{key}_bits_per_dim"] = _num(bits, 2), _num(bits / dims_per_frame, 5)
    return info


def reader_check(episodes: list, geometry) -> dict:
    frames = torch.cat([ep["frames"] for ep in episodes])
    state = torch.cat([ep["state"] for ep in episodes])
    ex, et = _abs_errors(frames, state[:, 0], state[:, 2], geometry)
    return {
        "frames": int(frames.shape[0]),
        "x_mean_abs_error_px": _num(_nanmean(ex)),
        "x_max_abs_error_px": _num(ex[~ex.isnan()].max() if (~ex.isnan()).any() else math.nan),
        "theta_mean_abs_error_deg": _num(_nanmean(et)),
        "theta_max_abs_error_deg": _num(et[~et.isnan()].max() if (~et.isnan()).any() else math.nan),
        "x_nan": int(ex.isnan().sum()),
        "theta_nan": int(et.isnan().sum()),
    }


def termination(model: wf.WorldFlow, episodes: list) -> dict:
    if model.heads is None:
        return {"balanced_accuracy": None, "positives": None, "transitions": None, "note": "no task heads"}
    logits, labels = [], []
    for ep in episodes:
        x = frames_to_model(ep["frames"]).to(model.device, model.dtype)
        _, logit = model.heads(x[:-1], x[1:])
        logits.append(logit.float().cpu())
        labels.append(ep["terminated"][:-1])
    pred = (torch.cat(logits) > 0).numpy()
    label = torch.cat(labels).numpy()
    pos, neg = int(label.sum()), int((~label).sum())
    both = pos > 0 and neg > 0
    return {
        "balanced_accuracy": _num(balanced_accuracy_score(label, pred)) if both else None,
        "true_positive_rate": _num(pred[label].mean()) if pos else None,
        "true_negative_rate": _num((~pred[~label]).mean()) if neg else None,
        "positives": pos,
        "transitions": pos + neg,
    }


def make_starts(episodes: list, args: Args):
    """Contexts, actions, true states and real frames of every start (whole horizon inside)."""
    c, h = args.context, args.horizons
    ctx, acts, states, real, last = [], [], [], [], []
    for ep in episodes:
        n = ep.shape[0]  # frames
        if n < c + h:
            continue
        for s in sorted(set(np.linspace(0, n - c - h, args.starts_per_episode).round().astype(int).tolist())):
            ctx.append(ep["frames"][s : s + c])
            acts.append(ep["actions"][s : s + c + h - 1])
            states.append(ep["state"][s + c : s + c + h])
            real.append(ep["frames"][s + c : s + c + h])
            last.append(ep["frames"][s + c - 1])
    if not ctx:
        return None
    return torch.stack(ctx), torch.stack(acts), torch.stack(states), torch.stack(real), torch.stack(last)


def generate_all(model, ctx, acts, num_frames, temperature, samples, seed, batch, desc):
    """Open-loop predictions (B * samples, num_frames, H, W, 3), start-major."""
    outs = []
    for i, lo in enumerate(tqdm(range(0, ctx.shape[0], batch), desc=desc, unit="batch")):
        c = ctx[lo : lo + batch].repeat_interleave(samples, 0)
        a = acts[lo : lo + batch].repeat_interleave(samples, 0)
        outs.append(
            model.generate(
                num_frames, context=c, actions=a, temperature=temperature, denoise=True, seed=seed + i
            )
        )
    return torch.cat(outs)


def foreground(frames: torch.Tensor, background: torch.Tensor, threshold: int) -> torch.Tensor:
    """(N, H, W) bool: the pixels of uint8 frames (N, H, W, 3) off the background by more
    than `threshold` in some channel."""
    return (frames.short() - background.short()).abs().amax(-1) > threshold


def band_rows(frames: torch.Tensor, background: torch.Tensor, threshold: int) -> tuple[int, int]:
    """[first, last + 1) of the rows where some frame differs from the background."""
    diff = foreground(frames, background, threshold)
    rows = diff.any(0).any(-1).nonzero()[:, 0]
    return (int(rows.min()), int(rows.max()) + 1) if rows.numel() else (0, frames.shape[1])


def pixel_metrics(pred, real, background, band, threshold) -> dict:
    """Per-horizon PSNR / SSIM of pred (N, T, H, W, 3) vs real (N, T, H, W, 3)."""
    lo, hi = band
    kernel = min(11, (hi - lo) - (1 - (hi - lo) % 2))  # odd, at most the band's height
    out = {"psnr": [], "ssim": [], "psnr_band": [], "ssim_band": [], "psnr_foreground": []}
    for t in range(pred.shape[1]):
        p = pred[:, t].permute(0, 3, 1, 2).float()
        r = real[:, t].permute(0, 3, 1, 2).float()
        out["psnr"].append(_num(peak_signal_noise_ratio(p, r, data_range=255.0), 3))
        out["ssim"].append(_num(structural_similarity_index_measure(p, r, data_range=255.0), 4))
        pb, rb = p[..., lo:hi, :], r[..., lo:hi, :]
        out["psnr_band"].append(_num(peak_signal_noise_ratio(pb, rb, data_range=255.0), 3))
        ssim_band = (
            structural_similarity_index_measure(pb, rb, data_range=255.0, kernel_size=kernel)
            if kernel >= 3
            else math.nan
        )
        out["ssim_band"].append(_num(ssim_band, 4))
        bg = background.permute(2, 0, 1).float()
        fg = ((p - bg).abs().amax(1) > threshold) | ((r - bg).abs().amax(1) > threshold)  # (N, H, W)
        mse = ((p - r) ** 2).mean(1)[fg].mean() if fg.any() else torch.tensor(math.nan)
        out["psnr_foreground"].append(_num(10 * torch.log10(255.0**2 / mse), 3))
    return out


def dynamics(model, episodes, args, geometry) -> tuple[dict, dict, dict]:
    """Open-loop state errors, action control and pixel metrics."""
    starts = make_starts(episodes, args)
    if starts is None:
        empty = {"starts": 0, "note": f"no episode has {args.context + args.horizons} frames"}
        return empty, {"starts": 0}, {"starts": 0}
    ctx, acts, states, real, last = starts
    b, h, s = ctx.shape[0], args.horizons, args.samples
    x_true, theta_true = states[..., 0], states[..., 2]  # (B, h)

    t0 = time.perf_counter()
    greedy = generate_all(model, ctx, acts, h, 0.0, 1, args.seed, args.batch, "generate T=0")
    t_greedy = time.perf_counter() - t0
    sampled = (
        generate_all(model, ctx, acts, h, 1.0, s, args.seed + 1000, args.batch, "generate T=1")
        if s > 0
        else None
    )
    t_sampled = time.perf_counter() - t0 - t_greedy
    k = min(args.control_horizon, h)
    reversed_acts = acts[:, : args.context + k - 1].clone()
    reversed_acts[:, args.context - 1 :] = model.config.num_actions - 1 - reversed_acts[:, args.context - 1 :]
    flipped = generate_all(model, ctx, reversed_acts, k, 0.0, 1, args.seed, args.batch, "generate reversed")
    t_flipped = time.perf_counter() - t0 - t_greedy - t_sampled

    ex0, et0 = _abs_errors(greedy, x_true, theta_true, geometry)  # (B, h)
    x_last, theta_last = read_cartpole_state(last, geometry[0], geometry[1])  # (B,)
    exc = (x_last[:, None] - x_true).abs() * geometry[2]
    etc = torch.rad2deg((theta_last[:, None] - theta_true).abs())
    result = {
        "starts": b,
        "samples_per_start": s,
        "horizons": list(range(1, h + 1)),
        "x_error_px_t0": [_num(v, 3) for v in _nanmean(ex0, 0)],
        "theta_error_deg_t0": [_num(v, 3) for v in _nanmean(et0, 0)],
        "x_error_px_copy_last": [_num(v, 3) for v in _nanmean(exc, 0)],
        "theta_error_deg_copy_last": [_num(v, 3) for v in _nanmean(etc, 0)],
        "nan_reads_t0": int(ex0.isnan().sum() + et0.isnan().sum()),
        "nan_reads_copy_last": int(x_last.isnan().sum() + theta_last.isnan().sum()),
    }
    errors = {"t0": (ex0, et0)}
    if sampled is not None:
        ex1, et1 = _abs_errors(
            sampled, x_true.repeat_interleave(s, 0), theta_true.repeat_interleave(s, 0), geometry
        )
        result["x_error_px_t1"] = [_num(v, 3) for v in _nanmean(ex1, 0)]
        result["theta_error_deg_t1"] = [_num(v, 3) for v in _nanmean(et1, 0)]
        result["nan_reads_t1"] = int(ex1.isnan().sum() + et1.isnan().sum())
        errors["t1"] = (ex1, et1)
    lo = max(args.summary_from, 1) - 1
    copy = {"x": _nanmean(exc, 0)[lo:], "theta": _nanmean(etc, 0)[lo:]}
    summary = {"horizons": [lo + 1, h]}
    for temp, (ex, et) in errors.items():
        for name, err in (("x", ex), ("theta", et)):
            model_err = _nanmean(err, 0)[lo:]
            ratio = model_err / copy[name]
            summary[f"{name}_over_copy_last_{temp}"] = _num(_nanmean(ratio), 4) if len(ratio) else None
            summary[f"{name}_beats_copy_last_all_{temp}"] = (
                bool((model_err < copy[name]).all()) if len(ratio) else None
            )
    result["summary"] = summary
    result["seconds"] = {"t0": round(t_greedy, 2), "t1": round(t_sampled, 2), "reversed": round(t_flipped, 2)}

    exr, etr = _abs_errors(flipped[:, k - 1], x_true[:, k - 1], theta_true[:, k - 1], geometry)
    x_real, theta_real = _nanmean(ex0[:, k - 1]).item(), _nanmean(et0[:, k - 1]).item()
    x_rev, theta_rev = _nanmean(exr).item(), _nanmean(etr).item()
    control = {
        "horizon": k,
        "x_error_px_real_actions": _num(x_real, 3),
        "x_error_px_reversed_actions": _num(x_rev, 3),
        "theta_error_deg_real_actions": _num(theta_real, 3),
        "theta_error_deg_reversed_actions": _num(theta_rev, 3),
        "x_reversed_over_real": _num(x_rev / x_real if x_real else math.nan, 3),
        "theta_reversed_over_real": _num(theta_rev / theta_real if theta_real else math.nan, 3),
        "reversed_worse_x": bool(x_rev > x_real),
        "reversed_worse_theta": bool(theta_rev > theta_real),
        "nan_reads_reversed": int(exr.isnan().sum() + etr.isnan().sum()),
        # what the reversed actions do to the picture: mean abs pixel change vs real actions
        "mean_abs_pixel_change": _num((flipped[:, k - 1].float() - greedy[:, k - 1].float()).abs().mean(), 3),
    }

    all_real = torch.cat([ep["frames"] for ep in episodes])
    background = all_real.median(0).values  # (H, W, 3)
    band = band_rows(all_real, background, args.fg_threshold)
    pixels = {
        "band_rows": list(band),
        "band_method": "rows where a held-out real frame differs from the per-pixel median "
        f"by > {args.fg_threshold}",
        "frame_rows": int(all_real.shape[1]),
        "t0": pixel_metrics(greedy, real, background, band, args.fg_threshold),
    }
    if sampled is not None:
        pixels["t1"] = pixel_metrics(
            sampled, real.repeat_interleave(s, 0), background, band, args.fg_threshold
        )
    return result, control, pixels


# ------------------------------------------------------------------------------ entry
@torch.no_grad()
def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model = load_cartpole_model(args.model)
    cfg = model.config
    env_id = cfg.env_id
    if cfg.num_actions is None:
        raise ValueError("model: expected a model with discrete actions (CartPole), got none")
    frame_size, crop = model_preprocessing(cfg)  # as record_episode makes the frames
    geometry = (frame_size, crop, cartpole_pixels_per_unit(frame_size, crop))

    def play(seeds, desc: str) -> list:
        return [
            record_episode(
                env_id,
                seed=seed,
                max_steps=args.max_steps,
                frame_size=cfg.frame_size,
                crop=crop,
                policy=args.policy,
            )
            for seed in tqdm(seeds, desc=desc, unit="ep")
        ]

    episodes = play(range(args.seed, args.seed + args.episodes), "held-out episodes")
    extra = play(
        range(args.seed + 1000, args.seed + 1000 + args.termination_episodes), "termination episodes"
    )
    lengths = [ep.shape[0] for ep in episodes]
    t_collect = time.perf_counter() - t_start

    t0 = time.perf_counter()
    background = torch.cat([ep["frames"] for ep in episodes]).median(0).values  # (H, W, 3)
    lik, excess_map = likelihood(
        model, episodes, args.seed, "log_prob model", background, args.fg_threshold, args.track_end
    )
    maps = {"model": excess_map}
    if args.baseline:
        base = load_baseline(args.baseline, model)
        base_lik, maps["baseline"] = likelihood(
            base, episodes, args.seed, "log_prob baseline", background, args.fg_threshold, args.track_end
        )
        lik["baseline"] = base_lik
        lik["excess_reduction_all_frames"] = 1 - lik["excess_all_frames"] / base_lik["excess_all_frames"]
        lik["excess_reduction_frames_from_1"] = (
            1 - lik["excess_frames_from_1"] / base_lik["excess_frames_from_1"]
        )
        # the mean is the criterion; the median and the split by the cart's place say
        # whether a few frames (rare states, where a frame-independent flow can fail) carry it
        key = "excess_frames_from_1_median_bits_per_frame"
        lik["excess_reduction_median_frame"] = 1 - lik[key] / base_lik[key]
        places, base_places = (d["excess_frames_from_1_by_cart_place"] for d in (lik, base_lik))
        lik["excess_reduction_by_cart_place"] = {
            place: _num(1 - part["bits_per_frame"] / base_places[place]["bits_per_frame"])
            if part["bits_per_frame"] is not None else None
            for place, part in places.items()
        }
    lik["frame_entropy"] = frame_information(episodes + extra, cfg.dims_per_frame)
    if args.baseline:
        gain = base_lik["excess_frames_from_1"] - lik["excess_frames_from_1"]
        lik["gain_over_baseline_bits_per_frame"] = _num(gain * cfg.dims_per_frame, 1)
        lik["excess_reduction_from_state_at_most"] = _num(
            lik["frame_entropy"]["chao_shen_bits_per_dim"] / base_lik["excess_frames_from_1"]
        )
    lik = {k: (_num(v) if isinstance(v, float) else v) for k, v in lik.items()}
    if "baseline" in lik:
        lik["baseline"] = {k: (_num(v) if isinstance(v, float) else v) for k, v in lik["baseline"].items()}
    if args.excess_map:
        plot_excess_maps(args.excess_map, maps, cfg.patch_size)
    t_lik = time.perf_counter() - t0

    reader = reader_check(episodes, geometry)
    term = termination(model, episodes + extra)
    term["episodes"] = len(episodes) + len(extra)
    t0 = time.perf_counter()
    dyn, control, pixels = dynamics(model, episodes, args, geometry)
    t_dyn = time.perf_counter() - t0
    return {
        "benchmark": "likelihood",
        "model": args.model,
        "model_path": str(args.model),
        "baseline": args.baseline or None,
        "env_id": env_id,
        "frame_size": list(cfg.frame_size),
        "crop": list(crop) if crop is not None else None,
        "pixels_per_metre": _num(geometry[2]),
        "noise_std": cfg.noise_std,
        "policy": args.policy,
        "seeds": [args.seed, args.seed + args.episodes - 1],
        "episodes": args.episodes,
        "episode_frames": {"total": sum(lengths), "min": min(lengths), "max": max(lengths)},
        "context": args.context,
        "likelihood": lik,
        "excess_map": args.excess_map or None,
        "reader": reader,
        "dynamics": dyn,
        "action_control": control,
        "pixels": pixels,
        "termination": term,
        "seconds": {
            "collect": round(t_collect, 2),
            "likelihood": round(t_lik, 2),
            "dynamics": round(t_dyn, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
