"""Acting in the real environment: `RandomAgent`, `make_agent`, and `play` (episodes).

Every agent has the same three calls: `reset(first_frame)`, `act() -> action`,
`observe(frame, action) -> surprise`. `play` runs one on the real Gymnasium environment
the model was trained on, rendered and preprocessed exactly as its training data was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from worldflow.data import preprocess_frames
from worldflow.errors import WorldFlowError

from .config import AgentConfig
from .imagined import LinearPolicy, PolicyAgent, train_policy
from .planning import PlannerAgent

POLICY_FILE = "policy.json"  # beside a shipped model: its policy learned in the dream


class RandomAgent:
    """Uniform random actions from the environment's action space (the baseline)."""

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.space = action_space
        self.space.seed(seed)

    def reset(self, frame: np.ndarray, seed: int | None = None) -> None:
        if seed is not None:
            self.space.seed(seed)

    def act(self):
        return self.space.sample()

    def observe(self, frame: np.ndarray, action) -> float:
        return float("nan")


def make_agent(model, cfg: AgentConfig, policy: LinearPolicy | str | os.PathLike | None = None):
    """The agent `cfg.agent` names, over `model`. `policy` (agent="policy"): a `LinearPolicy`, a
    JSON file, or None for the one shipped beside the model (trained in the dream if none)."""
    from worldflow.envs.world import action_space_of

    if cfg.agent in ("cem", "mppi"):
        return PlannerAgent(model, cfg)
    if cfg.agent == "random":
        return RandomAgent(action_space_of(model.config), cfg.seed)
    if policy is None:
        path = shipped_policy(model)
        policy = LinearPolicy.load(path) if path is not None else train_policy(model)
    elif not isinstance(policy, LinearPolicy):
        policy = LinearPolicy.load(policy)
    return PolicyAgent(model, policy)


def shipped_policy(model) -> Path | None:
    """The policy file saved beside `model` (learned in its dream), or None if there is none."""
    shipped = getattr(model, "source_dir", None)
    path = None if shipped is None else Path(shipped) / POLICY_FILE
    return path if path is not None and path.exists() else None


@dataclass
class Episode:
    """One real episode: its return, steps, wall time and (if recorded) frames."""

    ret: float
    steps: int
    seconds: float
    frames: list = field(default_factory=list)  # real frames uint8 (H, W, 3)
    dreamed: list = field(default_factory=list)  # the dream's next frame under the chosen action
    surprise: list = field(default_factory=list)


def make_real_env(env_id: str) -> gym.Env:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    return gym.make(env_id, render_mode="rgb_array")


def play(
    agent,
    model,
    seed: int,
    max_steps: int | None = None,
    record: bool = False,
    progress: bool = True,
) -> Episode:
    """Run `agent` for one real episode of `model.config.env_id`, reset with `seed`."""
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise WorldFlowError(f"max_steps: expected a positive int or None, got {max_steps!r}")
    cfg = model.config
    env = make_real_env(cfg.env_id)
    try:
        env.reset(seed=seed)
        frame = preprocess_frames(env.render(), cfg.frame_size, cfg.crop).numpy()
        agent.reset(frame, seed=seed)
        episode = Episode(0.0, 0, 0.0, frames=[frame] if record else [])
        limit = max_steps or env.spec.max_episode_steps or 10**9
        bar = tqdm(total=limit, desc=f"episode seed {seed}", disable=not progress, leave=False)
        start = time.perf_counter()
        done = False
        while not done and episode.steps < limit:
            action = agent.act()
            if record and hasattr(agent, "imagine"):
                episode.dreamed.append(agent.imagine(action)[0])
            _, reward, terminated, truncated, _ = env.step(action)
            frame = preprocess_frames(env.render(), cfg.frame_size, cfg.crop).numpy()
            episode.surprise.append(agent.observe(frame, action))
            episode.ret += float(reward)
            episode.steps += 1
            done = terminated or truncated
            if record:
                episode.frames.append(frame)
            bar.update(1)
            bar.set_postfix(ret=f"{episode.ret:.0f}")
        episode.seconds = time.perf_counter() - start
        bar.close()
        return episode
    finally:
        env.close()
