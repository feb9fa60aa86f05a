"""The shipped CartPole models on a real episode: causality, frame independence, surprise."""

import pytest
import torch
from test_benchmarks_smoke import load_script

import worldflow as wf
from worldflow.checkpoint import ASSETS
from worldflow.data import record_episode

pytestmark = pytest.mark.skipif(
    not (ASSETS / "cartpole").is_dir() or not (ASSETS / "cartpole-frame-independent").is_dir(),
    reason="the shipped cartpole models are not in worldflow/assets",
)
K = 12  # the tampered frame


@pytest.fixture(scope="module")
def models():
    return {name: wf.WorldFlow.from_pretrained(name) for name in ("cartpole", "cartpole-frame-independent")}


@pytest.fixture(scope="module")
def episode(models):
    cfg = models["cartpole"].config
    ep = record_episode(cfg.env_id, seed=4321, max_steps=20, frame_size=cfg.frame_size, crop=cfg.crop)
    frames, actions = ep["frames"][None], ep["actions"][None]
    tampered = frames.clone()
    tampered[:, K] = torch.roll(tampered[:, K], 8, dims=2)  # the cart and pole 8 pixels right
    return frames, actions, tampered


def bits(model, frames, actions):
    with torch.no_grad():
        return model.log_prob(frames, actions).bits_per_dim[0]


def test_world_model_is_causal_and_surprised_by_a_tampered_frame(models, episode):
    frames, actions, tampered = episode
    model = models["cartpole"]
    real, fake = bits(model, frames, actions), bits(model, tampered, actions)
    torch.testing.assert_close(fake[:K], real[:K], rtol=0, atol=1e-5)  # the past does not see it
    assert fake[K] - real[K] > 0.1  # the jump out ...
    assert fake[K + 1] - real[K + 1] > 0.1  # ... and the real frame after it, jumping back


def test_frame_independent_baseline_scores_each_frame_alone(models, episode):
    frames, actions, tampered = episode
    model = models["cartpole-frame-independent"]
    real, fake = bits(model, frames, actions), bits(model, tampered, actions)
    others = torch.arange(real.numel()) != K
    torch.testing.assert_close(fake[others], real[others], rtol=0, atol=1e-5)
    # A shifted cart is a plausible frame on its own: only a model of the past can flag it
    # (measured: +0.0005 bits/dim here, against +0.33 under the world model).
    assert fake[K] != real[K] and abs(fake[K] - real[K]) < 0.01


def test_surprise_map_points_at_the_moved_cart(models, episode):
    frames, actions, tampered = episode
    model = models["cartpole"]
    with torch.no_grad():
        real = model.log_prob(frames, actions, per_dim=True).dim_bits[0, K]
        fake = model.log_prob(tampered, actions, per_dim=True).dim_bits[0, K]
    changed = (frames[0, K] != tampered[0, K]).any(dim=-1)  # (H, W): where the picture moved
    extra = (fake - real).sum(dim=0)  # (H, W) bits the tampering added at each pixel
    assert changed.float().mean() < 0.2  # a small region of the frame ...
    assert extra[changed].sum() > 0.5 * extra.sum() > 0  # ... holds most of the surprise


def test_only_the_world_model_tells_anomalies_that_look_like_real_frames():
    """A skipped, mirrored or teleported frame is a real-looking picture: the frame-independent
    baseline scores it like any frame, the world model by whether it follows from the past;
    a frozen frame is even likely, and only the stillness term (the model expected motion)
    lifts it."""
    bench = load_script("anomaly")
    result = bench.run(bench.Args(episodes=3, max_steps=40, every=5, ae_episodes=0,
                                  threads=torch.get_num_threads()))
    auroc = {method: {k: v["auroc"] for k, v in r.items() if isinstance(v, dict)}
             for method, r in result["methods"].items()}
    world, frame_alone = auroc["worldflow"], auroc["frame_independent"]
    assert min(result["anomalies_per_kind"].values()) >= 8
    for kind in ("skipped", "mirrored", "teleport"):
        assert world[kind] > frame_alone[kind] + 0.2, kind
    assert world["teleport"] > 0.95 and world["mirrored"] > 0.95
    assert world["frozen"] > auroc["worldflow_bits"]["frozen"] + 0.1
