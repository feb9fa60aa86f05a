"""The reference STARFlow-V computation, reproduced from its fixtures (../shared/reference)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worldflow.config import SamplerConfig
from worldflow.convert import config_from_starflow, from_starflow
from worldflow.denoiser import score_target

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
FIXTURES = {"tiny": ("starflow_v_tiny_float32", None), "tiny4": ("starflow_v_tiny4", (3, 4))}
EXACT = SamplerConfig("jacobi", threshold=0.0)

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference fixtures not found at {REFERENCE} (shared/ is beside the repo)"
)


def load(name: str, dtype=torch.float32, **overrides):
    stem, frame_size = FIXTURES[name]
    tensors = load_file(REFERENCE / f"{stem}.safetensors")
    meta = json.loads((REFERENCE / f"{stem}.json").read_text())
    prefix = "f64." if dtype == torch.float64 else ""
    state = {k: v.to(dtype) for k, v in tensors.items() if k.startswith("state_dict.")}
    config = config_from_starflow(meta["config"], frame_size=frame_size, **overrides)
    model = from_starflow(state, config).to(dtype).eval()
    ref = {
        k[len(prefix) :]: v
        for k, v in tensors.items()
        if k.startswith(prefix) and not k.startswith("state_dict.")
    }
    for key in ("x", "y", "y_null", "z_noise", "z_noise_long", "z"):
        if key in tensors and key not in ref:
            ref[key] = tensors[key].to(dtype)
    return model, ref


def close(actual, expected, atol):
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol:g}"


@pytest.mark.parametrize("name", ["tiny", "tiny4"])
def test_forward_outputs_logdets_and_loss(name):
    model, ref = load(name)
    with torch.no_grad():
        z, logdets, outputs = model.flow_forward(ref["x"], None, ref["y"])
    close(model.codec.from_tokens(z), ref["z"], 1e-5)
    for i, out in enumerate(outputs):  # reference layout (B, T, h, w, c)
        close(out, ref[f"outputs.{i}"].flatten(2, 3), 1e-5)
    for i, logdet in enumerate(logdets):
        close(logdet.reshape(ref[f"logdets.{i}"].shape), ref[f"logdets.{i}"], 1e-5)
    loss = model.reference_loss(z, logdets)
    assert loss.item() == pytest.approx(ref["get_loss.loss"].item(), rel=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny4"])
def test_reverse_sequential_and_jacobi(name):
    model, ref = load(name)
    y, zn = ref["y"], ref["z_noise"]
    close(model.decode(zn, prompt=y, sampler="sequential"), ref["reverse.seq_of_noise"], 1e-4)
    close(model.decode(ref["z"], prompt=y, sampler="sequential"), ref["reverse.seq_of_z"], 1e-4)
    jacobi_key = "reverse.jacobi_of_noise" if name == "tiny" else "reverse.jacobi_exact_of_noise"
    close(model.decode(zn, prompt=y, sampler=EXACT), ref[jacobi_key], 1e-4)


@pytest.mark.parametrize("name", ["tiny", "tiny4"])
def test_guidance(name):
    model, ref = load(name)
    kw = dict(prompt=ref["y"], guidance=2.0, null_prompt=ref["y_null"])
    close(model.decode(ref["z_noise"], sampler="sequential", **kw), ref["reverse.guided2_seq_of_noise"], 1e-4)
    expected = ref.get("reverse.guided2_jacobi_exact_of_noise", ref["reverse.guided2_seq_of_noise"])
    close(model.decode(ref["z_noise"], sampler=EXACT, **kw), expected, 1e-4)


@pytest.mark.parametrize("sampler", ["sequential", "jacobi"])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_continuation_after_one_context_frame(sampler, guidance):
    model, ref = load("tiny4")
    x, zn = ref["x"], ref["z_noise"]
    key = {
        (0.0, "sequential"): "context1.seq_of_noise",
        (0.0, "jacobi"): "context1.jacobi_exact_of_noise",
        (2.0, "sequential"): "context1.guided2_seq_of_noise",
        (2.0, "jacobi"): "context1.guided2_seq_of_noise",
    }
    with torch.no_grad():
        state = model.start(2, prompt=ref["y"], guidance=guidance, null_prompt=ref["y_null"])
        model.push_context(state, x[:, :1])
        tokens = model.codec.to_tokens(zn)
        cfg = "sequential" if sampler == "sequential" else EXACT
        frames = [model.step(state, z=tokens[:, t], sampler=cfg, denoise=False)[0] for t in (1, 2)]
    close(torch.stack(frames, 1), ref[key[guidance, sampler]][:, 1:], 1e-4)


def test_long_video_sliding_window():
    model, ref = load("tiny4", max_frames=2, context_frames=1)
    out = model.decode(ref["z_noise_long"], prompt=ref["y"], sampler=EXACT)
    close(out, ref["long.jacobi_exact_of_noise"], 1e-4)


@pytest.mark.parametrize("name", ["tiny", "tiny4"])
def test_denoiser(name):
    model, ref = load(name)
    tokens = model.codec.to_tokens(ref["x"])
    cos, sin = model._rope(ref["y"].shape[1], ref["x"].shape[1], True, ref["x"])
    with torch.no_grad():
        close(model.codec.from_tokens(model.denoiser(tokens, cos, sin, ref["y"])), ref["denoiser"], 1e-5)
        # the public one-step denoiser is x - sigma * D(x)
        sigma = model.config.noise_std
        close(model.denoise(ref["x"], prompt=ref["y"]), ref["x"] - sigma * ref["denoiser"], 1e-5)
    if "denoiser.window1" in ref:
        narrow = from_starflow(
            {
                k: v
                for k, v in load_file(REFERENCE / "starflow_v_tiny4.safetensors").items()
                if k.startswith("state_dict.")
            },
            dataclasses.replace(model.config, denoiser_window=1),
        ).eval()
        tokens = narrow.codec.to_tokens(ref["x"])
        cos, sin = narrow._rope(4, 3, True, ref["x"])
        with torch.no_grad():
            out = narrow.codec.from_tokens(narrow.denoiser(tokens, cos, sin, ref["y"]))
        close(out, ref["denoiser.window1"], 1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny4"])
def test_score_matching_target(name):
    model, ref = load(name)
    x = ref["x"].clone().requires_grad_(True)
    z, logdets, _ = model.flow_forward(x, None, ref["y"])
    target = score_target(model.reference_loss(z, logdets), x, sigma=0.5)
    expected = ref["score.target_noise_std_0.5"]
    err = (target - expected).abs().max() / expected.abs().max()
    assert err.item() <= 1e-4


def test_float64_twins():
    model, ref = load("tiny4", dtype=torch.float64)
    with torch.no_grad():
        z, logdets, _ = model.flow_forward(ref["x"], None, ref["y"])
    close(model.codec.from_tokens(z), ref["z"], 1e-10)
    assert model.reference_loss(z, logdets).item() == pytest.approx(ref["get_loss.loss"].item(), abs=1e-10)
    close(
        model.decode(ref["z_noise"], prompt=ref["y"], sampler="sequential"),
        ref["reverse.seq_of_noise"],
        1e-10,
    )
    close(
        model.decode(ref["z_noise"], prompt=ref["y"], sampler=EXACT),
        ref["reverse.jacobi_exact_of_noise"],
        1e-10,
    )
