"""WorldFlow's public contract: invertibility, causality, caching, batching, units, errors."""

import math

import pytest
import torch
from conftest import build

import worldflow as wf
from worldflow.config import SamplerConfig

TIGHT = SamplerConfig("jacobi", threshold=1e-12)


def video(batch=2, frames=4, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(batch, frames, 3, 16, 16, generator=gen).clamp(-3, 3)


@pytest.mark.parametrize("sampler", ["sequential", "jacobi"])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_decode_inverts_encode(tiny, sampler, scale):
    x = video(scale=scale)
    actions = torch.tensor([[0, 1, 1], [1, 0, 1]])
    z, _ = tiny.encode(x, actions)
    assert (z - x).abs().max() > 0.1  # the flow really transforms
    cfg = TIGHT if sampler == "jacobi" else sampler
    assert (tiny.decode(z, actions, sampler=cfg) - x).abs().max().item() <= 1e-4


def test_jacobi_with_tight_threshold_equals_sequential(tiny):
    z = torch.randn(2, 4, 3, 16, 16)
    actions = torch.tensor([[1, 1, 0], [0, 0, 1]])
    seq = tiny.decode(z, actions, sampler="sequential")
    jac = tiny.decode(z, actions, sampler=TIGHT)
    assert (seq - jac).abs().max().item() <= 1e-4


def test_changing_frame_t_leaves_earlier_frames_bit_identical(tiny):
    x = video(frames=5)
    actions = torch.tensor([[0, 1, 0, 1, 0], [1, 1, 0, 0, 1]])
    z, _ = tiny.encode(x, actions)
    nll = tiny.frame_nll(x, actions)
    for t in range(5):
        x2 = x.clone()
        x2[:, t] += torch.randn_like(x2[:, t])
        z2, _ = tiny.encode(x2, actions)
        nll2 = tiny.frame_nll(x2, actions)
        assert torch.equal(z2[:, :t], z[:, :t]) and torch.equal(nll2[:, :t], nll[:, :t])
        assert not torch.equal(nll2[:, t], nll[:, t])


def test_changing_action_t_leaves_frames_up_to_t_bit_identical(tiny):
    x = video(frames=5)
    actions = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])
    z, _ = tiny.encode(x, actions)
    for t in range(4):
        a2 = actions.clone()
        a2[:, t] = 1 - a2[:, t]
        z2, _ = tiny.encode(x, a2)
        assert torch.equal(z2[:, : t + 1], z[:, : t + 1])
        assert not torch.equal(z2[:, t + 1], z[:, t + 1])


@pytest.mark.parametrize("frames", [4, 13])  # 13 > max_frames = 8: the window slides
def test_frame_by_frame_cached_encoding_equals_full_pass(tiny, frames):
    x = video(frames=frames)
    actions = torch.randint(0, 2, (2, frames))
    z, _ = tiny.encode(x, actions)
    nll = tiny.frame_nll(x, actions)
    state = tiny.start(2)
    zs, nlls = [], []
    for t in range(frames):
        act = None if t == 0 else actions[:, t - 1 : t]
        zt, nt = tiny.push_context(state, x[:, t : t + 1], act)
        zs.append(zt)
        nlls.append(nt)
    assert (torch.cat(zs, 1) - z).abs().max().item() <= 1e-5
    assert (torch.cat(nlls, 1) - nll).abs().max().item() <= 1e-5 * nll.abs().max().item()


def test_batch_items_equal_single_item_calls(tiny):
    x = video(batch=3)
    actions = torch.randint(0, 2, (3, 3))
    z, logdet = tiny.encode(x, actions)
    out = tiny.decode(z, actions, sampler=TIGHT)
    for i in range(3):
        zi, li = tiny.encode(x[i : i + 1], actions[i : i + 1])
        assert (zi - z[i : i + 1]).abs().max() <= 1e-5 and (li - logdet[i : i + 1]).abs().max() <= 1e-3
        oi = tiny.decode(z[i : i + 1], actions[i : i + 1], sampler=TIGHT)
        assert (oi - out[i : i + 1]).abs().max() <= 1e-5


def test_log_prob_units_and_noise_floor():
    model = wf.WorldFlow.from_preset("tiny")  # identity flow at init: z = x
    frames = torch.full((1, 2, 16, 16, 3), 128, dtype=torch.uint8)
    lp = model.log_prob(frames)
    d = 3 * 16 * 16
    x = 128 / 127.5 - 1
    expected = d * (0.5 * x * x + 0.5 * math.log(2 * math.pi)) + d * math.log(127.5)
    assert lp.nll.shape == (1, 2)
    assert lp.nll[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert lp.bits_per_dim[0, 0].item() == pytest.approx(expected / (d * math.log(2)), rel=1e-5)


def test_per_dim_bits_of_the_identity_flow_are_each_pixels_gaussian_bits():
    model = wf.WorldFlow.from_preset("tiny")  # identity flow at init: z = x, no log-scales
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 2, 16, 16, 3), generator=gen, dtype=torch.uint8)
    lp = model.log_prob(frames, per_dim=True)
    x = frames.permute(0, 1, 4, 2, 3).double() / 127.5 - 1
    expected = (0.5 * x * x + 0.5 * math.log(2 * math.pi) + math.log(127.5)) / math.log(2)
    assert lp.dim_bits.shape == (1, 2, 3, 16, 16)
    torch.testing.assert_close(lp.dim_bits.double(), expected, rtol=1e-5, atol=1e-5)


def test_per_dim_bits_add_up_to_each_frames_bits(tiny):
    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 3, 16, 16, 3), generator=gen, dtype=torch.uint8)
    actions = torch.tensor([[0, 1], [1, 1]])
    whole = tiny.log_prob(frames, actions, noise=True, seed=3)
    parts = tiny.log_prob(frames, actions, noise=True, seed=3, per_dim=True)
    assert whole.dim_bits is None
    torch.testing.assert_close(parts.dim_bits.mean(dim=(2, 3, 4)), whole.bits_per_dim, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.nll, whole.nll, rtol=1e-5, atol=1e-3)


def test_generate_shapes_determinism_and_context(tiny):
    actions = torch.randint(0, 2, (2, 5))
    a = tiny.generate(4, actions=actions[:, :3], batch_size=2, seed=3)
    b = tiny.generate(4, actions=actions[:, :3], batch_size=2, seed=3)
    c = tiny.generate(4, actions=actions[:, :3], batch_size=2, seed=4)
    assert a.shape == (2, 4, 16, 16, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    context = a[:, :2]
    cont = tiny.generate(3, context=context, actions=actions[:, :4], seed=0)
    assert cont.shape == (2, 3, 16, 16, 3)
    long = tiny.generate(11, batch_size=1, seed=0, denoise=False)  # beyond the window of 8
    assert long.shape == (1, 11, 16, 16, 3)
    mode = tiny.generate(2, batch_size=1, temperature=0.0, seed=1)
    assert torch.equal(mode, tiny.generate(2, batch_size=1, temperature=0.0, seed=2))


def test_text_model_prompts_and_guidance():
    model = build(seed=3, text_dim=32, text_len=8)
    a = model.generate(2, prompt="a cart", batch_size=2, seed=0, guidance=1.5)
    b = model.generate(2, prompt="a pole", batch_size=2, seed=0, guidance=1.5)
    assert a.shape == (2, 2, 16, 16, 3) and not torch.equal(a, b)
    with pytest.raises(wf.WorldFlowError, match="prompt"):
        build(seed=0).log_prob(a, prompt="text")
    for bad in (5, {"text": "a cart"}, ["a cart"], ["a cart", 3]):  # unknown types, wrong count
        with pytest.raises(wf.WorldFlowError, match="^prompt: expected a string"):
            model.generate(1, prompt=bad, batch_size=2)
    again = model.generate(2, prompt="a cart", batch_size=2, seed=0, guidance=1.5)
    assert torch.equal(again, a)  # the model is still usable


def test_save_and_load_roundtrip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m", extra={"note": "test"})
    loaded = wf.WorldFlow.from_pretrained(tmp_path / "m")
    assert loaded.config == tiny.config and loaded.info["note"] == "test"
    x = video()
    assert torch.equal(loaded.encode(x)[0], tiny.encode(x)[0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.log_prob(torch.zeros(1, 2, 16, 16, 3)), "frames: expected uint8"),
        (lambda m: m.log_prob(torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8)), r"frames: expected shape"),
        (
            lambda m: m.encode(torch.zeros(1, 2, 3, 16, 16), torch.tensor([[0, 5]])),
            r"actions: expected values",
        ),
        (lambda m: m.encode(torch.zeros(1, 2, 3, 16, 16), torch.zeros(1, 2)), r"actions: expected integer"),
        (lambda m: m.generate(0), "num_frames"),
        (lambda m: wf.WorldFlow.from_preset("huge"), "preset"),
        (lambda m: wf.WorldFlow.from_pretrained("/nonexistent/model"), "model: expected"),
    ],
)
def test_bad_input_names_the_argument(tiny, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny)
    x = video()  # the model still works afterwards
    assert torch.isfinite(tiny.encode(x)[0]).all()


def test_7b_preset_on_meta_device():
    with torch.device("meta"):
        model = wf.WorldFlow.from_preset("starflow-v-7b")
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 6.89e9) / 6.89e9 < 0.02, params


def test_window_of_one_frame_makes_frames_independent():
    model = build(seed=4, num_actions=2, max_frames=1, context_frames=0)
    x = video(batch=1, frames=3)
    nll = model.frame_nll(x, torch.tensor([[0, 1, 0]]))
    alone = torch.cat([model.frame_nll(x[:, t : t + 1]) for t in range(3)], dim=1)
    assert (nll - alone).abs().max().item() <= 1e-4  # neither other frames nor actions matter
    # observed frame by frame, each frame begins a window and reads the null action too
    state, steps, actions = model.start(1), [], torch.tensor([[0, 1, 0]])
    for t in range(3):
        steps.append(model.push_context(state, x[:, t : t + 1], actions[:, t - 1 : t] if t else None)[1])
    torch.testing.assert_close(torch.cat(steps, dim=1), nll, rtol=1e-6, atol=1e-3)
    z, _ = model.encode(x)
    assert (model.decode(z, sampler=TIGHT) - x).abs().max().item() <= 1e-4
    # a video and its frames as a batch of one-frame videos draw the same seeded noise
    gen = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (1, 3, 16, 16, 3), generator=gen, dtype=torch.uint8)
    whole = model.log_prob(frames, noise=True, seed=9, per_dim=True)
    each = model.log_prob(frames.transpose(0, 1), noise=True, seed=9, per_dim=True)
    torch.testing.assert_close(each.dim_bits.transpose(0, 1), whole.dim_bits, rtol=0, atol=1e-4)


def test_corrupted_pretrained_weights_raise(tiny, tmp_path):
    path = tiny.save_pretrained(tmp_path / "m")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte inside a tensor: safetensors alone would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(wf.CheckpointError, match="checksum"):
        wf.WorldFlow.from_pretrained(path)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(wf.CheckpointError):
        wf.WorldFlow.from_pretrained(path)
