"""A policy learned entirely in imagination, evaluated in the real environment.

`LinearPolicy` acts on four numbers read from the last two frames by the CartPole pixel
reader (`worldflow.data.read_cartpole_state`): cart position, pole angle and their
per-second changes. `train_policy` searches its five parameters by the cross-entropy
method over batched dream rollouts — every candidate policy drives `starts` dreamed
episodes from the model's real start frames, scored by the steps until the learned
termination head fires — and never sees the real environment. The features are fixed
(not learned); what is learned in the dream is the control law.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from worldflow.data import read_cartpole_state
from worldflow.errors import WorldFlowError

from .config import AgentConfig
from .planning import planning_env

FPS = 50  # CartPole-v1 steps 0.02 s
SCALE = np.array([2.4, 0.21, 1.0, 1.0], dtype=np.float32)  # termination bounds; velocities in /s


def cartpole_features(previous: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 twice -> (..., 4) float32: x, theta, dx/dt, dtheta/dt, scaled; 0 where unread."""
    x0, t0 = read_cartpole_state(np.ascontiguousarray(previous))
    x1, t1 = read_cartpole_state(np.ascontiguousarray(frame))
    f = np.stack([x1, t1, (x1 - x0) * FPS, (t1 - t0) * FPS], axis=-1) / SCALE
    return np.nan_to_num(f, nan=0.0).astype(np.float32)


@dataclass
class LinearPolicy:
    """action = 1 if weights . features + bias > 0 else 0 (CartPole's push right / left)."""

    weights: list
    bias: float
    trained: dict | None = None  # how it was learned (config, dream returns)

    def act(self, features: np.ndarray) -> np.ndarray:
        return (features @ np.asarray(self.weights, dtype=np.float32) + self.bias > 0).astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearPolicy:
        data = json.loads(Path(path).read_text())
        weights = data.get("weights")
        if not (isinstance(weights, list) and len(weights) == 4):
            raise WorldFlowError(f"policy: expected 4 weights in {path}, got {weights!r}")
        return cls(weights=[float(w) for w in weights], bias=float(data["bias"]), trained=data.get("trained"))


@dataclass
class ImaginationConfig:
    """The cross-entropy search of `train_policy` (sizes of the dream it runs)."""

    generations: int = 8
    population: int = 16  # candidate policies a generation
    elite: int = 4
    starts: int = 2  # dreamed episodes per candidate
    steps: int = 100  # imagined steps per episode
    seed: int = 0


def check_cartpole(model) -> None:
    if model.config.env_id != "CartPole-v1":
        raise WorldFlowError(
            f"agent: the imagined policy reads CartPole frames; got a model of {model.config.env_id!r}"
        )


@torch.no_grad()
def dream_returns(
    model, policies: np.ndarray, biases: np.ndarray, cfg: ImaginationConfig, agent: AgentConfig
) -> np.ndarray:
    """Mean imagined return of each policy (P,) over `cfg.starts` dreamed episodes from
    the model's start frames (the same for every policy: common random numbers)."""
    env = planning_env(model, agent).base_env
    p, s = len(biases), cfg.starts
    rng = np.random.default_rng(cfg.seed)
    starts = model.start_frames[rng.integers(len(model.start_frames), size=s)]  # (s, H, W, 3)
    frames = starts.repeat(p, 1, 1, 1)[:, None]  # (p s, 1, H, W, 3), policy-major
    td = env.begin(frames, seed=cfg.seed)
    w = np.repeat(policies, s, axis=0)
    b = np.repeat(biases, s)
    previous = td.get("pixels").numpy()
    alive = np.ones(p * s, dtype=bool)
    returns = np.zeros(p * s)
    for _ in range(cfg.steps):
        pixels = td.get("pixels").numpy()
        act = ((cartpole_features(previous, pixels) * w).sum(-1) + b > 0).astype(np.int64)
        td.set("action", torch.nn.functional.one_hot(torch.from_numpy(act), 2).float())
        nxt = env.step(td).get("next")
        alive &= ~nxt.get("terminated").squeeze(-1).numpy()
        returns += alive
        previous, td = pixels, nxt.exclude("reward", "done", "terminated", "truncated")
        if not alive.any():
            break
    return returns.reshape(p, s).mean(1)


def train_policy(model, cfg: ImaginationConfig | None = None, agent: AgentConfig | None = None,
                 progress: bool = True) -> LinearPolicy:
    """The cross-entropy method over (weights, bias) on dream returns alone (module docstring)."""
    cfg = cfg or ImaginationConfig()
    agent = agent or AgentConfig(agent="policy")
    check_cartpole(model)
    for name in ("generations", "population", "elite", "starts", "steps"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WorldFlowError(f"{name}: expected a positive int, got {value!r}")
    if cfg.elite > cfg.population:
        raise WorldFlowError(f"elite: expected at most population={cfg.population}, got {cfg.elite}")
    rng = np.random.default_rng(cfg.seed)
    mean, std = np.zeros(5), np.ones(5)
    history = []
    bar = tqdm(range(cfg.generations), desc="policy in the dream", disable=not progress)
    for _ in bar:
        params = mean + std * rng.standard_normal((cfg.population, 5))
        params[0] = mean  # the current mean is always a candidate
        scores = dream_returns(model, params[:, :4], params[:, 4], cfg, agent)
        elite = params[np.argsort(-scores)[: cfg.elite]]
        mean, std = elite.mean(0), elite.std(0) + 0.05
        history.append(float(scores.max()))
        bar.set_postfix(best=f"{scores.max():.0f}", mean_policy=f"{scores[0]:.0f}")
    final = dream_returns(model, mean[None, :4], mean[None, 4:5].reshape(1), cfg, agent)
    trained = {"config": asdict(cfg), "best_dream_return_per_generation": history,
               "dream_return": float(final[0]), "steps_cap": cfg.steps}
    return LinearPolicy(weights=[float(v) for v in mean[:4]], bias=float(mean[4]), trained=trained)


class PolicyAgent:
    """Acts in the real environment with a `LinearPolicy` (trained in the dream)."""

    def __init__(self, model, policy: LinearPolicy):
        check_cartpole(model)
        self.policy = policy
        self._previous = self._frame = None

    def reset(self, frame: np.ndarray, seed: int | None = None) -> None:
        self._previous = self._frame = np.asarray(frame)

    def act(self) -> int:
        if self._frame is None:
            raise RuntimeError("act: call reset(first_frame) first")
        return int(self.policy.act(cartpole_features(self._previous, self._frame)))

    def observe(self, frame: np.ndarray, action) -> float:
        self._previous, self._frame = self._frame, np.asarray(frame)
        return math.nan  # no world is stepped: no surprise
