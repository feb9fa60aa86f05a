"""Agents that plan in the dream and act in the real environment (installed as `worldflow.agents`).

| module          | holds                                                                 |
|-----------------|-----------------------------------------------------------------------|
| `config.py`     | `AgentConfig`: agent, horizon, candidates, objective weights, cheap path |
| `objective.py`  | `DreamObjective`: task reward - termination logit + surprise (TorchRL transform) |
| `planning.py`   | `PlannerAgent`: TorchRL `CEMPlanner` / `MPPIPlanner` over `WorldFlowTorchRLEnv` |
| `imagined.py`   | `LinearPolicy` learned by the cross-entropy method on dream rollouts alone |
| `episodes.py`   | `RandomAgent`, `make_agent`, `play` (one real episode)               |
| `imagine.py`    | the `worldflow imagine` command                                      |

    from worldflow.agents import AgentConfig, make_agent, play
    agent = make_agent(model, AgentConfig(agent="cem"))
    episode = play(agent, model, seed=0)     # episode.ret, episode.steps, episode.seconds
"""

from .config import AGENTS, AgentConfig
from .episodes import Episode, RandomAgent, make_agent, play
from .imagined import ImaginationConfig, LinearPolicy, PolicyAgent, train_policy
from .objective import DreamObjective
from .planning import PlannerAgent

__all__ = [
    "AGENTS",
    "AgentConfig",
    "DreamObjective",
    "Episode",
    "ImaginationConfig",
    "LinearPolicy",
    "PlannerAgent",
    "PolicyAgent",
    "RandomAgent",
    "make_agent",
    "play",
    "train_policy",
]
