"""The shipped models score and dream exactly as when their figures were stored.

`fixtures/shipped_reference.json` holds, for each shipped model, what it computed on one
real CartPole episode on one thread: every frame's NLL (exact float hex), the SHA-256 of
Jacobi dreams at temperature 1 and 0 and of a stepped dream env's observations, and the
env's rewards. A refactor that changes any bit of a score or a dream fails here.

Regenerate (only when a change is meant to alter the models' numbers, and say so in the
commit): `python tests/test_shipped_reference.py --write`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import worldflow as wf
from worldflow.checkpoint import ASSETS
from worldflow.data import record_episode

FIXTURE = Path(__file__).parent / "fixtures" / "shipped_reference.json"
MODELS = ("cartpole", "cartpole-frame-independent")

pytestmark = pytest.mark.skipif(
    not all((ASSETS / name).is_dir() for name in MODELS),
    reason="the shipped models are not in worldflow/assets",
)


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def hexes(t: torch.Tensor) -> list[str]:
    return [float(v).hex() for v in t.double().flatten()]


@torch.no_grad()
def figures(name: str) -> dict:
    """What the shipped model `name` computes on a fixed real episode (one thread)."""
    import worldflow.envs  # noqa: F401  (registers worldflow/Dream-v0)

    model = wf.WorldFlow.from_pretrained(name)
    cfg = model.config
    ep = record_episode(cfg.env_id, seed=4321, max_steps=20, frame_size=cfg.frame_size, crop=cfg.crop)
    frames, actions = ep["frames"][None], ep["actions"][None]  # (1, 21, H, W, 3), (1, 21)
    lp = model.log_prob(frames, actions)
    dim_bits = model.log_prob(frames[:, :6], actions[:, :6], per_dim=True).dim_bits
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
        "nll": hexes(lp.nll),
        "dim_bits": sha256(dim_bits),
        "dream": sha256(dream),
        "dream_temperature_0": sha256(mode),
        "env_observations": sha256(torch.stack(observations)),
        "env_rewards": hexes(torch.tensor(rewards, dtype=torch.float64)),
    }


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_is_bit_identical_to_its_stored_figures(name):
    stored = json.loads(FIXTURE.read_text())[name]
    now = figures(name)
    for key, value in stored.items():
        assert now[key] == value, f"{name}: {key} changed"


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)  # as every test runs (conftest.one_thread)
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({name: figures(name) for name in MODELS}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
