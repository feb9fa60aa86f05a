"""`worldflow imagine`: an agent that plans in the dream, acting in the real environment.

    worldflow imagine model=cartpole agent=cem episodes=3      # also agent=mppi|policy|random

Runs `episodes` real episodes (seeds `seed`, `seed + 1`, ...) with a progress bar, prints
one JSON line with the per-episode returns, `mean_return`, `std_return` and
`seconds_per_step`, and writes `out/episode.mp4`: the first real episode beside, for the
planners, the dream's next frame under each chosen action.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional  # OmegaConf reads typing.Optional, not `X | None`

import numpy as np
from tqdm.auto import tqdm

from worldflow.errors import WorldFlowError
from worldflow.video import side_by_side, write_video

from .config import AgentConfig
from .episodes import make_agent, play


@dataclass
class ImagineConfig:
    model: str = "cartpole"  # a shipped model's name or a directory
    agent: str = "cem"  # cem | mppi | policy | random
    episodes: int = 3
    seed: int = 0  # episode i is reset with seed + i
    max_steps: Optional[int] = None  # None: the environment's own limit (500 for CartPole-v1)
    out: str = "outputs/imagine"
    video: bool = True
    policy: Optional[str] = None  # agent=policy: a policy JSON (default: the model's shipped one)
    # the planners (see worldflow.agents.AgentConfig)
    horizon: int = 8
    candidates: int = 16
    top_k: int = 3
    optim_steps: int = 1
    mppi_temperature: float = 1.0
    termination_weight: float = 1.0
    likelihood_weight: float = 0.0
    pole_weight: Optional[float] = None  # the pole term; None: 50 for the planners on CartPole
    jacobi_iterations: Optional[int] = 1
    denoise: bool = False
    temperature: float = 0.0


def agent_config(cfg: ImagineConfig) -> AgentConfig:
    names = {f.name for f in fields(AgentConfig)} - {"seed"}
    return AgentConfig(seed=cfg.seed, **{k: getattr(cfg, k) for k in names})


def run(cfg: ImagineConfig) -> dict:
    from worldflow.model import WorldFlow

    if not isinstance(cfg.episodes, int) or cfg.episodes < 1:
        raise WorldFlowError(f"episodes: expected a positive int, got {cfg.episodes!r}")
    agent_cfg = agent_config(cfg)
    model = WorldFlow.from_pretrained(cfg.model)
    agent = make_agent(model, agent_cfg, cfg.policy)
    returns, steps, seconds, video = [], 0, 0.0, None
    for i in tqdm(range(cfg.episodes), desc=f"{cfg.agent} in real {model.config.env_id}"):
        episode = play(agent, model, cfg.seed + i, cfg.max_steps, record=cfg.video and i == 0)
        returns.append(episode.ret)
        steps += episode.steps
        seconds += episode.seconds
        if episode.frames:
            real = np.stack(episode.frames[1:])
            panels = [real] + ([np.stack(episode.dreamed)] if episode.dreamed else [])
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            video = write_video(Path(cfg.out) / "episode.mp4", side_by_side(*panels), fps=25)
    summary = {
        "command": "imagine",
        "model": cfg.model,
        "agent": cfg.agent,
        "episodes": cfg.episodes,
        "returns": returns,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "seconds_per_step": seconds / max(steps, 1),
        "steps": steps,
    }
    if video is not None:
        summary["video"] = str(video)
    return summary


if __name__ == "__main__":  # python -m worldflow.agents.imagine (as `worldflow imagine`)
    import sys

    from worldflow.cli import main

    raise SystemExit(main(["imagine", *sys.argv[1:]]))

