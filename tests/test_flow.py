"""Flow blocks and the whole flow: exact log-determinants and autoregressive structure."""

import pytest
import torch
from conftest import build

FRAMES = 2
SMALL = dict(
    frame_size=(4, 8),
    patch_size=2,
    head_dim=24,
    shallow_width=48,
    deep_width=48,
    denoiser_width=48,
    num_actions=3,
)  # 2 frames x 96 dims = 192 dimensions


def jacobian(fn, x):
    return torch.autograd.functional.jacobian(fn, x).reshape(x.numel(), x.numel())


def test_logdet_equals_autograd_jacobian_float64():
    model = build(seed=1, dtype=torch.float64, **SMALL)
    cfg = model.config
    x = torch.randn(1, FRAMES, 3, *cfg.frame_size, dtype=torch.float64)
    actions = torch.tensor([[2, 0]])

    def z_of(v):
        return model.encode(v.view_as(x), actions)[0].reshape(-1)

    jac = jacobian(z_of, x.reshape(-1))
    assert jac.shape == (192, 192)
    _, logabsdet = torch.linalg.slogdet(jac)
    _, logdet = model.encode(x, actions)
    assert abs(logdet.sum().item() - logabsdet.item()) < 1e-6


def test_each_block_is_exactly_autoregressive_in_its_order():
    model = build(seed=2, dtype=torch.float64, **SMALL)
    cfg = model.config
    n, c = cfg.tokens_per_frame, cfg.token_dim
    cos, sin = model.shallow_rope()
    for i, block in enumerate(model.shallow_blocks):
        u = torch.randn(1, n, c, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda t, b=block: b(t, cos, sin)[0], u)[0, :, :, 0]
        for j in range(n):  # output token j vs input token k (block order)
            for k in range(n):
                block_jk = jac[j, :, k, :]
                if k > j:
                    assert torch.count_nonzero(block_jk) == 0, f"block {i}: token {j} depends on later {k}"
                elif k == j:  # the affine map is elementwise within a token
                    assert torch.count_nonzero(block_jk - torch.diag(torch.diagonal(block_jk))) == 0
    # the deep block: tokens of frame t never depend on frames after t
    x = torch.randn(1, FRAMES, 3, *cfg.frame_size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.encode(v)[0], x)[0, :, :, :, :, 0]
    assert torch.count_nonzero(jac[0][:, :, :, 1]) == 0  # z of frame 0 vs x of frame 1
    assert torch.count_nonzero(jac[1][:, :, :, 0]) > 0  # frame 1 does depend on frame 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rotary_turns_each_adjacent_pair_by_its_angle(dtype):
    """(x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), whichever path the dtype takes."""
    from worldflow.nn import apply_rotary

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64)
    angle = torch.randn(5, 4, generator=gen, dtype=torch.float64).repeat_interleave(2, -1)
    x0, x1 = x[..., ::2], x[..., 1::2]
    c, s = angle.cos()[:, ::2], angle.sin()[:, ::2]
    expected = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)
    got = apply_rotary(x.to(dtype), angle.cos().to(dtype), angle.sin().to(dtype))
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 3e-2}[dtype]
    assert got.dtype == dtype and torch.allclose(got.double(), expected, atol=tol)
