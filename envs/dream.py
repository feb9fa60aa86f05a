"""`WorldFlowEnv`: a world model's dream as a Gymnasium environment (`worldflow/Dream-v0`)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from worldflow.config import SamplerConfig
from worldflow.errors import WorldFlowError

from .world import DreamWorld

OPTION_KEYS = ("context", "actions", "prompt")


def check_max_steps(max_episode_steps) -> int | None:
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool)
        or not isinstance(max_episode_steps, (int, np.integer))
        or max_episode_steps < 1
    ):
        raise WorldFlowError(f"max_episode_steps: expected None or a positive int, got {max_episode_steps!r}")
    return None if max_episode_steps is None else int(max_episode_steps)


def check_options(options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"options: expected a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise WorldFlowError(f"options: expected keys among {list(OPTION_KEYS)}, got unknown {unknown}")
    if options.get("actions") is not None and options.get("context") is None:
        raise WorldFlowError("options: 'actions' condition context frames; expected them with a 'context'")
    return options


class WorldFlowEnv(gym.Env):
    """A learned world you can step: each step appends the frame a WorldFlow model imagines.

    The model encodes a starting context into its KV cache in one pass; every `step(action)`
    then decodes the next frame conditioned on the action (video-aware Jacobi decoding,
    one-step denoising) and scores it with the flow's exact likelihood. The attention
    window slides in long episodes, so step time and memory stay flat.

    ## Action Space

    Copied from the real environment the model was trained on
    (`gymnasium.make(config.env_id).action_space`, e.g. `Discrete(2)` for CartPole-v1,
    `Box(-2, 2, (1,), float32)` for Pendulum-v1). Without an `env_id`: `Discrete(num_actions)`
    or `Box(-inf, inf, (action_dim,), float32)`; a model without actions takes `Discrete(1)`.

    ## Observation Space

    | Box(0, 255, (H, W, 3), uint8) | the current frame, H x W = `config.frame_size` |

    ## Rewards

    | `reward=`            | per step                                                      |
    |----------------------|---------------------------------------------------------------|
    | `"log_likelihood"`   | log p(new frame | history, actions), nats (8-bit pixel units) |
    | `"surprise"`         | bits/dim of the new frame above the training-noise floor      |
    | `"task"`             | the learned reward head on (previous frame, new frame)        |
    | callable             | `reward(obs, action, info) -> float`                          |

    `info`: `log_likelihood` (nats), `bits_per_dim`, `surprise` (bits/dim minus the floor
    0.5 log2(2 pi e (127.5 sigma)^2), see `worldflow.envs.world`), `jacobi_iterations`
    (network calls to decode the frame, all flow blocks), `frame_index` (the frame's index
    in the episode's video) and, for models with heads, `task_reward`. After `reset` the
    scores are those of the last context frame given the earlier ones.

    ## Starting State

    `reset(seed, options={"context": frames, "actions": ..., "prompt": ...})`: `context`
    uint8 (F, H, W, 3) or (H, W, 3) real frames (`actions`, F - 1 of them, led from one to
    the next). Without a context, a real first frame stored with the model
    (`model.start_frames`), chosen with `self.np_random`; a model with none generates one.
    The context is noised like training data (`context_noise`) and encoded in one pass.
    The observation is the last context frame as given.

    ## Episode End

    Terminated when the model's learned termination head fires (logit > 0; models without
    heads never terminate). Truncated after `max_episode_steps` steps (and observed frames).

    ## Arguments

    | `model`             | shipped name (e.g. "cartpole"), a directory or a `WorldFlow` |
    | `reward`            | see Rewards (default "log_likelihood")                       |
    | `sampler`           | "jacobi" (default), "sequential" or a `SamplerConfig`        |
    | `temperature`       | latent noise scale; 0 follows the flow's mode (default 1)    |
    | `denoise`           | one-step denoising: "auto" (learned at temperature > 0, none |
    |                     | at 0; default), True/"learned", "exact" or False             |
    | `context_noise`     | noise context / observed frames like training (default True) |
    | `max_episode_steps` | truncation; None: never (default None)                       |
    | `device`            | where the model runs (default: where it is / "cpu")          |
    | `render_mode`       | "rgb_array" (default) or None                                |

    Randomness: `reset` draws the world's noise seed (and start frame) from `self.np_random`;
    frame t's latent noise comes from a `torch.Generator` seeded with (noise seed, t). Bad
    input raises `TypeError`/`ValueError` naming the argument and leaves the env unchanged.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        model="cartpole",
        reward="log_likelihood",
        sampler: SamplerConfig | str = "jacobi",
        temperature: float = 1.0,
        denoise: bool | str = "auto",
        context_noise: bool = True,
        max_episode_steps: int | None = None,
        device=None,
        render_mode: str | None = "rgb_array",
    ):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise WorldFlowError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.max_episode_steps = check_max_steps(max_episode_steps)
        self.world = DreamWorld(model, reward, sampler, temperature, denoise, context_noise, device)
        self.model = self.world.model
        self.action_space = self.world.action_space
        self.observation_space = self.world.observation_space
        self.render_mode = render_mode
        self._state = None  # VideoState of one world; None before reset
        self._obs: np.ndarray | None = None  # current frame (H, W, 3)
        self._seed = 0  # the world's noise seed
        self._frames = 0  # frames in the episode's video so far
        self._elapsed = 0  # steps (and observed frames) since reset

    # ------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = check_options(options)
        world = self.world
        context = options.get("context")
        if context is not None:
            context = world.check_frames(context, "options['context']", (3, 4))
            context = context[None] if context.dim() == 3 else context
            context = context[None]  # (1, F, H, W, 3)
        actions = options.get("actions")
        if actions is not None:
            f = context.shape[1]
            actions = world.check_actions(actions, (f - 1,), "options['actions']")
            actions = None if actions is None else actions[None]
        text = world.check_prompt(options.get("prompt"), 1)
        super().reset(seed=seed)  # everything checked: from here on the env changes

        self._seed = int(self.np_random.integers(2**63 - 1))
        starts = self.model.start_frames
        if context is None and starts is not None:
            context = starts[int(self.np_random.integers(len(starts)))][None, None]
        self._state, frames, nll, calls = world.begin([self._seed], context, actions, text)
        self._frames = self._state.frame_index
        self._elapsed = 0
        self._obs = frames[0].numpy().copy()  # not a view of the caller's context
        index = torch.tensor([self._frames - 1])
        return self._obs.copy(), world.info(world.scores(nll), calls, index, None, 0)

    # ------------------------------------------------------------------ step
    def step(self, action):
        if self._state is None:
            raise gym.error.ResetNeeded("step: call reset() before step()")
        world = self.world
        model_action = world.check_actions(action, (), "action")
        batch_action = None if model_action is None else model_action[None]
        frames, nll, calls = world.advance(self._state, batch_action, [self._seed], [self._frames])
        task, terminated = world.judge(torch.from_numpy(self._obs)[None], frames)
        scores = world.scores(nll)
        info = world.info(scores, calls, torch.tensor([self._frames]), task, 0)
        obs = frames[0].numpy()
        self._obs, self._frames, self._elapsed = obs, self._frames + 1, self._elapsed + 1
        reward = world.rewards(
            scores, task, lambda i: (obs.copy(), world.env_action(batch_action, i), dict(info))
        )
        truncated = self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        return obs.copy(), float(reward[0]), bool(terminated[0]), bool(truncated), info

    def observe(self, frame, action) -> float:
        """Push a REAL frame uint8 (H, W, 3), reached by `action`, instead of a generated one.

        Returns its surprise (bits/dim above the noise floor, see the class docstring): an
        online anomaly score. The frame becomes the current one, so the next `step` (or a
        planner) continues from reality.
        """
        if self._state is None:
            raise gym.error.ResetNeeded("observe: call reset() before observe()")
        world = self.world
        frame = world.check_frames(frame, "frame", (3,))
        model_action = world.check_actions(action, (), "action")
        batch_action = None if model_action is None else model_action[None]
        nll = world.observe(self._state, frame[None], batch_action, [self._seed], [self._frames])
        self._obs, self._frames, self._elapsed = frame.numpy().copy(), self._frames + 1, self._elapsed + 1
        return float(world.scores(nll)["surprise"][0])

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render: render_mode is None; create the env with render_mode='rgb_array'")
            return None
        return None if self._obs is None else self._obs.copy()
