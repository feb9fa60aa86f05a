"""`WorldFlowVectorEnv`: many dream worlds stepped in batched forward passes.

All worlds of one `VideoState` share its KV cache length, so worlds whose windows hold
the same number of frames form a group and step together in one pass. Right after
`reset` every world is in one group. An autoreset takes a world out of its group into a
new one; when the next window fills up, every window with at least `context_frames`
frames slides with it (`DreamWorld.line_up`) and the groups merge again. So a world
reset mid-run rejoins the batch within about `max_frames` steps; meanwhile a step costs
one pass per group.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldflow.config import SamplerConfig
from worldflow.errors import WorldFlowError
from worldflow.video_state import VideoState

from .dream import OPTION_KEYS, check_max_steps
from .world import DreamWorld


class WorldFlowVectorEnv(VectorEnv):
    """`num_envs` independent `WorldFlowEnv` worlds of one model, stepped batched.

    Same arguments, spaces, rewards, infos and episode ends as `WorldFlowEnv` (see its
    docstring); observations, rewards and flags gain a leading `num_envs` axis and infos
    are Gymnasium's dict of arrays with `_key` masks.

    Autoreset: Gymnasium's default next-step mode. A step that ends a world's episode
    returns its last frame; the world's next `step` ignores its action and returns the
    first frame of a new episode, reward 0, `terminated = truncated = False` and the
    reset's info.

    `reset(seed=s)` seeds world i with `s + i` (as `SyncVectorEnv`), or with `seed[i]` from a
    list; world i then dreams what a `WorldFlowEnv` reset with that seed would (up to float
    rounding of the batched pass) until an autoreset makes windows slide early to line up
    (module docstring). `options`: `context` uint8
    (num_envs, F, H, W, 3) or (num_envs, H, W, 3), one per world; `actions` (num_envs, F - 1)
    (or (num_envs, F - 1, A)) between context frames; `prompt` a string or one per world;
    `reset_mask` bool (num_envs,) to reset only some worlds. An autoreset is a reset without
    options, as in `SyncVectorEnv`: a start frame of the model, the default prompt.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
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
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise WorldFlowError(f"num_envs: expected a positive int, got {num_envs!r}")
        if render_mode not in (None, "rgb_array"):
            raise WorldFlowError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.max_episode_steps = check_max_steps(max_episode_steps)
        self.world = DreamWorld(model, reward, sampler, temperature, denoise, context_noise, device)
        self.model = self.world.model
        self.num_envs = n = int(num_envs)
        self.render_mode = render_mode
        self.single_action_space = self.world.action_space
        self.single_observation_space = self.world.observation_space
        self.action_space = batch_space(self.single_action_space, n)
        self.observation_space = batch_space(self.single_observation_space, n)
        self._rngs: list[np.random.Generator | None] = [None] * n  # each world's np_random
        self._seeds = [0] * n  # noise seeds
        self._frames = np.zeros(n, dtype=np.int64)  # frames in each world's video so far
        self._elapsed = np.zeros(n, dtype=np.int64)
        self._obs = np.zeros((n, *self.single_observation_space.shape), dtype=np.uint8)
        self._autoreset = np.zeros(n, dtype=bool)
        self._groups: list[tuple[np.ndarray, VideoState]] = []  # (world indices, their state)

    # ------------------------------------------------------------------ groups
    def _detach(self, mask: np.ndarray) -> None:
        """Take the worlds in `mask` out of their groups (they are about to restart)."""
        groups = []
        for idx, state in self._groups:
            stay = ~mask[idx]
            if stay.all():
                groups.append((idx, state))
            elif stay.any():
                groups.append((idx[stay], state.select(torch.from_numpy(np.flatnonzero(stay)))))
        self._groups = groups

    # ------------------------------------------------------------------ reset
    def _check_reset(self, seed, options) -> tuple[list, np.ndarray, dict]:
        n = self.num_envs
        if seed is None or isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [None if seed is None else int(seed) + i for i in range(n)]
        elif isinstance(seed, (list, tuple)) and len(seed) == n:
            seeds = list(seed)
        else:
            raise WorldFlowError(f"seed: expected None, an int or a list of {n} ints, got {seed!r}")
        for s in seeds:
            if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0):
                raise WorldFlowError(f"seed: expected non-negative ints, got {seed!r}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options: expected a dict or None, got {type(options).__name__}")
        options = dict(options or {})
        unknown = sorted(set(options) - {*OPTION_KEYS, "reset_mask"})
        if unknown:
            raise WorldFlowError(
                f"options: expected keys among {[*OPTION_KEYS, 'reset_mask']}, got unknown {unknown}"
            )
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(n, dtype=bool)
        elif not (
            isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (n,) and mask.any()
        ):
            raise WorldFlowError(
                f"options['reset_mask']: expected a bool array ({n},) with a True, got {mask!r}"
            )
        world = self.world
        checked: dict = {"context": None, "actions": None}
        if options.get("context") is not None:
            context = world.check_frames(options["context"], "options['context']", (4, 5))
            context = context[:, None] if context.dim() == 4 else context
            if context.shape[0] != n:
                raise WorldFlowError(
                    f"options['context']: expected one context per world ({n}), got {context.shape[0]}"
                )
            checked["context"] = context[torch.from_numpy(mask)]
            if options.get("actions") is not None:
                actions = world.check_actions(
                    options["actions"], (n, context.shape[1] - 1), "options['actions']"
                )
                checked["actions"] = None if actions is None else actions[torch.from_numpy(mask)]
        elif options.get("actions") is not None:
            raise WorldFlowError(
                "options: 'actions' condition context frames; expected them with a 'context'"
            )
        prompt = options.get("prompt")
        if isinstance(prompt, (list, tuple)):
            if len(prompt) != n:
                raise WorldFlowError(
                    f"options['prompt']: expected a string or {n} strings, got {len(prompt)}"
                )
            prompt = [p for p, m in zip(prompt, mask) if m]
        checked["text"] = world.check_prompt(prompt, int(mask.sum()))
        return seeds, mask, checked

    def _restart(self, mask: np.ndarray, context=None, actions=None, text=None) -> list[dict]:
        """Begin new episodes in the worlds of `mask` (their rngs already set); their infos."""
        worlds = np.flatnonzero(mask)
        starts, picks = self.model.start_frames, []
        for i in worlds:  # the same draws, in the same order, as WorldFlowEnv.reset
            rng = self._rngs[i]
            self._seeds[i] = int(rng.integers(2**63 - 1))
            if context is None and starts is not None:
                picks.append(int(rng.integers(len(starts))))
        if picks:
            context = starts[torch.tensor(picks)][:, None]
        self._detach(mask)
        state, frames, nll, calls = self.world.begin([self._seeds[i] for i in worlds], context, actions, text)
        self._groups.append((worlds, state))
        self._groups = self.world.merge(self._groups)
        self._frames[worlds] = state.frame_index
        self._elapsed[worlds] = 0
        self._obs[worlds] = frames.numpy()
        index = torch.from_numpy(self._frames[worlds] - 1)
        scores = self.world.scores(nll)
        return [self.world.info(scores, calls, index, None, k) for k in range(len(worlds))]

    def reset(self, *, seed=None, options: dict | None = None):
        seeds, mask, checked = self._check_reset(seed, options)
        super().reset(seed=seed if isinstance(seed, (int, np.integer)) else None)
        for i in np.flatnonzero(mask):
            if seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(seeds[i])
        infos = self._restart(mask, checked["context"], checked["actions"], checked["text"])
        self._autoreset[mask] = False
        vector_info: dict = {}
        for k, i in enumerate(np.flatnonzero(mask)):
            vector_info = self._add_info(vector_info, infos[k], i)
        return self._obs.copy(), vector_info

    # ------------------------------------------------------------------ step
    def step(self, actions):
        if not self._groups:
            raise gym.error.ResetNeeded("step: call reset() before step()")
        n, world = self.num_envs, self.world
        model_actions = world.check_actions(actions, (n,), "actions")
        restart = self._autoreset.copy()
        self._detach(restart)
        self._groups = world.line_up(self._groups)
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        infos: list[dict | None] = [None] * n
        for idx, state in self._groups:
            acts = None if model_actions is None else model_actions[torch.from_numpy(idx)]
            frames, nll, calls = world.advance(state, acts, [self._seeds[i] for i in idx], self._frames[idx])
            task, done = world.judge(torch.from_numpy(self._obs[idx]), frames)
            scores = world.scores(nll)
            group_infos = [
                world.info(scores, calls, torch.from_numpy(self._frames[idx]), task, k)
                for k in range(len(idx))
            ]
            obs = frames.numpy()

            def item(k, obs=obs, acts=acts, group_infos=group_infos):
                return obs[k].copy(), world.env_action(acts, k), dict(group_infos[k])

            rewards[idx] = world.rewards(scores, task, item).numpy()
            terminated[idx] = done.numpy()
            self._obs[idx] = obs
            for k, i in enumerate(idx):
                infos[i] = group_infos[k]
        self._frames[~restart] += 1
        self._elapsed[~restart] += 1
        if restart.any():
            for k, info in zip(np.flatnonzero(restart), self._restart(restart)):
                infos[k] = info
        self._groups = self.world.merge(self._groups)
        truncated = np.zeros(n, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = ~restart & (self._elapsed >= self.max_episode_steps)
        self._autoreset = terminated | truncated
        vector_info: dict = {}
        for i, info in enumerate(infos):
            vector_info = self._add_info(vector_info, info, i)
        return self._obs.copy(), rewards, terminated, truncated, vector_info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render: render_mode is None; create the env with render_mode='rgb_array'")
            return None
        return tuple(frame.copy() for frame in self._obs)
