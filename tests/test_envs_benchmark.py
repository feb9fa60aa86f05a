"""Smoke run of benchmarks/env_step.py on a tiny model: it runs and reports what it promises."""

import importlib.util
import json
import sys
from pathlib import Path

import torch
from test_envs import cartpole_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "env_step.py"


def test_env_step_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_env_step", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    path = str(cartpole_model().save_pretrained(tmp_path / "model"))
    args = bench.Args(
        model=path,
        batches="1,2",
        throughput_steps=1,
        episode_steps=12,
        warmup=6,
        window=3,
        histories="2,9",
        history_steps=1,
        threads=torch.get_num_threads(),
    )
    result = bench.run(args)
    json.dumps(result, allow_nan=False)
    assert result["model"] == path and set(result["steps_per_s"]) == {"1", "2"}
    assert set(result["history_frames"]) == {"2", "9"}
    for key in ("rss_growth_mb_after_warmup", "step_time_ratio_end_over_warmup"):
        assert result[key] == result[key]  # a number, not NaN
