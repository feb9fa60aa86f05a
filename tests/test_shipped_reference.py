"""The shipped models score and dream as when their figures were stored.

`fixtures/shipped_reference.json` holds, for each shipped model, what it computed on one
real CartPole episode on one thread: every frame's NLL and the dream env's rewards (exact
float hex), the bits of each frame and channel; `fixtures/shipped_reference.npz` holds
the uint8 frames of Jacobi dreams at temperature 1 and 0 and of a stepped dream env.

Different CPUs round float32 differently (kernels are picked per instruction set): a
score moves by an ulp or so, and the inverse flips a rare pixel by one level. The
tolerances admit exactly that and nothing a refactor that changes the computation would
produce: scores to a relative 1e-6, frames at least 99.9% identical, mean difference
under 0.01 levels.

Regenerate (only when a change is meant to alter the models' numbers, and say so in the
commit): `python tests/test_shipped_reference.py --write`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldflow as wf
from worldflow.checkpoint import ASSETS
from worldflow.data import record_episode

FIXTURE = Path(__file__).parent / "fixtures" / "shipped_reference.json"
FRAMES = FIXTURE.with_suffix(".npz")
MODELS = ("cartpole", "cartpole-frame-independent")
SCORES = ("nll", "dim_bits", "env_rewards")  # float figures, stored as hex
PICTURES = ("dream", "dream_temperature_0", "env_observations")  # uint8 frames

pytestmark = pytest.mark.skipif(
    not all((ASSETS / name).is_dir() for name in MODELS),
    reason="the shipped models are not in worldflow/assets",
)


def hexes(t: torch.Tensor) -> list[str]:
    return [float(v).hex() for v in t.double().flatten()]


@torch.no_grad()
def figures(name: str) -> dict[str, torch.Tensor]:
    """What the shipped model `name` computes on a fixed real episode (one thread)."""
    import worldflow.envs  # noqa: F401  (registers worldflow/Dream-v0)

    model = wf.WorldFlow.from_pretrained(name)
    cfg = model.config
    ep = record_episode(cfg.env_id, seed=4321, max_steps=20, frame_size=cfg.frame_size, crop=cfg.crop)
    frames, actions = ep["frames"][None], ep["actions"][None]  # (1, 21, H, W, 3), (1, 21)
    lp = model.log_prob(frames, actions)
    dim_bits = model.log_prob(frames[:, :6], actions[:, :6], per_dim=True).dim_bits  # (1, 6, 3, H, W)
    dream = model.generate(8, context=frames[:, :4], actions=actions[:, :11], seed=0)
    mode = model.generate(8, context=frames[:, :4], actions=actions[:, :11], temperature=0, seed=0)
    env = gym.make("worldflow/Dream-v0", model=model, reward="log_likelihood")
    obs, _ = env.reset(seed=0)
    observations, rewards = [torch.as_tensor(obs)], []
    for a in (0, 1, 1, 0, 1, 0):
        obs, reward, *_ = env.step(a)
        observations.append(torch.as_tensor(obs))
        rewards.append(reward)
    env.close()
    return {
        "nll": lp.nll,
        "dim_bits": dim_bits.sum(dim=(-2, -1)),  # (1, 6, 3): each frame's and channel's bits
        "env_rewards": torch.tensor(rewards, dtype=torch.float64),
        "dream": dream,
        "dream_temperature_0": mode,
        "env_observations": torch.stack(observations),
    }


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_computes_its_stored_figures(name):
    stored = json.loads(FIXTURE.read_text())[name]
    pictures = np.load(FRAMES)
    now = figures(name)
    for key in SCORES:
        want = torch.tensor([float.fromhex(v) for v in stored[key]], dtype=torch.float64)
        torch.testing.assert_close(now[key].double().flatten(), want, rtol=1e-6, atol=0,
                                   msg=lambda m, key=key: f"{name}: {key} changed\n{m}")
    for key in PICTURES:
        want = torch.from_numpy(pictures[f"{name}/{key}"])
        assert now[key].shape == want.shape, f"{name}: {key} shape changed"
        diff = (now[key].int() - want.int()).abs()
        assert (diff == 0).double().mean() >= 0.999, f"{name}: {key} changed"
        assert diff.double().mean() < 0.01, f"{name}: {key} changed"


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)  # as every test runs (conftest.one_thread)
    FIXTURE.parent.mkdir(exist_ok=True)
    computed = {name: figures(name) for name in MODELS}
    FIXTURE.write_text(json.dumps({name: {k: hexes(f[k]) for k in SCORES} for name, f in computed.items()},
                                  indent=1) + "\n")
    frames = {f"{name}/{k}": f[k].numpy() for name, f in computed.items() for k in PICTURES}
    np.savez_compressed(FRAMES, **frames)
    print(f"wrote {FIXTURE} and {FRAMES}")
