"""`PlannerAgent`: model-predictive control in the dream with TorchRL's CEM and MPPI planners.

At every real step the agent holds the world's state (a TensorDict of
`WorldFlowTorchRLEnv`): `reset(frame)` begins it from the real first frame, `act()`
expands it over candidate plans, imagines each `horizon` frames ahead and returns the
first action of the best plan (`CEMPlanner` / `MPPIPlanner`), `observe(frame, action)`
pushes the real frame that followed into the world and returns its surprise. Imagined
rollouts start from frames the real environment produced, so the dream never drifts
further than one plan's horizon.
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.envs import TransformedEnv
from torchrl.envs.utils import step_mdp
from torchrl.modules import CEMPlanner, MPPIPlanner
from torchrl.objectives.value import TDLambdaEstimator

from worldflow.config import SamplerConfig
from worldflow.data import model_preprocessing

from .config import AgentConfig, pole_weight_for
from .objective import DreamObjective


class _NoValue(nn.Module):
    """A value of 0 beyond the horizon: MPPI's advantage becomes the plan's imagined return."""

    def forward(self, pixels: Tensor) -> Tensor:
        return torch.zeros(*pixels.shape[:-3], 1)


class _ShiftedAdvantage(nn.Module):
    """The advantage estimator, shifted so the best candidate's first-step advantage is 0.

    MPPI weighs its elite plans by exp(temperature * advantage); the weights' ratios do not
    change under a shift, but unshifted returns of a few hundred (8 steps of a termination
    logit of -20 are +160) overflow float32's exp to inf, the weighted mean becomes nan and
    the argmax always 0: CartPole pushed left until it fell, 10 steps an episode."""

    def __init__(self, estimator: nn.Module):
        super().__init__()
        self.estimator = estimator

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.estimator(tensordict)
        advantage = tensordict.get("advantage")  # (*batch, candidates, horizon, 1)
        best = advantage[..., :1, :].amax(dim=-3, keepdim=True)
        tensordict.set("advantage", advantage - best)
        return tensordict


class PlanningEnv(TransformedEnv):
    """The dream as the planners search it: candidates that share a past are imagined once,
    and rollouts keep what the planners score, not the world's state.

    The planners expand one real state over their candidates, and the world is a function
    of its state and action (the noise is keyed by the state: common random numbers), so
    candidates whose actions agree so far have the same imagined past. `rollout` steps one
    representative of each distinct history and hands its frame to every candidate that
    shares it: with 16 random plans of 2 actions over 8 steps, about 81 imagined frames
    instead of 128. Results equal stepping every candidate, up to float32 rounding of the
    smaller batch (tested against TorchRL's own rollout).

    TorchRL's `rollout` also stacks every step's whole TensorDict, here every candidate's
    KV cache twice (a quarter of a CEM plan's time, profiled); this one stacks the actions,
    pixels, rewards and done flags. The policy sees each step's TensorDict without the
    world's state. Past a candidate's end it steps on instead of resetting it; the planners
    mask those rewards, so the plan is the same.
    """

    def rollout(self, max_steps: int, policy=None, callback=None, *, tensordict=None, auto_reset=True,
                break_when_any_done=None, **kwargs) -> TensorDictBase:
        if policy is None or callback is not None or tensordict is None or auto_reset or break_when_any_done \
                or kwargs:
            return super().rollout(max_steps, policy, callback, tensordict=tensordict, auto_reset=auto_reset,
                                   break_when_any_done=break_when_any_done, **kwargs)
        shape, time_dim = tensordict.batch_size, tensordict.ndim
        history, first = _groups(shared_starts(tensordict)[:, None])  # (n,): each candidate's world
        worlds = tensordict.reshape(-1)[first]  # one row per distinct history (a copy)
        view, steps = tensordict.exclude("state"), []
        for i in range(max_steps):
            view = policy(view)
            action = view.get("action").reshape(len(history), -1)
            parent = history
            history, first = _groups(torch.cat([parent[:, None].to(action.dtype), action], -1))
            parents = parent[first]  # each history's world at the step before
            rows = worlds if torch.equal(parents, torch.arange(len(worlds))) else worlds[parents]
            rows.set("action", action[first])
            with self.base_env.consuming_state():  # rows: worlds of this rollout alone
                out = self.step(rows)
            view = out.exclude("state", ("next", "state"))[history].reshape(shape)
            steps.append(view)
            if i < max_steps - 1:
                worlds, view = self.step_mdp(out), step_mdp(view)
        return torch.stack(steps, time_dim)


def shared_starts(tensordict: TensorDictBase) -> Tensor:
    """(*B, K) TensorDict -> (prod B * K,) int64: each row's id, shared by the rows along the
    last (candidate) dimension that equal that dimension's first row in every entry."""
    flat = tensordict.reshape(-1, tensordict.shape[-1]) if tensordict.ndim else tensordict.reshape(1, 1)
    lead, k = flat.shape
    same = torch.ones(lead, k, dtype=torch.bool)
    for value in flat.values(include_nested=True, leaves_only=True):
        same &= (value == value[:, :1]).reshape(lead, k, -1).all(-1)
    own = torch.arange(lead * k).reshape(lead, k)
    return torch.where(same, own[:, :1], own).reshape(-1)


def _groups(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(n, d) rows -> each row's group (n,), numbered 0.. in sorted order of the distinct rows,
    and the first row of each group."""
    distinct, group = torch.unique(keys, dim=0, return_inverse=True)
    rows = torch.arange(len(keys))
    return group, torch.full((len(distinct),), len(keys)).scatter_reduce(0, group, rows, "amin")


def planning_env(model, cfg: AgentConfig) -> PlanningEnv:
    """The dream the planners search: `WorldFlowTorchRLEnv` on the cheap (or full) path with
    the `DreamObjective` reward."""
    from worldflow.envs import WorldFlowTorchRLEnv

    world = WorldFlowTorchRLEnv(
        model,
        reward="task",
        sampler=SamplerConfig(max_iterations=cfg.jacobi_iterations),
        temperature=cfg.temperature,
        denoise=cfg.denoise,
        seed=cfg.seed,
    )
    weight = pole_weight_for(model, cfg)
    geometry = model_preprocessing(model.config) if weight else None
    objective = DreamObjective(cfg.termination_weight, cfg.likelihood_weight, weight, geometry)
    return PlanningEnv(world, objective)


class PlannerAgent:
    """CEM or MPPI over the dream; acts on one real environment (see the module docstring).

    Example:
        >>> agent = PlannerAgent(WorldFlow.from_pretrained("cartpole"), AgentConfig(agent="cem"))
        >>> agent.reset(first_frame)                 # uint8 (H, W, 3), the real env's render
        >>> action = agent.act()                      # an int for discrete models
        >>> surprise = agent.observe(next_frame, action)
    """

    def __init__(self, model, cfg: AgentConfig):
        if cfg.agent not in ("cem", "mppi"):
            raise ValueError(f"agent: PlannerAgent plans with 'cem' or 'mppi', got {cfg.agent!r}")
        self.cfg = cfg
        self.env = planning_env(model, cfg)
        self.world = self.env.base_env
        self.model = self.world.model
        common = dict(
            planning_horizon=cfg.horizon,
            optim_steps=cfg.optim_steps,
            num_candidates=cfg.candidates,
            top_k=cfg.top_k,
        )
        if cfg.agent == "cem":
            self.planner = CEMPlanner(self.env, **common)
        else:
            value = TensorDictModule(_NoValue(), in_keys=["pixels"], out_keys=["state_value"])
            advantage = _ShiftedAdvantage(TDLambdaEstimator(gamma=1.0, lmbda=1.0, value_network=value))
            self.planner = MPPIPlanner(self.env, advantage, cfg.mppi_temperature, **common)
        self.discrete = hasattr(self.world.world.action_space, "n")
        self.state: TensorDictBase | None = None
        self._generator = torch.Generator().manual_seed(cfg.seed)

    def reset(self, frame: np.ndarray, seed: int | None = None) -> None:
        """Begin the world from the real environment's first frame uint8 (H, W, 3)."""
        self.state = self.world.begin(np.asarray(frame), seed=self.cfg.seed if seed is None else seed)

    @torch.no_grad()
    def act(self):
        """The first action of the best imagined plan (int, or a float array for continuous models)."""
        if self.state is None:
            raise RuntimeError("act: call reset(first_frame) first")
        with torch.random.fork_rng():  # the planners draw from the global generator: seed it, then restore
            torch.manual_seed(int(torch.randint(2**62, (), generator=self._generator)))
            action = self.planner.planning(self.state.clone())  # the plan's mean first action
        if self.discrete:
            return int(action.argmax(-1))
        space = self.world.world.action_space
        return np.clip(action.numpy(), space.low, space.high).astype(space.dtype)

    @torch.no_grad()
    def observe(self, frame: np.ndarray, action) -> float:
        """Push the real frame uint8 (H, W, 3) that followed `action`; returns its surprise
        (bits/dim above the noise floor)."""
        if self.state is None:
            raise RuntimeError("observe: call reset(first_frame) first")
        self.state = self.world.observe(self.state, np.asarray(frame), self._env_action(action))
        return float(self.state.get("surprise"))

    @torch.no_grad()
    def imagine(self, action, steps: int = 1) -> np.ndarray:
        """The dream's next `steps` frames uint8 (steps, H, W, 3) if `action` is repeated (for videos)."""
        td, frames = self.state.clone(), []
        for _ in range(steps):
            td.set("action", self._env_action(action))
            td = self.env.step(td).get("next")
            frames.append(td.get("pixels").numpy())
        return np.stack(frames)

    def _env_action(self, action) -> Tensor:
        if self.discrete:
            n = int(self.world.world.action_space.n)
            return torch.nn.functional.one_hot(torch.tensor(int(action)), n).float()
        return torch.as_tensor(np.asarray(action), dtype=torch.float32)
