"""`worldflow bench`: run the benchmarks and write a report with tables and plots.

worldflow bench [quick=true] [only=[anomaly,consistency]] [results=benchmarks/results]

Runs each script of the repository's `benchmarks/` folder (from a checkout: the scripts
are not installed with the package) as `python benchmarks/NAME.py --out RESULTS/NAME.json`,
with `quick=true` on a few episodes and short budgets (minutes in all, figures noisier),
then writes `RESULTS/REPORT.md` from every `RESULTS/*.json` there, with PNG plots beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import ASSETS
from .errors import WorldFlowError

# every benchmark, in the order `make bench` runs them, and its quick settings
QUICK = {
    "sampling": ["--repeats", "1"],
    "denoise": ["--episodes", "2", "--repeats", "1"],
    "likelihood": ["--episodes", "3", "--termination_episodes", "10", "--samples", "0"],
    "anomaly": ["--episodes", "4", "--max_steps", "120", "--ae_episodes", "8", "--ae_seconds", "20"],
    "consistency": ["--episodes", "3", "--horizon", "32", "--rssm_episodes", "10", "--rssm_seconds", "30",
                    "--dream_frames", "200"],
    "env_step": ["--episode_steps", "300", "--histories", "8,32"],
    "planning": ["--agents", "policy,random", "--episodes", "2"],
    "generation": ["--clips", "8"],
}
CONSISTENCY_HORIZONS = (1, 2, 4, 8, 16, 32, 64)
# benchmarks that need a model in worldflow/assets (name, how to make it): without it a full
# run skips them (the reason goes in REPORT.md) and `only=[NAME]` is an error
NEEDS_MODEL = {"generation": ("shapes", "worldflow train data=shapes preset=shapes out=runs/shapes "
                                        "(see docs/models.md), then python benchmarks/generation.py "
                                        "--model runs/shapes/model")}


@dataclass
class BenchConfig:
    quick: bool = False
    only: list = field(default_factory=list)  # benchmark names (default: all)
    results: str = "benchmarks/results"
    scripts: str = "benchmarks"  # the folder of the scripts (a repository checkout's)
    report_only: bool = False  # only (re)write REPORT.md from the JSON already there


def run(cfg: BenchConfig) -> dict:
    names = list(cfg.only) or list(QUICK)
    unknown = sorted(set(names) - set(QUICK))
    if unknown:
        raise WorldFlowError(f"only: expected names among {sorted(QUICK)}, got {unknown}")
    scripts, results = Path(cfg.scripts), Path(cfg.results)
    if not cfg.report_only and not all((scripts / f"{n}.py").is_file() for n in names):
        raise WorldFlowError(f"scripts: expected the benchmark scripts in {str(scripts)!r} "
                             f"(run from a checkout of the repository), got none there")
    results.mkdir(parents=True, exist_ok=True)
    skipped = {}
    for name in [n for n in names if n in NEEDS_MODEL and not (ASSETS / NEEDS_MODEL[n][0]).is_dir()]:
        model, how = NEEDS_MODEL[name]
        if cfg.only:
            raise WorldFlowError(f"only: benchmark {name!r} needs the {model!r} model, which is not in "
                                 f"{ASSETS}; train one: {how}")
        skipped[name] = f"no shipped {model!r} model; train one: {how}"
        print(f"[bench] {name}: skipped ({skipped[name]})", file=sys.stderr, flush=True)
    seconds = {}
    for name in [] if cfg.report_only else [n for n in names if n not in skipped]:
        t0 = time.perf_counter()
        print(f"[bench] {name}", file=sys.stderr, flush=True)
        command = [sys.executable, str(scripts / f"{name}.py"), "--out", str(results / f"{name}.json")]
        done = subprocess.run(command + (QUICK[name] if cfg.quick else []))
        if done.returncode:
            raise WorldFlowError(f"only: benchmark {name!r} failed with exit status {done.returncode}")
        seconds[name] = round(time.perf_counter() - t0, 1)
    report = write_report(results, quick=cfg.quick, skipped=skipped)
    return {"command": "bench", "ran": list(seconds), "skipped": skipped, "seconds": seconds,
            "report": str(report)}


def write_report(results: Path, quick: bool = False, skipped: dict | None = None) -> Path:
    """REPORT.md (and plots) from the benchmark JSON files in `results`."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    how = " (quick settings: few episodes, short budgets)" if quick else ""
    lines = ["# Benchmark report", "",
             f"Written by `worldflow bench`{how} from the JSON lines in this folder; each script's "
             "docstring says what it measures.", ""]
    for name, why in (skipped or {}).items():
        lines += [f"Skipped `{name}.py`: {why}.", ""]
    if "anomaly" in found:
        lines += _anomaly(found["anomaly"], results)
    if "consistency" in found:
        lines += _consistency(found["consistency"], results)
    if "generation" in found:
        lines += _generation(found["generation"])
    for name, result in found.items():
        if name not in ("anomaly", "consistency", "generation"):
            lines += [f"## {name}", "", "```json", json.dumps(result, indent=1)[:4000], "```", ""]
    path = results / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _anomaly(result: dict, results: Path) -> list[str]:
    methods = result["methods"]
    kinds = list(result["anomalies_per_kind"])
    left = result.get("identical_left_out") or {}
    left_out = (" Left out as identical to the real frame (no anomaly): "
                + ", ".join(f"{k} {n}" for k, n in left.items()) + ".") if left else ""
    lines = ["## Anomaly scoring (`anomaly.py`)", "",
             f"{result['normal_frames']} normal held-out frames; anomalies per kind: "
             + ", ".join(f"{k} {n}" for k, n in result["anomalies_per_kind"].items()) + "." + left_out, "",
             "AUROC / AUPRC per kind (best AUROC in bold):", "",
             "| kind | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for kind in kinds:
        cells = []
        for m in methods:
            cell = f"{methods[m][kind]['auroc']:.3f} / {methods[m][kind]['auprc']:.3f}"
            cells.append(f"**{cell}**" if m in result["best_per_kind"][kind] else cell)
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("| mean AUROC | " + " | ".join(f"{methods[m]['mean_auroc']:.3f}" for m in methods) + " |")
    lines.append("| worst AUROC | " + " | ".join(f"{methods[m]['min_auroc']:.3f}" for m in methods) + " |")
    lines += ["", f"worldflow is among the best on {result['worldflow_best_share']:.0%} of the kinds, "
              f"alone best on {result['worldflow_alone_best_share']:.0%}.", "",
              "![AUROC per kind](anomaly_auroc.png)", ""]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ax.bar([k + i * width for k in range(len(kinds))], [methods[m][k]["auroc"] for k in kinds], width,
               label=m)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(kinds))], kinds, fontsize=8)
    ax.set_ylabel("AUROC")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7, ncol=len(methods), loc="lower center")
    fig.tight_layout()
    fig.savefig(results / "anomaly_auroc.png", dpi=110)
    plt.close(fig)
    return lines


def _consistency(result: dict, results: Path) -> list[str]:
    methods = result["methods"]
    shown = [h for h in CONSISTENCY_HORIZONS if h <= result["horizon"]]
    lines = ["## Long-horizon consistency (`consistency.py`)", "",
             f"{result['rollouts']} open-loop rollouts from {result['context']} real frames under the real "
             "actions. Cart error (model pixels) / pole error (degrees) / PSNR (dB) per horizon:", "",
             "| method | " + " | ".join(f"h={h}" for h in shown) + " |", "|---" * (len(shown) + 1) + "|"]

    def fmt(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"

    for m, r in methods.items():
        cells = [f"{fmt(r['cart_px'][h - 1], 2)} / {fmt(r['pole_deg'][h - 1], 2)} / "
                 f"{fmt(r['psnr_db'][h - 1], 1)}" for h in shown]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Summary: " + ", ".join(f"{k} {v}" for k, v in result["summary"].items()) + ".", ""]
    for key, actions in (("dream", "random actions"), ("dream_policy", "the policy learned in the dream")):
        d = result.get(key)
        if d is None:
            continue
        pole = d.get("pole_angle_in_real_range")
        lines += [f"A {d['frames']}-frame dream under {actions}: cart position within the real range "
                  f"in {d['cart_x_in_real_range']:.1%} of frames (unread {d['cart_x_unread']:.1%}), mean "
                  f"intensity in range in {d['mean_intensity_in_real_range']:.1%}"
                  + ("" if pole is None else f", pole angle in range in {pole:.1%}")
                  + f", longest run of unchanged frames {d['longest_still_run']}.", ""]
    lines += ["![errors per horizon](consistency.png)", ""]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, label) in zip(axes, (("cart_px", "cart error (px)"), ("pole_deg", "pole error (deg)"),
                                       ("psnr_db", "PSNR (dB)"))):
        for m, r in methods.items():
            values = [float("nan") if v is None else v for v in r[key]]
            ax.plot(range(1, len(values) + 1), values, label=m)
        ax.set_xlabel("horizon (frames)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results / "consistency.png", dpi=110)
    plt.close(fig)
    return lines


def _generation(result: dict) -> list[str]:
    tasks = ("text_to_video", "image_to_video", "video_to_video", "long_video")
    t2v, i2v, v2v, long = (result[k] for k in tasks)
    return [
        "## Generation on the shapes world (`generation.py`)", "",
        f"{result['clips']} held-out clips a task, guidance {result['guidance']}, temperature "
        f"{result['temperature']}.", "",
        "| task | figure |", "|---|---|",
        f"| text-to-video | caption adherence {t2v['guided']['adherence']:.0%} guided, "
        f"{t2v['unguided']['adherence']:.0%} unguided; colours and kinds right "
        f"{t2v['guided']['objects_right']:.0%} / {t2v['unguided']['objects_right']:.0%} |",
        f"| image-to-video | first frame {i2v['psnr_first_to_image']:.1f} dB to the image "
        f"({i2v['psnr_true_next_to_image']:.1f} dB for the true next frame), "
        f"{i2v['psnr_first_to_next_truth']:.1f} dB to the true next frame; moving as captioned "
        f"{i2v['motion_as_captioned']:.0%} |",
        f"| video-to-video | edit success {v2v['edit_success']:.0%}, rest preserved {v2v['preserved']:.0%}, "
        f"{v2v['psnr_to_edited_truth']:.1f} dB to the true edit |",
        f"| long video ({long['frames']} frames) | objects present with their colour: "
        + ", ".join(f"{k.split('_')[-1]} {v:.0%}" for k, v in long.items() if k.startswith("objects_present"))
        + " |", ""]
