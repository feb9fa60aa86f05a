"""`AgentConfig`: which agent, how it plans in the dream, what it optimises; checked on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from worldflow.errors import WorldFlowError

AGENTS = ("cem", "mppi", "policy", "random")
PLANNER_POLE_WEIGHT = 50.0  # pole_weight=None for cem / mppi on a CartPole model


@dataclass
class AgentConfig:
    """How an agent acts. Planners (`cem`, `mppi`) optimise `horizon` actions ahead in the
    dream at every real step and take the first; `policy` is a policy learned in the dream
    (`worldflow.agents.imagined`); `random` draws uniform actions (the baseline).

    The planners' objective, summed over the imagined steps until the learned termination
    head fires (TorchRL masks the rewards after `done`):

        reward_t = task_reward_t - termination_weight * termination_logit_t
                   + likelihood_weight * surprise_t - pole_weight * lean_t

    `termination_logit` is the head's raw logit (> 0: the episode ends), so a weight > 0
    steers away from states near the end well before they are reached. `surprise` is the
    imagined frame's bits/dim above the noise floor: a weight < 0 penalises implausible
    dreams, > 0 rewards surprise (exploration). `lean` is (theta / 12 degrees)^2, capped at
    1, of the pole angle the CartPole pixel reader reads from the imagined frame (1 where
    no pole is seen); CartPole models only. `pole_weight=None` (the default) is
    `PLANNER_POLE_WEIGHT` for the planners on a CartPole model and 0 otherwise: the learned
    termination head grades mostly the cart, and a planner whose objective grades only the
    cart lets the pole fall even with CartPole's true dynamics (docs/agents.md).

    `top_k` is odd by default: CEM's first action is the argmax of its elite plans' mean
    one-hot action, and an even split (two elites that disagree) always fell to action 0,
    which cost a planner with the true dynamics 16% of its return (docs/agents.md).

    The cheap planning path (defaults): each imagined frame is decoded at temperature 0
    with `jacobi_iterations` Jacobi passes per flow block and no denoising; `None` and
    `denoise=true` give the full path (see docs/agents.md for what each setting skips and
    how often it changes the chosen action).
    """

    agent: str = "cem"
    horizon: int = 8  # imagined steps per candidate plan
    candidates: int = 16  # plans sampled per optimisation step
    top_k: int = 3  # elite plans (CEM: they vote on the first action) / plans weighted (MPPI)
    optim_steps: int = 1  # sampling rounds per real step
    mppi_temperature: float = 1.0  # MPPI's weights exp(temperature * return)
    termination_weight: float = 1.0
    likelihood_weight: float = 0.0
    pole_weight: float | None = None  # the pole's lean read from imagined frames; None: see above
    jacobi_iterations: int | None = 1  # Jacobi passes per block per imagined frame; None: to convergence
    denoise: bool = False  # learned one-step denoising of imagined frames
    temperature: float = 0.0  # latent noise scale of imagined frames
    seed: int = 0

    def __post_init__(self) -> None:
        check_agent_config(self)


def _positive_int(cfg: AgentConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WorldFlowError(f"{name}: expected a positive int, got {value!r}")


def _finite(cfg: AgentConfig, name: str, minimum: float | None = None) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WorldFlowError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise WorldFlowError(f"{name}: expected a number >= {minimum}, got {value!r}")


def check_agent_config(cfg: AgentConfig) -> None:
    """Raise `WorldFlowError` naming the first bad field."""
    if cfg.agent not in AGENTS:
        raise WorldFlowError(f"agent: expected one of {list(AGENTS)}, got {cfg.agent!r}")
    for name in ("horizon", "candidates", "top_k", "optim_steps"):
        _positive_int(cfg, name)
    if cfg.top_k > cfg.candidates:
        raise WorldFlowError(f"top_k: expected at most candidates={cfg.candidates}, got {cfg.top_k}")
    if cfg.agent == "cem" and cfg.top_k < 2:
        raise WorldFlowError(f"top_k: CEM needs at least 2 elite plans for a spread, got {cfg.top_k}")
    if cfg.jacobi_iterations is not None:
        _positive_int(cfg, "jacobi_iterations")
    for name in ("mppi_temperature", "termination_weight", "likelihood_weight"):
        _finite(cfg, name)
    _finite(cfg, "temperature", minimum=0.0)
    if cfg.pole_weight is not None:
        _finite(cfg, "pole_weight")
    if not isinstance(cfg.denoise, bool):
        raise WorldFlowError(f"denoise: expected true or false, got {cfg.denoise!r}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise WorldFlowError(f"seed: expected an int, got {cfg.seed!r}")


def require_cartpole(model, field: str, what: str) -> None:
    """A clear error naming `field` where `what` (e.g. "the pole term") would read frames of a
    model of another environment than CartPole."""
    if model.config.env_id != "CartPole-v1":
        raise WorldFlowError(f"{field}: {what} reads CartPole frames; got a model of {model.config.env_id!r}")


def pole_weight_for(model, cfg: AgentConfig) -> float:
    """The pole term's weight `cfg` asks for on `model`: `cfg.pole_weight`, or for None
    `PLANNER_POLE_WEIGHT` where a planner plans on a CartPole model and 0 elsewhere. A
    non-zero weight on another environment's model is refused (`require_cartpole`)."""
    if cfg.pole_weight is None:
        planner_on_cartpole = cfg.agent in ("cem", "mppi") and model.config.env_id == "CartPole-v1"
        return PLANNER_POLE_WEIGHT if planner_on_cartpole else 0.0
    if cfg.pole_weight:
        require_cartpole(model, "pole_weight", "the pole term")
    return float(cfg.pole_weight)
