"""A policy learned entirely in imagination, evaluated in the real environment.

`LinearPolicy` acts on four numbers read from the last two frames by the CartPole pixel
reader (`worldflow.data.read_cartpole_state`): cart position, pole angle and their
per-second changes. `train_policy` searches its five parameters by the cross-entropy
method over batched dream rollouts, and never runs the real environment under a policy
it is learning. As in Dreamer, imagination starts from real moments of the kind of data
the world model was trained on (two consecutive frames of seeded episodes of the data
policy, `mixed`): many starts, near-failures among them, and a short horizon, because a
dream trusted for long runs drifts and a search exploits the drift (from the reset frames
alone with 100 imagined steps, every candidate survived the whole dream and the winner
lasted 32 steps in the real env). A candidate's score is its mean imagined return under
the planners' objective (`DreamObjective`: task reward minus the termination logit), summed
until the learned termination head fires: graded, where survival counts barely tell a
controller from "always push left" in a 30-step dream. The features are fixed (not learned); what is
learned in the dream is the control law.
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

from worldflow.data import model_preprocessing, read_cartpole_state, record_episode
from worldflow.data.preprocess import CARTPOLE_CROP, CARTPOLE_FRAME_SIZE
from worldflow.errors import WorldFlowError

from .config import AgentConfig, require_cartpole
from .planning import planning_env

FPS = 50  # CartPole-v1 steps 0.02 s
SCALE = np.array([2.4, 0.21, 1.0, 1.0], dtype=np.float32)  # termination bounds; velocities in /s


def cartpole_features(previous: np.ndarray, frame: np.ndarray, frame_size=CARTPOLE_FRAME_SIZE,
                      crop=CARTPOLE_CROP) -> np.ndarray:
    """(..., H, W, 3) uint8 twice -> (..., 4) float32: x, theta, dx/dt, dtheta/dt, scaled; 0 where unread.
    `frame_size`, `crop`: how the frames were made (`read_cartpole_state`; `model_preprocessing`)."""
    x0, t0 = read_cartpole_state(np.ascontiguousarray(previous), frame_size, crop)
    x1, t1 = read_cartpole_state(np.ascontiguousarray(frame), frame_size, crop)
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

    generations: int = 10
    population: int = 12  # candidate policies a generation
    elite: int = 3
    starts: int = 12  # real moments each candidate is dreamed from (the same for all)
    steps: int = 50  # imagined steps from each
    seed: int = 0  # the search's noise, the start moments' episodes (seed + 50_000 + i)


def check_cartpole(model) -> None:
    require_cartpole(model, "agent", "the imagined policy")


def start_moments(model, cfg: ImaginationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`cfg.starts` real moments: uint8 (starts, 2, H, W, 3) frames and the (starts,) action between them,
    a few from each seeded episode of the data policy (never the last, terminal, frame)."""
    c, rng = model.config, np.random.default_rng(cfg.seed)
    frames, actions, episode = [], [], 0
    while len(frames) < cfg.starts:
        ep = record_episode(c.env_id, seed=cfg.seed + 50_000 + episode, max_steps=300,
                            frame_size=c.frame_size, crop=c.crop, policy="mixed")
        episode += 1
        n = len(ep["frames"])
        for t in rng.integers(1, n - 1, size=min(cfg.starts - len(frames), 4)) if n > 2 else ():
            frames.append(ep["frames"][t - 1 : t + 1])
            actions.append(ep["actions"][t - 1])
    return torch.stack(frames), torch.stack(actions).long()


@torch.no_grad()
def dream_rollouts(
    model, act, starts: tuple[torch.Tensor, torch.Tensor], repeat: int, steps: int,
    agent: AgentConfig, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched dreams from the real `starts` moments (`start_moments`), each `repeat` times
    (batch row r * len(starts) + i is start i's r-th copy), `steps` imagined steps, on the
    planners' dream (`planning_env`). `act(features (B, 4)) -> (B,) int actions` chooses.

    Returns float32 `features` (B, steps, 4) of the state each action was taken in,
    float64 `rewards` (B, steps) under the planners' objective, and bool `alive` (B, steps):
    the step was taken before the learned termination head fired (its reward counts)."""
    env = planning_env(model, agent)
    frames, actions = starts
    b, n = len(frames) * repeat, env.action_spec.shape[-1]
    one_hot = torch.nn.functional.one_hot(actions, n).float()[:, None]  # (s, 1, n)
    td = env.begin(frames.repeat(repeat, 1, 1, 1, 1), one_hot.repeat(repeat, 1, 1), seed=seed)
    previous = frames[:, 0].repeat(repeat, 1, 1, 1).numpy()
    features = np.zeros((b, steps, 4), dtype=np.float32)
    rewards, alive = np.zeros((b, steps)), np.zeros((b, steps), dtype=bool)
    living, geometry = np.ones(b, dtype=bool), model_preprocessing(model.config)
    for t in range(steps):
        pixels = td.get("pixels").numpy()
        features[:, t] = cartpole_features(previous, pixels, *geometry)
        td.set("action", torch.nn.functional.one_hot(torch.from_numpy(act(features[:, t])), n).float())
        nxt = env.step(td).get("next")
        rewards[:, t], alive[:, t] = nxt.get("reward").squeeze(-1).numpy(), living
        living = living & ~nxt.get("terminated").squeeze(-1).numpy()
        previous, td = pixels, nxt.exclude("reward", "done", "terminated", "truncated")
        if not living.any():
            break
    return features, rewards, alive


def dream_returns(
    model, policies: np.ndarray, biases: np.ndarray, cfg: ImaginationConfig, agent: AgentConfig,
    starts: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """Mean imagined return of each policy (P,) from the real `starts` moments
    (`start_moments`; the same for every policy: common random numbers): the planners'
    objective (`DreamObjective`) summed until the learned termination head fires."""
    starts = starts if starts is not None else start_moments(model, cfg)
    s = len(starts[0])
    w, b = np.repeat(policies, s, axis=0), np.repeat(biases, s)  # policy-major rows

    def act(features: np.ndarray) -> np.ndarray:
        return ((features * w).sum(-1) + b > 0).astype(np.int64)

    _, rewards, alive = dream_rollouts(model, act, starts, len(biases), cfg.steps, agent, cfg.seed)
    return (rewards * alive).sum(1).reshape(len(biases), s).mean(1)


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
    starts = start_moments(model, cfg)
    bar = tqdm(range(cfg.generations), desc="policy in the dream", disable=not progress)
    for _ in bar:
        params = mean + std * rng.standard_normal((cfg.population, 5))
        params[0] = mean  # the current mean is always a candidate
        scores = dream_returns(model, params[:, :4], params[:, 4], cfg, agent, starts)
        elite = params[np.argsort(-scores)[: cfg.elite]]
        mean, std = elite.mean(0), elite.std(0) + 0.05
        history.append(float(scores.max()))
        bar.set_postfix(best=f"{scores.max():.0f}", mean_policy=f"{scores[0]:.0f}")
    final = dream_returns(model, mean[None, :4], mean[None, 4:5].reshape(1), cfg, agent, starts)
    trained = {"config": asdict(cfg), "best_dream_return_per_generation": history,
               "dream_return": float(final[0]), "steps_cap": cfg.steps}
    return LinearPolicy(weights=[float(v) for v in mean[:4]], bias=float(mean[4]), trained=trained)


class PolicyAgent:
    """Acts in the real environment with a `LinearPolicy` (trained in the dream)."""

    def __init__(self, model, policy: LinearPolicy):
        check_cartpole(model)
        self.policy, self._geometry = policy, model_preprocessing(model.config)
        self._previous = self._frame = None

    def reset(self, frame: np.ndarray, seed: int | None = None) -> None:
        self._previous = self._frame = np.asarray(frame)

    def act(self) -> int:
        if self._frame is None:
            raise RuntimeError("act: call reset(first_frame) first")
        return int(self.policy.act(cartpole_features(self._previous, self._frame, *self._geometry)))

    def observe(self, frame: np.ndarray, action) -> float:
        self._previous, self._frame = self._frame, np.asarray(frame)
        return math.nan  # no world is stepped: no surprise
