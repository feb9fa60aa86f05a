"""Likelihood units and the frame-entropy estimate against closed forms."""

import math

import pytest
import torch

from worldflow.metrics import frame_entropy_bits, noise_floor_bits


def test_noise_floor_is_the_gaussian_entropy_in_pixel_units():
    for sigma in (0.01, 0.05, 0.3):
        nats = torch.distributions.Normal(0.0, 127.5 * sigma).entropy().item()  # in float32
        assert noise_floor_bits(sigma) == pytest.approx(nats / math.log(2), rel=1e-6)


def _frames(symbols: torch.Tensor) -> torch.Tensor:
    """Each symbol < 65536 as a tiny two-byte 'frame' (N, 1, 2) uint8."""
    return torch.stack([symbols // 256, symbols % 256], dim=-1)[:, None].to(torch.uint8)


def test_well_sampled_uniform_gives_log2_of_its_size():
    g = torch.Generator().manual_seed(0)
    est = frame_entropy_bits(_frames(torch.randint(0, 300, (30_000,), generator=g)))
    assert est["distinct"] == 300 and est["frames"] == 30_000
    assert est["plug_in_bits"] == pytest.approx(math.log2(300), abs=0.02)
    assert est["chao_shen_bits"] == pytest.approx(math.log2(300), abs=0.02)


def test_undersampled_uniform_chao_shen_is_closer_than_plug_in():
    g = torch.Generator().manual_seed(1)
    true = math.log2(4000)
    est = frame_entropy_bits(_frames(torch.randint(0, 4000, (4000,), generator=g)))
    assert est["singletons"] > 1000  # most symbols seen once: the plug-in estimate is far too low
    assert true - est["plug_in_bits"] > 0.5
    assert abs(est["chao_shen_bits"] - true) < 0.5 * abs(est["plug_in_bits"] - true)


def test_a_repeated_frame_has_no_entropy_and_bad_input_is_named():
    frame = torch.full((10, 4, 4, 3), 7, dtype=torch.uint8)
    est = frame_entropy_bits(frame)
    assert est["distinct"] == 1 and est["plug_in_bits"] == 0 and est["chao_shen_bits"] == 0
    with pytest.raises(ValueError, match="frames: expected"):
        frame_entropy_bits(frame[:1])
