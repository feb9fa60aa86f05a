"""The causal denoiser and one-step flow-score denoising."""

import pytest
import torch
from conftest import build

import worldflow as wf


def test_lookahead_zero_is_strictly_causal():
    model = build(seed=5, denoiser_window=3, denoiser_lookahead=0)
    x = torch.randn(2, 6, 3, 16, 16)
    out = model.denoise(x)
    for t in range(5):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        out2 = model.denoise(x2)
        assert torch.equal(out2[:, : t + 1], out[:, : t + 1])
        assert not torch.equal(out2[:, t + 1], out[:, t + 1])


def test_lookahead_and_window_bound_visibility():
    model = build(seed=6, denoiser_window=2, denoiser_lookahead=1)
    x = torch.randn(1, 6, 3, 16, 16)
    out = model.denoise(x)
    x2 = x.clone()
    x2[:, 4] += 1.0  # frame 4 is seen by frame 3 (look-ahead 1) and frame 5 (window 2)
    out2 = model.denoise(x2)
    changed = [not torch.equal(out2[:, t], out[:, t]) for t in range(6)]
    assert changed == [False, False, False, True, True, True]


@pytest.mark.parametrize("predicts", ["score", "clean"])
def test_causality_holds_for_both_parameterizations(predicts):
    model = build(seed=7, denoiser_window=3, denoiser_predicts=predicts)
    x = torch.randn(1, 4, 3, 16, 16)
    x2 = x.clone()
    x2[:, 2:] += 1.0
    assert torch.equal(model.denoise(x2)[:, :2], model.denoise(x)[:, :2])


def test_clean_parameterization_returns_the_network_output():
    """predicts="clean": the prediction is (x - x_hat) / sigma, so one step returns x_hat.
    With the output layer's weights zero, x_hat is its bias whatever the input."""
    model = build(seed=8, denoiser_predicts="clean")
    bias = torch.randn(model.config.token_dim)
    with torch.no_grad():
        model.denoiser.proj_out.weight.zero_()
        model.denoiser.proj_out.bias.copy_(bias)
    x = torch.randn(2, 3, 3, 16, 16)
    expected = model.codec.from_tokens(bias.expand(2, 3, model.config.tokens_per_frame, -1))
    assert torch.allclose(model.denoise(x), expected, atol=1e-6)
    score = model.codec.from_tokens(model.denoiser_tokens(x))
    assert torch.allclose(score, (x - expected) / model.config.noise_std, atol=1e-4)
    with pytest.raises(wf.ConfigError, match="denoiser_predicts.*'score' or 'clean'.*'noise'"):
        build(denoiser_predicts="noise")


def test_exact_denoising_of_a_gaussian_is_shrinkage():
    model = wf.WorldFlow.from_preset("tiny")  # identity flow at init: p(x) = N(0, I)
    sigma = model.config.noise_std
    x = torch.randn(2, 3, 3, 16, 16)
    # grad log N(x; 0, I) = -x, so x + sigma^2 * score = (1 - sigma^2) x
    assert torch.allclose(model.denoise(x, method="exact"), (1 - sigma**2) * x, atol=1e-6)
    state = model.start(2)
    frame, info = model.step(state, denoise="exact", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frame, (1 - sigma**2) * info["x_noisy"], atol=1e-6)


def test_learned_denoiser_is_used_in_generation(tiny):
    with torch.no_grad():
        for p in tiny.denoiser.parameters():
            p.zero_()
        tiny.denoiser.proj_out.bias.fill_(1.0)  # predicts sigma * grad NLL = 1 everywhere
    state = tiny.start(1)
    frame, info = tiny.step(state, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frame, info["x_noisy"] - tiny.config.noise_std, atol=1e-6)
    # "auto" (the default) leaves the temperature-0 mode path raw; True forces the denoiser
    frame, info = tiny.step(tiny.start(1), temperature=0.0)
    assert torch.equal(frame, info["x_noisy"])
    frame, info = tiny.step(tiny.start(1), temperature=0.0, denoise=True)
    assert torch.allclose(frame, info["x_noisy"] - tiny.config.noise_std, atol=1e-6)
    for bad in ("magic", 1, None):
        with pytest.raises(ValueError, match="denoise"):
            tiny.step(state, denoise=bad)
    assert state.frame_index == 1  # a refused step appends nothing
    with pytest.raises(ValueError, match="denoise"):
        tiny.generate(2, temperature=0.0, denoise="sharp")
