"""The dream behind every worldflow environment: the model side, shared by all three.

`DreamWorld` owns a `WorldFlow` and what the Gymnasium env, its vector form and the
TorchRL env have in common: the spaces, the checks at the boundary, beginning videos
from a context, stepping a batch of them, scoring frames and the reward modes. It keeps
no episode state: the `VideoState`s belong to the environments.

Randomness is keyed. Every world carries a `noise_seed`; the latent noise of its frame
t comes from a generator seeded with (noise_seed, t), the noise added to its context
from (noise_seed, -1). A world's dream therefore depends on its seed, context and
actions only — not on which other worlds happen to share its batch, nor on how many
candidates a planner expanded it into.

Scores of a frame (nats and bits in the 8-bit pixel convention, D = C H W):

    log_likelihood = log p(frame | history, actions)           (nats)
    bits_per_dim   = -log_likelihood / (D ln 2)
    surprise       = bits_per_dim - 0.5 log2(2 pi e (127.5 sigma)^2)

`surprise` is the excess over the density floor of the training noise (std sigma in
model units): about 0 for a frame as predictable as the noise allows, larger for
surprising ones. It can dip below 0 (a density may exceed its expected value at a
point). With sigma = 0 there is no floor and surprise equals bits_per_dim.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from worldflow.codec import LOG_PIXEL_SCALE, frames_to_model, model_to_frames
from worldflow.config import SamplerConfig
from worldflow.errors import WorldFlowError
from worldflow.generation import denoising_at
from worldflow.metrics import noise_floor_bits
from worldflow.model import WorldFlow
from worldflow.video_state import VideoState, slide_window

REWARD_MODES = ("log_likelihood", "surprise", "task")
_MASK64 = (1 << 64) - 1



def keyed_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for (seed, index): splitmix64 of the pair, so nearby keys decorrelate."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return torch.Generator().manual_seed(x ^ (x >> 31))


def load_model(model, device) -> WorldFlow:
    if isinstance(model, WorldFlow):
        loaded = model if device is None else model.to(device)
    elif isinstance(model, (str, os.PathLike)):
        loaded = WorldFlow.from_pretrained(model, "cpu" if device is None else device)
    else:
        raise TypeError(
            f"model: expected a shipped model name, a directory or a WorldFlow, got {type(model).__name__}"
        )
    cfg = loaded.config
    if cfg.codec != "patch":
        raise WorldFlowError(
            f"model: environments need a pixel model (codec 'patch'), got codec {cfg.codec!r}"
        )
    frames = loaded.start_frames
    expected = (*cfg.frame_size, cfg.channels)
    if frames is not None and (
        not isinstance(frames, Tensor)
        or frames.dtype != torch.uint8
        or frames.dim() != 4
        or tuple(frames.shape[1:]) != expected
        or frames.shape[0] == 0
    ):
        raise WorldFlowError(
            f"model.start_frames: expected uint8 frames (K, {', '.join(map(str, expected))}), got "
            f"{getattr(frames, 'dtype', type(frames).__name__)} {tuple(getattr(frames, 'shape', ()))}"
        )
    return loaded.eval()


def action_space_of(cfg) -> spaces.Space:
    """The real environment's action space when the model names one, else built from the config.

    A model without actions gets `Discrete(1)`: the action is ignored. An env id that
    cannot be made here (not registered, missing dependencies) falls back to the config.
    """
    built: spaces.Space
    if cfg.num_actions is not None:
        built = spaces.Discrete(cfg.num_actions)
    elif cfg.action_dim is not None:
        built = spaces.Box(-np.inf, np.inf, (cfg.action_dim,), np.float32)
    else:
        built = spaces.Discrete(1)
    if cfg.env_id is None or not cfg.has_actions:
        return built
    try:
        real = gym.make(cfg.env_id, disable_env_checker=True)
    except gym.error.Error:
        return built
    space = real.action_space
    real.close()
    fits = (isinstance(space, spaces.Discrete) and int(space.n) == cfg.num_actions) or (
        isinstance(space, spaces.Box) and space.shape == (cfg.action_dim,)
    )
    if not fits:
        raise WorldFlowError(
            f"model: config.num_actions={cfg.num_actions} / action_dim={cfg.action_dim} do not match "
            f"{cfg.env_id}'s action space {space}"
        )
    return space


class DreamWorld:
    """A world model seen as an environment's dynamics. See the module docstring.

    Args:
        model: a shipped model's name, a directory from `save_pretrained` or a `WorldFlow`.
        reward: "log_likelihood", "surprise", "task" (learned head) or a callable
            `(obs, action, info) -> float`.
        sampler: "jacobi", "sequential" or a `SamplerConfig`.
        temperature: scale of the latent noise (0: the flow's mode path).
        denoise: clean each generated frame in one step: "auto" (the learned denoiser at
            temperature > 0, none on the mode path at 0; see `worldflow.generation`), True or
            "learned" (the learned denoiser), "exact" (the flow's own score by autograd;
            slow), False (raw sample).
        context_noise: noise context and observed frames like training data before encoding.
        device: where the model runs (None: where it is; "cpu" for a name).
    """

    def __init__(
        self,
        model,
        reward="log_likelihood",
        sampler: SamplerConfig | str = "jacobi",
        temperature: float = 1.0,
        denoise: bool | str = "auto",
        context_noise: bool = True,
        device=None,
    ):
        self.model = load_model(model, device)
        cfg = self.config = self.model.config
        if not (callable(reward) or (isinstance(reward, str) and reward in REWARD_MODES)):
            raise WorldFlowError(
                f"reward: expected one of {list(REWARD_MODES)} or a callable, got {reward!r}"
            )
        if reward == "task" and self.model.heads is None:
            raise WorldFlowError("reward: 'task' needs a model with learned task heads (config.task_heads)")
        self.reward = reward
        if isinstance(sampler, str):
            sampler = SamplerConfig(name=sampler)
        if not isinstance(sampler, SamplerConfig):
            raise TypeError(f"sampler: expected 'jacobi', 'sequential' or a SamplerConfig, got {sampler!r}")
        self.sampler = sampler
        if not isinstance(temperature, numbers.Real) or not 0 <= float(temperature) < math.inf:
            raise WorldFlowError(f"temperature: expected a finite number >= 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.denoise, self.context_noise = denoising_at(denoise, self.temperature), bool(context_noise)
        self.action_space = action_space_of(cfg)
        self.observation_space = spaces.Box(0, 255, (*cfg.frame_size, cfg.channels), np.uint8)
        self.dims = cfg.dims_per_frame
        self.floor = noise_floor_bits(cfg.noise_std)
        self.keep = max(cfg.denoiser_window - 1, 0)  # past frames the denoiser sees

    # ------------------------------------------------------------------ boundary checks
    def check_actions(self, actions, batch: tuple[int, ...], name: str = "action") -> Tensor | None:
        """Env actions of leading shape `batch` -> model actions: (*batch,) long or (*batch, A) float."""
        space = self.action_space
        if isinstance(actions, Tensor):
            actions = actions.detach().cpu().numpy()
        a = np.asarray(actions)
        if isinstance(space, spaces.Discrete):
            if a.dtype.kind not in "iu":
                raise TypeError(f"{name}: expected integer actions of {space}, got dtype {a.dtype}")
            if a.shape != batch:
                raise WorldFlowError(f"{name}: expected shape {batch} (actions of {space}), got {a.shape}")
            lo, hi = int(space.start), int(space.start) + int(space.n)
            if a.size and (a.min() < lo or a.max() >= hi):
                raise WorldFlowError(f"{name}: expected values in [{lo}, {hi}) ({space}), got {a.tolist()}")
            if not self.config.has_actions:
                return None
            return torch.as_tensor(a.astype(np.int64) - lo, device=self.model.device)
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{name}: expected real-valued actions of {space}, got dtype {a.dtype}")
        if a.shape != (*batch, *space.shape):
            raise WorldFlowError(
                f"{name}: expected shape {(*batch, *space.shape)} (actions of {space}), got {a.shape}"
            )
        if not np.isfinite(a).all():
            raise WorldFlowError(f"{name}: expected finite values, got {a.tolist()}")
        if (a < space.low).any() or (a > space.high).any():
            raise WorldFlowError(
                f"{name}: expected values in [{space.low.tolist()}, {space.high.tolist()}], got {a.tolist()}"
            )
        return torch.as_tensor(a, dtype=self.model.dtype, device=self.model.device)

    def check_frames(self, frames, name: str, ndims: Sequence[int]) -> Tensor:
        """uint8 frames whose shape ends with (H, W, C) and has one of `ndims` dimensions."""
        expected = self.observation_space.shape
        if isinstance(frames, np.ndarray) or isinstance(frames, Tensor):
            dtype = frames.dtype
        else:
            raise TypeError(
                f"{name}: expected a uint8 array of frames (..., {expected}), got {type(frames).__name__}"
            )
        if dtype not in (np.uint8, torch.uint8):
            raise TypeError(f"{name}: expected dtype uint8, got {dtype}")
        shape = tuple(frames.shape)
        if len(shape) not in ndims or shape[len(shape) - 3 :] != expected or 0 in shape:
            raise WorldFlowError(
                f"{name}: expected {' or '.join(f'{n}-d' for n in ndims)} uint8 frames ending in {expected}, "
                f"got shape {shape}"
            )
        return torch.as_tensor(frames).cpu()

    def check_prompt(self, prompt, batch: int) -> Tensor | None:
        return self.model.encode_prompt(prompt, batch)  # raises WorldFlowError naming `prompt`

    # ------------------------------------------------------------------ dynamics
    def latent_noise(self, seeds: Sequence[int], indices: Sequence[int]) -> Tensor:
        """(B, N, c) latents of the frames `indices` of the worlds `seeds`, times the temperature."""
        cfg = self.config
        shape = (cfg.tokens_per_frame, cfg.token_dim)
        if self.temperature == 0:
            return torch.zeros(len(seeds), *shape, device=self.model.device, dtype=self.model.dtype)
        z = torch.stack([torch.randn(shape, generator=keyed_generator(s, t)) for s, t in zip(seeds, indices)])
        return (z * self.temperature).to(self.model.device, self.model.dtype)

    def _pixel_noise(self, x: Tensor, seeds: Sequence[int], indices: Sequence[int]) -> Tensor:
        """x (B, F, C, H, W) plus the training noise, keyed per world."""
        sigma = self.config.noise_std
        if not self.context_noise or sigma == 0:
            return x
        eps = torch.stack(
            [torch.randn(x.shape[1:], generator=keyed_generator(s, t)) for s, t in zip(seeds, indices)]
        )
        return x + sigma * eps.to(x.device, x.dtype)

    def _trim(self, state: VideoState) -> None:
        # only the last `keep` frames feed the next frame: equal lengths let states concatenate
        state.recent = state.recent[:, max(state.recent.shape[1] - self.keep, 0) :]

    @torch.no_grad()
    def begin(
        self, seeds: Sequence[int], context: Tensor | None, actions: Tensor | None, text: Tensor | None
    ) -> tuple[VideoState, Tensor, Tensor, Tensor]:
        """New videos: `context` uint8 (B, F, H, W, C) encoded in one pass, or a generated frame.

        Returns the state, the current frames uint8 (B, H, W, C), their NLL (B,) in nats
        (pixel units; the last context frame's, given the earlier ones) and network calls (B,).
        """
        model = self.model
        state = model.start(len(seeds), prompt=text)
        if context is None:
            z = self.latent_noise(seeds, [0] * len(seeds))
            x, info = model.step(state, None, z=z, sampler=self.sampler, denoise=self.denoise)
            self._trim(state)
            return state, model_to_frames(x), info["nll"], info["iterations"]
        x = frames_to_model(context).to(model.device, model.dtype)
        x = self._pixel_noise(x, seeds, [-1] * len(seeds))
        _, nll = model.push_context(state, x, actions)
        self._trim(state)
        calls = torch.zeros(len(seeds), dtype=torch.long)
        return state, context[:, -1], nll[:, -1] + self.dims * LOG_PIXEL_SCALE, calls

    @torch.no_grad()
    def advance(
        self, state: VideoState, actions: Tensor | None, seeds: Sequence[int], indices: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Generate each world's frame `indices` (B,). Returns frames uint8 (B, H, W, C), NLL (B,)
        in nats (pixel units, of the flow's own sample) and network calls (B,)."""
        z = self.latent_noise(seeds, indices)
        x, info = self.model.step(state, actions, z=z, sampler=self.sampler, denoise=self.denoise)
        self._trim(state)
        return model_to_frames(x).cpu(), info["nll"].cpu(), info["iterations"].cpu()

    def merge(self, groups: list[tuple]) -> list[tuple]:
        """(indices, state) groups -> one group per window layout (states concatenated)."""
        by_layout: dict[tuple, list] = {}
        for idx, state in groups:
            by_layout.setdefault(
                (state.cache.length, state.frames_in_window, state.recent.shape[1]), []
            ).append((idx, state))
        merged = []
        for members in by_layout.values():
            if len(members) == 1:
                merged.append(members[0])
                continue
            idx = [i for i, _ in members]
            joined = torch.cat(idx) if isinstance(idx[0], Tensor) else np.concatenate(idx)
            merged.append((joined, VideoState.cat([s for _, s in members])))
        return merged

    @torch.no_grad()
    def line_up(self, groups: list[tuple]) -> list[tuple]:
        """Merge groups, first sliding windows so that they line up for one forward pass.

        When some window is full (it slides on its next frame anyway), every window holding
        at least `context_frames` frames slides with it: early for those, by fewer than
        `max_frames - context_frames` frames, so no world ever sees less than its usual
        minimum of context. Worlds younger than that catch up at a later slide.
        """
        cfg = self.config
        if len(groups) > 1 and any(s.frames_in_window == cfg.max_frames for _, s in groups):
            for _, state in groups:
                if state.frames_in_window >= cfg.context_frames:
                    slide_window(self.model, state)
        return self.merge(groups)

    @torch.no_grad()
    def observe(
        self,
        state: VideoState,
        frames: Tensor,
        actions: Tensor | None,
        seeds: Sequence[int],
        indices: Sequence[int],
    ) -> Tensor:
        """Push real frames uint8 (B, H, W, C) as frame `indices`; their NLL (B,), nats, pixel units."""
        x = frames_to_model(frames[:, None]).to(self.model.device, self.model.dtype)
        x = self._pixel_noise(x, seeds, indices)
        _, nll = self.model.push_context(state, x, None if actions is None else actions[:, None])
        self._trim(state)
        return nll[:, 0].cpu() + self.dims * LOG_PIXEL_SCALE

    @torch.no_grad()
    def judge(self, previous: Tensor, frames: Tensor) -> tuple[Tensor | None, Tensor]:
        """The learned heads on transitions uint8 (B, H, W, C) -> (B, H, W, C): task reward (B,)
        or None without heads, and termination (B,) bool (logit > 0)."""
        reward, logit = self.head_outputs(previous, frames)
        if reward is None:
            return None, torch.zeros(frames.shape[0], dtype=torch.bool)
        return reward, logit > 0

    @torch.no_grad()
    def head_outputs(self, previous: Tensor, frames: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The learned heads' raw outputs: task reward (B,) and termination logit (B,), float32
        on the CPU, or (None, None) for a model without heads."""
        if self.model.heads is None:
            return None, None
        both = frames_to_model(torch.stack([previous, frames], dim=1)).to(self.model.device, self.model.dtype)
        reward, logit = self.model.heads(both[:, 0], both[:, 1])
        return reward.float().cpu(), logit.float().cpu()

    # ------------------------------------------------------------------ scores and rewards
    def scores(self, nll: Tensor) -> dict[str, Tensor]:
        """NLL (B,) nats -> log_likelihood, bits_per_dim, surprise (B,) float64."""
        nll = nll.double()
        bits = nll / (self.dims * math.log(2))
        return {"log_likelihood": -nll, "bits_per_dim": bits, "surprise": bits - self.floor}

    def rewards(
        self,
        scores: dict[str, Tensor],
        task: Tensor | None,
        item: Callable[[int], tuple[np.ndarray, object, dict]],
    ) -> Tensor:
        """(B,) float64 rewards; `item(i)` gives (obs, action, info) for a reward callable."""
        if self.reward == "task":
            return task.double()
        if isinstance(self.reward, str):
            return scores[self.reward].clone()
        out = []
        for i in range(scores["surprise"].shape[0]):
            value = self.reward(*item(i))
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.item()
            elif isinstance(value, (np.ndarray, np.generic)) and value.size == 1:
                value = value.item()
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"reward: the callable must return a real number, returned {value!r}")
            out.append(float(value))
        return torch.tensor(out, dtype=torch.float64)

    def info(
        self, scores: dict[str, Tensor], calls: Tensor, index: Tensor, task: Tensor | None, i: int
    ) -> dict:
        """World i's info dict, in plain Python types."""
        info = {key: float(value[i]) for key, value in scores.items()}
        info["jacobi_iterations"] = int(calls[i])
        info["frame_index"] = int(index[i])
        if task is not None:
            info["task_reward"] = float(task[i])
        return info

    def env_action(self, action: Tensor | None, i: int):
        """World i's model action back in the env's terms (for reward callables)."""
        if isinstance(self.action_space, spaces.Discrete):
            return int(self.action_space.start) + (0 if action is None else int(action[i]))
        return action[i].cpu().numpy().astype(self.action_space.dtype)
