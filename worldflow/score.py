"""`worldflow score`: per-frame anomaly scores of recorded trajectories or a video.

worldflow score model=cartpole data=held_out/ [episodes=[0,3]] out=runs/score [top=5]
worldflow score model=cartpole data=clip.mp4 out=runs/score

`data` is a dataset folder written by `worldflow collect` (episodes scored with their
actions) or a video/image/.npy file of the model's frame size (scored without actions).
Writes `scores.csv` (one row a frame: episode, frame and the scores of
`worldflow.scoring`) and `scores.png` (the anomaly score over time, the `top` frames
marked); prints one JSON line with the most anomalous frames.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional  # OmegaConf reads typing.Optional, not `X | None`

import numpy as np
import torch

from .errors import WorldFlowError
from .scoring import FrameScores, score_frames

COLUMNS = ("bits_per_dim", "prediction_error", "copy_error", "stillness", "anomaly")
PANELS = 6  # episodes drawn in the plot at most


@dataclass
class ScoreConfig:
    model: str = "cartpole"  # a shipped model's name or a directory
    data: str = ""  # a collected dataset folder, or a video / image / .npy file
    episodes: list = field(default_factory=list)  # dataset episodes to score (default: all)
    prompt: Optional[str] = None  # a text model's prompt for every video
    out: str = "runs/score"
    top: int = 5  # frames to report and mark
    batch: int = 64
    threads: int = 2
    progress: bool = True


def load_videos(data: str, model, episodes: list) -> tuple[list[int], list[torch.Tensor], list]:
    """(ids, frames (T, H, W, 3) each, actions (T,) each or None) from a dataset or a file."""
    path = Path(data)
    if not data:
        raise WorldFlowError("data: expected a dataset folder or a video file, got ''")
    if path.is_dir():
        from .data.collect import load_dataset

        tensordict, meta = load_dataset(path)
        if list(meta["frame_size"]) != list(model.config.frame_size):
            raise WorldFlowError(f"data: expected frames of {list(model.config.frame_size)} (the model's), "
                                 f"got {meta['frame_size']} in {data!r}")
        ids = tensordict["episode"].unique().tolist()
        chosen = ids if not episodes else list(episodes)
        missing = sorted(set(chosen) - set(ids))
        if missing:
            raise WorldFlowError(f"episodes: expected ids among {ids[:10]}{'...' if len(ids) > 10 else ''}, "
                                 f"got {missing}")
        rows = [tensordict[tensordict["episode"] == i] for i in chosen]
        acts = [r["actions"] if model.config.has_actions else None for r in rows]
        return chosen, [r["frames"] for r in rows], acts
    from .video import read_frames

    frames = torch.from_numpy(read_frames(path, tuple(model.config.frame_size), name="data"))
    return list(range(len(frames))), list(frames), [None] * len(frames)


def run(cfg: ScoreConfig) -> dict:
    from .model import WorldFlow

    for name in ("top", "batch", "threads"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise WorldFlowError(f"{name}: expected a positive int, got {getattr(cfg, name)!r}")
    torch.set_num_threads(cfg.threads)
    model = WorldFlow.from_pretrained(cfg.model).eval()
    ids, videos, actions = load_videos(cfg.data, model, cfg.episodes)
    t0 = time.perf_counter()
    per_video = [score_frames(model, f[None], None if a is None else a[None], cfg.prompt,
                              batch=cfg.batch, progress=cfg.progress) for f, a in zip(videos, actions)]
    seconds = time.perf_counter() - t0
    # one reference for all: z-scores against every scored frame, not each video's own
    whole = FrameScores(*(torch.cat([getattr(s, c) for s in per_video], dim=1) for c in COLUMNS))
    for s in per_video:
        s.anomaly = s.anomaly_against(whole)
    rows = [(i, t, *(float(getattr(s, c)[0, t]) for c in COLUMNS))
            for i, s in zip(ids, per_video) for t in range(s.bits_per_dim.shape[1])]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("episode", "frame", *COLUMNS))
        writer.writerows(rows)
    top = sorted(rows, key=lambda r: -r[-1])[: cfg.top]
    plot(out / "scores.png", ids, per_video, top)
    return {
        "command": "score",
        "videos": len(ids),
        "frames": len(rows),
        "bits_per_dim_median": round(float(np.median([r[2] for r in rows])), 4),
        "top": [{"episode": r[0], "frame": r[1], "anomaly": round(r[-1], 2), "bits_per_dim": round(r[2], 4),
                 "stillness": None if np.isnan(r[5]) else round(r[5], 2)} for r in top],
        "csv": str(out / "scores.csv"),
        "plot": str(out / "scores.png"),
        "seconds": round(seconds, 2),
        "ms_per_frame": round(1000 * seconds / len(rows), 1),
    }


def plot(path: Path, ids: list[int], scores: list[FrameScores], top: list[tuple]) -> None:
    """The anomaly score of each video over time (up to PANELS), its top frames marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(zip(ids, scores))[:PANELS]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.8 * len(shown) + 0.6), squeeze=False, sharex=True)
    for ax, (i, s) in zip(axes[:, 0], shown):
        anomaly = s.anomaly[0].numpy()
        ax.plot(anomaly, lw=1, color="tab:blue")
        marks = [r[1] for r in top if r[0] == i]
        ax.scatter(marks, anomaly[marks], color="tab:red", zorder=3, s=18)
        for m in marks:
            ax.annotate(str(m), (m, anomaly[m]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_ylabel(f"video {i}\nanomaly (z)", fontsize=8)
    axes[-1, 0].set_xlabel("frame")
    fig.suptitle("per-frame anomaly: max of robust z(log prediction error) and z(stillness); "
                 "red: most anomalous", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
