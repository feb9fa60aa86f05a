"""`WorldFlowTorchRLEnv`: the dream as a TorchRL `EnvBase` whose whole state is in the TensorDict.

Planners expand a state over candidates by expanding the TensorDict: nothing about the
world lives on the env object except the model and the seeding generators of `reset`.
The env is not batch-locked: one with `batch_size=()` steps TensorDicts of any batch shape.

State layout, under `"state"` (batch-leading, fixed sizes; F = max_frames, N tokens of
size c a frame, S text tokens, G = denoiser_window - 1):

| key            | shape                                  | meaning                                 |
|----------------|----------------------------------------|-----------------------------------------|
| `keys`/`values`| (*B, layers, heads, S + F N, head_dim) | the deep block's KV cache, full capacity|
| `tokens`       | (*B, F, N, c)                          | deep-block inputs of the window, padded |
| `cond`         | (*B, F, deep_width)                    | their action embeddings (action models) |
| `text`         | (*B, S, text_dim)                      | the prompt's embeddings (text models)   |
| `prev_affine`  | (*B, blocks, N, 2c)                    | last frame's [a, b] per block (Jacobi init)|
| `recent`       | (*B, G, C, H, W)                       | latest frames, right-aligned           |
| `frames`       | (*B,) int64                            | frames in the window (valid prefix)     |
| `frame_index`  | (*B,) int64                            | frames in the video so far              |
| `noise_seed`   | (*B,) int64                            | keys the latent noise of every frame    |
| `steps`        | (*B,) int64                            | steps since reset (truncation)          |

The cache is filled up to `text_len + frames * N` slots; the rest is scratch. Items whose
windows hold different numbers of frames step in separate passes, lined up by early
slides as in the vector env (`DreamWorld.line_up`). Frame t's
noise is keyed by (noise_seed, t), so candidates expanded from one state see the same
noise (common random numbers) and differ only through their actions.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl._utils import seed_generator
from torchrl.data import Bounded, Categorical, Composite, OneHot, Unbounded
from torchrl.envs import EnvBase

from worldflow.config import SamplerConfig
from worldflow.errors import WorldFlowError
from worldflow.kv_cache import KVCache
from worldflow.video_state import VideoState

from .dream import check_max_steps
from .world import DreamWorld

SCORES = ("log_likelihood", "bits_per_dim", "surprise")
HEAD_KEYS = ("task_reward", "termination_logit")


class ArgmaxOneHot(OneHot):
    """One-hot actions projected by argmax.

    TorchRL's `OneHot.project` draws a multinomial sample, which fails on the Gaussian
    scores `CEMPlanner` proposes (negative weights) and would be random anyway. Reading a
    candidate's n numbers as scores and taking the best keeps CEM's Gaussian a proper
    relaxation of an unordered choice (rounding a single number, as `Categorical` does,
    would invent an order between the actions).
    """

    def _project(self, val: Tensor) -> Tensor:
        return F.one_hot(val.argmax(-1), self.space.n).to(self.dtype)

    def is_in(self, val: Tensor) -> bool:
        if val.dtype != self.dtype or val.shape[len(val.shape) - 1 :] != (self.space.n,):
            return False
        return bool(((val == 0) | (val == 1)).all() and (val.sum(-1) == 1).all())


class WorldFlowTorchRLEnv(EnvBase):
    """The `WorldFlowEnv` world as a TorchRL environment (see `WorldFlowEnv` for the dream).

    Args:
        model: a shipped name, a directory or a `WorldFlow`.
        batch_size: leading batch shape of the env (default `()`: any batch, for planners).
        reward, sampler, temperature, denoise, context_noise, max_episode_steps, device:
            as `WorldFlowEnv`; a reward callable is called per item with
            `(obs uint8 (H, W, 3), action, info)`.
        prompt: a text prompt for every world (text models).
        seed: seeds the reset generators (see `set_seed`).

    Specs: `action` is `ArgmaxOneHot(n)` (float one-hot; discrete models, see its docstring)
    or `Bounded(low, high, (A,))`; observations `pixels` uint8 (H, W, 3), `log_likelihood`,
    `bits_per_dim`, `surprise` (float32), `jacobi_iterations` (int64) and `state` (module
    docstring); with task heads also `task_reward` and `termination_logit` (float32: the
    heads' raw outputs on the transition into the frame, 0 after a reset; `terminated` is
    `termination_logit > 0`); `reward` (1,) float32; `done`/`terminated`/`truncated` (1,) bool.

    Beyond TorchRL's API: `begin(frames)` starts worlds from real frames and
    `observe(td, frames, action)` pushes the real next frames into them, for agents that
    plan in the dream and act in the real environment (`worldflow.agents`).

    Reset: each world starts from one of `model.start_frames` (or a generated frame),
    drawn with the world's reset generator. `set_seed(s)` seeds world i of the batch with
    the i-th seed of TorchRL's chain s, seed_generator(s), ... — what a `SerialEnv` of
    single envs gives its workers, so the two produce the same worlds.

    Example:
        >>> env = WorldFlowTorchRLEnv("cartpole", seed=0)
        >>> planner = CEMPlanner(env, planning_horizon=8, optim_steps=3, num_candidates=32, top_k=4)
        >>> td = planner(env.reset())
    """

    batch_locked = False

    def __init__(
        self,
        model,
        batch_size=(),
        *,
        reward="log_likelihood",
        sampler: SamplerConfig | str = "jacobi",
        temperature: float = 1.0,
        denoise: bool | str = "auto",
        context_noise: bool = True,
        max_episode_steps: int | None = None,
        prompt=None,
        device=None,
        seed: int | None = None,
    ):
        max_steps = check_max_steps(max_episode_steps)
        world = DreamWorld(model, reward, sampler, temperature, denoise, context_noise, device)
        super().__init__(device=world.model.device, batch_size=torch.Size(batch_size))
        self.world, self.model, self.max_episode_steps = world, world.model, max_steps
        self._text = world.check_prompt(prompt, 1)  # (1, S, text_dim) or None
        self._score_keys = SCORES + (HEAD_KEYS if self.model.heads is not None else ())
        self._make_specs()
        self._rngs: list[torch.Generator] = []
        self._consuming = False  # `step` may write the next KV cache into the given one
        self.set_seed(seed)

    # ------------------------------------------------------------------ specs
    def _state_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        cfg, model = self.world.config, self.model
        block = model.deep_block
        heads, depth = block.heads, block.transformer.depth
        head_dim = block.transformer.layers[0].attn.head_dim
        text_len = 0 if self._text is None else self._text.shape[1]
        n, c, f = cfg.tokens_per_frame, cfg.token_dim, cfg.max_frames
        dtype = model.dtype
        shapes = {
            "keys": ((depth, heads, text_len + f * n, head_dim), dtype),
            "values": ((depth, heads, text_len + f * n, head_dim), dtype),
            "tokens": ((f, n, c), dtype),
            "prev_affine": ((cfg.num_blocks, n, 2 * c), dtype),
            "recent": ((self.world.keep, cfg.channels, *cfg.frame_size), dtype),
        }
        if model.actions is not None:
            shapes["cond"] = ((f, cfg.deep_width), dtype)
        if self._text is not None:
            shapes["text"] = (tuple(self._text.shape[1:]), dtype)
        for counter in ("frames", "frame_index", "noise_seed", "steps"):
            shapes[counter] = ((), torch.int64)
        return shapes

    def _make_specs(self) -> None:
        bs, world = self.batch_size, self.world
        pixels = Bounded(0, 255, (*bs, *world.observation_space.shape), dtype=torch.uint8)
        state = Composite(
            {k: Unbounded((*bs, *shape), dtype=dtype) for k, (shape, dtype) in self._state_shapes().items()},
            shape=bs,
        )
        scores = {k: Unbounded(bs, dtype=torch.float32) for k in self._score_keys}
        self.observation_spec = Composite(
            pixels=pixels, state=state, jacobi_iterations=Unbounded(bs, dtype=torch.int64), **scores, shape=bs
        )
        self.state_spec = Composite(pixels=pixels.clone(), state=state.clone(), shape=bs)
        space = world.action_space
        if hasattr(space, "n"):
            self.action_spec = ArgmaxOneHot(int(space.n), shape=(*bs, int(space.n)), dtype=torch.float32)
        else:
            low = torch.as_tensor(space.low, dtype=torch.float32).expand(*bs, *space.shape)
            high = torch.as_tensor(space.high, dtype=torch.float32).expand(*bs, *space.shape)
            self.action_spec = Bounded(low, high, (*bs, *space.shape), dtype=torch.float32)
        self.reward_spec = Unbounded((*bs, 1), dtype=torch.float32)
        flag = Categorical(2, (*bs, 1), dtype=torch.bool)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=bs)

    # ------------------------------------------------------------------ seeding
    def set_seed(self, seed: int | None = None, static_seed: bool = False) -> int | None:
        chain = [int(torch.empty((), dtype=torch.int64).random_()) if seed is None else int(seed)]
        for _ in range(max(self.batch_size.numel(), 1) - 1):
            chain.append(chain[-1] if static_seed else seed_generator(chain[-1]))
        self._rngs = [torch.Generator().manual_seed(s) for s in chain]
        if seed is None or static_seed:
            return seed
        return seed_generator(chain[-1])

    def _set_seed(self, seed: int | None) -> None:
        self.set_seed(seed, static_seed=True)

    # ------------------------------------------------------------------ state <-> VideoState
    def _pack(self, state: VideoState) -> dict[str, Tensor]:
        """A VideoState (R items) -> fixed-size buffers (R, ...)."""
        cfg, keep = self.world.config, self.world.keep
        r, f = state.batch_size, state.frames_in_window
        tokens = state.tokens.new_zeros(r, cfg.max_frames, *state.tokens.shape[2:])
        tokens[:, :f] = state.tokens
        recent = state.recent.new_zeros(r, keep, *state.recent.shape[2:])
        recent[:, keep - state.recent.shape[1] :] = state.recent
        out = {
            "keys": state.cache.keys,
            "values": state.cache.values,
            "tokens": tokens,
            "prev_affine": torch.cat(state.prev_affine, dim=1),
            "recent": recent,
            "frames": torch.full((r,), f, dtype=torch.int64, device=tokens.device),
        }
        if state.cond is not None:
            out["cond"] = state.cond.new_zeros(r, cfg.max_frames, state.cond.shape[2])
            out["cond"][:, :f] = state.cond
        if state.text is not None:
            out["text"] = state.text
        return out

    def _unpack(self, st: TensorDictBase, idx: Tensor | slice, frames: int, recent: int) -> VideoState:
        """Items `idx` of flat state buffers, all with `frames` window frames, as a VideoState
        (copies; views of the buffers where `idx` is a slice)."""
        cfg, keep = self.world.config, self.world.keep
        text = st.get("text")[idx] if "text" in st.keys() else None
        text_len = 0 if text is None else text.shape[1]
        affine = st.get("prev_affine")[idx]
        return VideoState(
            cache=KVCache(
                st.get("keys")[idx], st.get("values")[idx], text_len + frames * cfg.tokens_per_frame
            ),
            tokens=st.get("tokens")[idx, :frames],
            cond=st.get("cond")[idx, :frames] if "cond" in st.keys() else None,
            text=text,
            guidance=0.0,
            prev_affine=list(affine.split(1, dim=1)),
            recent=st.get("recent")[idx, keep - recent :],
        )

    # ------------------------------------------------------------------ reset / step
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        shape = self.batch_size if tensordict is None else tensordict.batch_size
        n = max(shape.numel(), 1)
        reset = tensordict.get("_reset", None) if tensordict is not None else None
        which = torch.arange(n) if reset is None else reset.reshape(n, -1).any(-1).nonzero().squeeze(-1).cpu()
        if which.numel() == 0:
            return tensordict.exclude("_reset").clone()
        rngs = self._rngs if shape == self.batch_size else [self._rngs[0]] * n
        starts, seeds, picks = self.model.start_frames, [], []
        for k in which.tolist():
            seeds.append(int(torch.randint(2**62, (), generator=rngs[k])))
            if starts is not None:
                picks.append(int(torch.randint(len(starts), (), generator=rngs[k])))
        context = None if starts is None else starts[torch.tensor(picks)][:, None]
        text = None if self._text is None else self._text.expand(len(seeds), -1, -1)
        out = self._started(seeds, context, None, text)
        r = len(seeds)
        if r < n:  # rows of worlds not reset are placeholders: reset() keeps their old values
            rows = torch.zeros(n, dtype=torch.long)
            rows[which] = torch.arange(r)
            out = out[rows]
        return out.reshape(shape)

    def _started(self, seeds: list[int], context, actions, text) -> TensorDictBase:
        """New worlds (R,) from context frames uint8 (R, F, H, W, 3) (or generated first frames)."""
        state, frames, nll, calls = self.world.begin(seeds, context, actions, text)
        buffers = self._pack(state)
        r = len(seeds)
        buffers.update(
            frame_index=torch.full((r,), state.frame_index, dtype=torch.int64),
            noise_seed=torch.tensor(seeds, dtype=torch.int64),
            steps=torch.zeros(r, dtype=torch.int64),
        )
        zeros = torch.zeros(r, dtype=torch.float32)
        no = torch.zeros(r, 1, dtype=torch.bool)
        return TensorDict(
            {
                "pixels": frames,
                "state": buffers,
                "jacobi_iterations": calls,
                **self._scores(nll, zeros, zeros),
                "done": no,
                "terminated": no.clone(),
                "truncated": no.clone(),
            },
            batch_size=[r],
        ).to(self.device)

    def _scores(self, nll: Tensor, task: Tensor | None, logit: Tensor | None) -> dict[str, Tensor]:
        scores = {k: v.float() for k, v in self.world.scores(nll).items()}
        if self.model.heads is not None:
            scores.update(task_reward=task, termination_logit=logit)
        return scores

    # ------------------------------------------------------------------ real frames in
    def begin(self, frames, actions=None, seed: int | None = None) -> TensorDictBase:
        """Worlds continuing real frames: uint8 (H, W, 3), (F, H, W, 3) or (B, F, H, W, 3).

        `actions` (env format, as the `action` entry: (*B, F - 1, n) one-hot or (*B, F - 1, A))
        condition frames 1..F-1. Returns a reset-like TensorDict of batch (B,) (or () for
        one unbatched video) whose `pixels` is the last given frame. `seed` keys the noise
        (world i gets seed + i; None: drawn from the first reset generator).
        """
        frames = self.world.check_frames(frames, "frames", (3, 4, 5))
        unbatched = frames.dim() < 5
        frames = frames.reshape(-1, *frames.shape[-4:]) if frames.dim() == 5 else frames.reshape(
            1, -1, *frames.shape[-3:]
        )
        b, f = frames.shape[:2]
        model_actions = None
        if actions is not None:
            actions = torch.as_tensor(actions)
            size = self.action_spec.shape[-1]
            if actions.shape[-2:] != (f - 1, size) or actions.numel() != b * (f - 1) * size:
                raise WorldFlowError(
                    f"actions: expected shape (*batch, {f - 1}, {size}) for {f} frames, "
                    f"got {tuple(actions.shape)}"
                )
            flat, _ = self._check_action(actions.reshape(b * (f - 1), size), b * (f - 1), "actions")
            model_actions = None if flat is None else flat.reshape(b, f - 1, *flat.shape[1:])
        if seed is None:
            seed = int(torch.randint(2**62, (), generator=self._rngs[0]))
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int or None, got {seed!r}")
        text = None if self._text is None else self._text.expand(b, -1, -1)
        out = self._started([seed + i for i in range(b)], frames, model_actions, text)
        return out[0] if unbatched else out

    @torch.no_grad()
    def observe(self, tensordict: TensorDictBase, frames, action) -> TensorDictBase:
        """Push real frames into the worlds: `frames` uint8 (*B, H, W, 3) arrived after
        `action` (the `action` entry's format). Returns the worlds' TensorDict with `pixels`
        the real frames, their scores (how surprising each was) and the state advanced; a
        bad argument raises before anything changes.
        """
        shape = tensordict.batch_size
        n = max(shape.numel(), 1)
        frames = self.world.check_frames(frames, "frames", (len(shape) + 3,))
        if tuple(frames.shape[:-3]) != tuple(shape):
            raise WorldFlowError(
                f"frames: expected batch shape {tuple(shape)}, got {tuple(frames.shape[:-3])}"
            )
        action = torch.as_tensor(action)
        model_actions, _ = self._check_action(action.reshape(n, -1), n)
        flat = tensordict.reshape(n)
        frames = frames.reshape(n, *frames.shape[-3:])
        st, world = flat.get("state"), self.world
        index, seeds = st.get("frame_index"), st.get("noise_seed")
        nll = torch.empty(n, dtype=torch.float32)

        def observe(idx: Tensor, state: VideoState) -> None:
            acts = None if model_actions is None else model_actions[idx]
            nll[idx] = world.observe(state, frames[idx], acts, seeds[idx].tolist(), index[idx].tolist())

        out = self._advance(st, observe)
        task, logit = world.head_outputs(flat.get("pixels").cpu(), frames)
        no = torch.zeros(n, 1, dtype=torch.bool)
        return TensorDict(
            {
                "pixels": frames,
                "state": out,
                "jacobi_iterations": torch.zeros(n, dtype=torch.int64),
                **self._scores(nll, task, logit),
                "done": no,
                "terminated": no.clone(),
                "truncated": no.clone(),
            },
            batch_size=[n],
        ).to(self.device).reshape(shape)

    @contextmanager
    def consuming_state(self):
        """Within it, `step` may write the next frame's KV cache into the buffers of the state
        it is given instead of a copy: for callers that step each state once, keep only the
        result, and own what they step (the planners' rollout, `agents.planning`)."""
        before, self._consuming = self._consuming, True
        try:
            yield self
        finally:
            self._consuming = before

    def _advance(self, st: TensorDictBase, advance) -> dict[str, Tensor]:
        """Run `advance(idx, state)` on the flat state buffers `st`, one pass per window layout
        (lined up by early slides); returns the new buffers."""
        world = self.world
        window, index = st.get("frames"), st.get("frame_index")
        recent = index.clamp(max=world.keep)
        layouts = torch.stack([window, recent], -1).unique(dim=0).tolist()
        in_place = len(layouts) == 1 and self._consuming  # views: the cache is written in place
        groups = []  # items whose windows hold equally many frames share a pass
        for f, g in layouts:
            idx = slice(None) if in_place else ((window == f) & (recent == g)).nonzero().squeeze(-1)
            groups.append((idx, self._unpack(st, idx, f, g)))
        lined = world.line_up(groups)
        whole = len(lined) == 1 and (
            isinstance(lined[0][0], slice) or lined[0][0].equal(torch.arange(len(window)))
        )
        if whole:
            # one pass over every item in order (the usual case): its buffers are the output,
            # fresh copies already (`_unpack`) or the consumed input's, not one more copy
            advance(*lined[0])
            out = self._pack(lined[0][1])
        else:
            out = {
                key: torch.empty_like(st.get(key))
                for key in st.keys()
                if key not in ("frame_index", "noise_seed", "steps")
            }
            for idx, state in lined:
                advance(idx, state)
                for key, value in self._pack(state).items():
                    out[key][idx] = value
        out.update(frame_index=index + 1, noise_seed=st.get("noise_seed").clone(), steps=st.get("steps") + 1)
        return out

    def _check_action(
        self, action: Tensor | None, n: int, name: str = "action"
    ) -> tuple[Tensor | None, Tensor]:
        """(n, ...) env actions -> model actions and env-side actions (index or vector)."""
        spec = self.action_spec
        if action is None:
            raise WorldFlowError(f"{name}: expected an 'action' entry in the tensordict, found none")
        size = spec.shape[-1]
        if action.shape != (n, size):
            raise WorldFlowError(f"{name}: expected shape (*batch, {size}), got {tuple(action.shape)}")
        if isinstance(spec, ArgmaxOneHot):
            if action.is_complex() or not (
                ((action == 0) | (action == 1)).all() and (action.sum(-1) == 1).all()
            ):
                raise WorldFlowError(
                    f"{name}: expected one-hot vectors of size {size}, got {action.tolist()}"
                )
            index = action.argmax(-1).long()
            return (index if self.world.config.has_actions else None), index
        if not action.is_floating_point():
            raise TypeError(f"{name}: expected float actions, got dtype {action.dtype}")
        if not torch.isfinite(action).all():
            raise WorldFlowError(f"{name}: expected finite values, got {action.tolist()}")
        low, high = spec.space.low.reshape(-1, size)[0], spec.space.high.reshape(-1, size)[0]
        if (action < low).any() or (action > high).any():
            raise WorldFlowError(
                f"{name}: expected values in [{low.tolist()}, {high.tolist()}], got {action.tolist()}"
            )
        return action.to(self.model.dtype), action

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        shape = tensordict.batch_size
        n = max(shape.numel(), 1)
        flat = tensordict.reshape(n)
        model_actions, env_actions = self._check_action(flat.get("action", None), n)
        st, world = flat.get("state"), self.world
        index, seeds = st.get("frame_index"), st.get("noise_seed")
        pixels = torch.empty(n, *world.observation_space.shape, dtype=torch.uint8)
        nll, calls = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.int64)

        def advance(idx: Tensor, state: VideoState) -> None:
            acts = None if model_actions is None else model_actions[idx]
            pixels[idx], nll[idx], calls[idx] = world.advance(
                state, acts, seeds[idx].tolist(), index[idx].tolist()
            )

        out = self._advance(st, advance)
        task, logit = world.head_outputs(flat.get("pixels").cpu(), pixels)
        terminated = torch.zeros(n, dtype=torch.bool) if logit is None else logit > 0
        scores = world.scores(nll)

        def item(i):
            info = world.info(scores, calls, index, task, i)
            return pixels[i].numpy().copy(), world.env_action(env_actions, i), info

        reward = world.rewards(scores, task, item)
        truncated = torch.zeros(n, dtype=torch.bool)
        if self.max_episode_steps is not None:
            truncated = out["steps"].cpu() >= self.max_episode_steps
        terminated = terminated[:, None]
        truncated = truncated[:, None]
        return (
            TensorDict(
                {
                    "pixels": pixels,
                    "state": out,
                    "jacobi_iterations": calls,
                    **self._scores(nll, task, logit),
                    "reward": reward.float()[:, None],
                    "done": terminated | truncated,
                    "terminated": terminated,
                    "truncated": truncated,
                },
                batch_size=[n],
            )
            .to(self.device)
            .reshape(shape)
        )
