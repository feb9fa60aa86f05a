"""Collect trajectories from a Gymnasium environment into TensorDict memmap storage.

A dataset is a folder; each call to :func:`collect` appends one chunk to it:

| path               | holds                                                               |
|--------------------|---------------------------------------------------------------------|
| ``meta.json``      | ``env_id``, ``frame_size`` [H, W], ``crop`` [top, bottom, left,     |
|                    | right] or null, ``action_space`` ({"type": "discrete", "n": 2} or   |
|                    | {"type": "box", "shape", "low", "high"}), ``state_size``,           |
|                    | ``policy``, ``episodes``, ``frames``, ``chunks``                    |
| ``meta["chunks"]`` | per chunk: ``name``, ``policy``, ``seed``, ``max_steps``,           |
|                    | ``frames``, ``episode_ids``, ``seeds`` (episode ``episode_ids[i]``  |
|                    | was reset with ``seeds[i]``)                                        |
| ``chunk_000/``,... | one memmapped ``TensorDict`` per call, flat step dimension N        |

Keys of a chunk (N = number of frames; an episode of ``n`` env steps has ``n + 1`` frames):

| key            | dtype   | shape        | meaning                                           |
|----------------|---------|--------------|---------------------------------------------------|
| ``frames``     | uint8   | (N, H, W, 3) | observation frame, rendered and preprocessed      |
| ``actions``    | int64   | (N,)         | discrete action taken after seeing the frame      |
|                | float32 | (N, A)       | continuous action taken after seeing the frame    |
| ``rewards``    | float32 | (N,)         | reward of the transition that follows the frame   |
| ``terminated`` | bool    | (N,)         | ``terminated`` of that transition                 |
| ``truncated``  | bool    | (N,)         | ``truncated`` of it (also set when cut at         |
|                |         |              | ``max_steps``)                                    |
| ``last``       | bool    | (N,)         | final frame of its episode: no transition follows;|
|                |         |              | action is a filler (0 / zeros), reward 0, flags   |
|                |         |              | False                                             |
| ``episode``    | int64   | (N,)         | global episode id, unique across chunks           |
| ``step``       | int64   | (N,)         | index of the frame in its episode                 |
| ``state``      | float32 | (N, S)       | true state ``env.unwrapped.state`` (CartPole [x,  |
|                |         |              | x_dot, theta, theta_dot], Pendulum [theta,        |
|                |         |              | thetadot], ...), else the flattened observation   |

Episode ``k`` of a dataset is reset with seed ``seed + k``, skipping seeds the dataset already
used, so seeds never repeat inside a dataset; a held-out set is ``collect(..., seed=10_000)``
into another folder. Chunks and ``meta.json`` are written to temporary names and moved into
place with ``os.replace``: an interrupted call leaves the dataset as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional  # OmegaConf reads typing.Optional, not `X | None`

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tqdm import tqdm

from worldflow.data.preprocess import default_preprocessing, preprocess_frames

POLICIES = ("random", "heuristic", "mixed")
META_FILE = "meta.json"
FORMAT_VERSION = 1

Policy = Callable[[np.ndarray], Any]  # true state -> action


@dataclass
class CollectConfig:
    """`worldflow collect env=CartPole-v1 episodes=200 out=data/cartpole` (see `collect`)."""

    env: str = "CartPole-v1"
    episodes: int = 200
    out: str = "data/cartpole"
    policy: str = "mixed"
    seed: int = 0
    max_steps: int = 500
    frame_size: Optional[list] = None
    crop: Optional[list] = None


def run(cfg: CollectConfig) -> dict:
    try:
        return collect(
            cfg.env, cfg.episodes, cfg.out, cfg.policy, cfg.frame_size, cfg.crop, cfg.seed, cfg.max_steps
        )
    except ValueError as err:  # `collect` names its argument env_id; the command's field is env
        if str(err).startswith("env_id"):
            raise ValueError(f"env{str(err)[len('env_id'):]}") from err
        raise


def collect(
    env_id: str = "CartPole-v1",
    episodes: int = 200,
    out: str | os.PathLike = "data/cartpole",
    policy: str = "mixed",
    frame_size: tuple[int, int] | None = None,
    crop: tuple[int, int, int, int] | None = None,
    seed: int = 0,
    max_steps: int = 500,
    progress: bool = True,
) -> dict:
    """Roll out ``episodes`` episodes and append them to the dataset at ``out`` as one chunk.

    Args:
        env_id: Gymnasium id; must support ``render_mode="rgb_array"``.
        episodes: number of episodes to collect.
        out: dataset folder; created if missing, extended if it holds a dataset of the same
            env_id / frame_size / crop.
        policy: ``"random"``, ``"heuristic"`` (a per-env controller) or ``"mixed"`` (each
            episode draws epsilon ~ U[0, 1) and acts randomly with probability epsilon, else
            heuristically: long and short episodes, varied actions).
        frame_size: model frame ``(H, W)``; None -> :func:`default_preprocessing`.
        crop: raw-pixel ``(top, bottom, left, right)``; None -> the env's default crop (pass
            ``(0, H0, 0, W0)`` for the full frame of an env that has a default crop).
        seed: base seed; dataset episode ``k`` uses ``seed + k`` (skipping used seeds).
        max_steps: at most this many env steps per episode (``max_steps + 1`` frames); an
            episode cut here is marked ``truncated``.
        progress: show a tqdm bar over episodes.

    Returns:
        Summary dict: ``env_id``, ``path``, ``chunk``, ``policy``, ``episodes``, ``frames``,
        ``steps`` (env steps), ``mean_episode_length`` / ``min_episode_length`` /
        ``max_episode_length`` (env steps), ``mean_return``, ``seeds`` ([first, last]),
        ``dataset_episodes``, ``dataset_frames``.

    Raises:
        ValueError: bad arguments, or ``out`` holds an incompatible dataset (nothing written).

    Example:
        >>> summary = collect("CartPole-v1", episodes=2, out="/tmp/cp", max_steps=20,
        ...                   progress=False)  # doctest: +SKIP
    """
    _check_positive_int("episodes", episodes)
    _check_positive_int("max_steps", max_steps)
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    for arg, value, n in (("frame_size", frame_size, 2), ("crop", crop, 4)):
        if value is not None and (not isinstance(value, Sequence) or len(value) != n):
            raise ValueError(f"{arg}: expected None or a sequence of {n} ints, got {value!r}")
    default_size, default_crop = default_preprocessing(env_id)
    frame_size = tuple(frame_size) if frame_size is not None else default_size  # lists, Hydra
    crop = tuple(crop) if crop is not None else default_crop  # ListConfigs -> tuples
    out = Path(out)
    meta = _read_or_start_meta(out, env_id, frame_size, crop)

    env = _make_env(env_id)
    # Per-frame tensor ops are tiny: intra-op threads only add synchronisation, which costs
    # 10-30x on a busy machine. Collection runs single-threaded and restores the setting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        action_space = _describe_action_space(env.action_space)
        if meta["action_space"] not in (None, action_space):
            raise ValueError(
                f"env_id: the dataset at {str(out)!r} has actions {meta['action_space']}, "
                f"{env_id} has {action_space}"
            )
        meta["action_space"] = action_space
        heuristic = _HEURISTICS.get(env_id.split("-v")[0])
        if policy != "random" and heuristic is None:
            raise ValueError(
                f"policy: {policy!r} needs a heuristic for {env_id}; heuristics exist for "
                f"{sorted(_HEURISTICS)}; use policy='random'"
            )
        used = {s for chunk in meta["chunks"] for s in chunk["seeds"]}
        first_id = max((max(c["episode_ids"]) + 1 for c in meta["chunks"]), default=0)
        seeds = _fresh_seeds(seed, first_id, episodes, used)
        rollouts = []
        bar = tqdm(seeds, desc=f"collect {env_id}", unit="ep", disable=not progress)
        for i, episode_seed in enumerate(bar):
            act = _make_policy(policy, env, heuristic, episode_seed)
            ep = _rollout(env, act, episode_seed, max_steps, frame_size, crop)
            ep["episode"] = torch.full_like(ep["step"], first_id + i)
            rollouts.append(ep)
            bar.set_postfix(frames=sum(r.shape[0] for r in rollouts))
    finally:
        env.close()
        torch.set_num_threads(threads)

    meta["state_size"] = int(rollouts[0]["state"].shape[-1])
    name = _write_chunk(out, rollouts, len(meta["chunks"]))
    lengths = np.array([r.shape[0] - 1 for r in rollouts])
    frames = int(lengths.sum() + len(lengths))
    meta["chunks"].append(
        {
            "name": name,
            "policy": policy,
            "seed": seed,
            "max_steps": max_steps,
            "frames": frames,
            "episode_ids": list(range(first_id, first_id + episodes)),
            "seeds": seeds,
        }
    )
    policies = list(dict.fromkeys(c["policy"] for c in meta["chunks"]))
    meta["policy"] = "+".join(policies)
    meta["episodes"] = sum(len(c["episode_ids"]) for c in meta["chunks"])
    meta["frames"] = sum(c["frames"] for c in meta["chunks"])
    _write_json_atomic(out / META_FILE, meta)
    return {
        "env_id": env_id,
        "path": str(out),
        "chunk": name,
        "policy": policy,
        "episodes": episodes,
        "frames": frames,
        "steps": int(lengths.sum()),
        "mean_episode_length": float(lengths.mean()),
        "min_episode_length": int(lengths.min()),
        "max_episode_length": int(lengths.max()),
        "mean_return": float(np.mean([r["rewards"].sum().item() for r in rollouts])),
        "seeds": [seeds[0], seeds[-1]],
        "dataset_episodes": meta["episodes"],
        "dataset_frames": meta["frames"],
    }


def load_dataset(path: str | os.PathLike) -> tuple[TensorDict, dict]:
    """Load every chunk of a dataset, concatenated along the step dimension.

    Args:
        path: dataset folder written by :func:`collect`.

    Returns:
        ``(data, meta)``: an in-memory TensorDict with batch size ``(N,)`` and the keys of
        the module docstring, and the parsed ``meta.json``.

    Raises:
        FileNotFoundError: no ``meta.json`` or a listed chunk is missing.
        ValueError: a chunk disagrees with ``meta.json``.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"path: expected a dataset folder with {META_FILE} (written by collect), "
            f"got {str(path)!r} without one"
        )
    meta = json.loads(meta_path.read_text())
    if not meta.get("chunks"):
        raise ValueError(f"path: {str(meta_path)!r} lists no chunks")
    chunks = []
    for chunk in meta["chunks"]:
        chunk_path = path / chunk["name"]
        if not (chunk_path / META_FILE).is_file():
            raise FileNotFoundError(
                f"path: {META_FILE} lists chunk {chunk['name']!r}, but {str(chunk_path)!r} "
                "is missing or incomplete"
            )
        data = TensorDict.load_memmap(chunk_path)
        if data.shape[0] != chunk["frames"]:
            raise ValueError(
                f"path: chunk {chunk['name']!r} should hold {chunk['frames']} frames "
                f"({META_FILE}), got {data.shape[0]}"
            )
        chunks.append(data)
    return torch.cat(chunks), meta


# ----------------------------------------------------------------------------- rollouts


def record_episode(
    env_id: str = "CartPole-v1",
    seed: int = 0,
    max_steps: int = 500,
    frame_size: tuple[int, int] | None = None,
    crop: tuple[int, int, int, int] | None = None,
    policy: str = "heuristic",
) -> TensorDict:
    """One real episode, in memory, with the keys of the module docstring (no ``episode``).

    For demos and benchmarks that need a fresh real episode, not a dataset. Seeded: the same
    arguments give the same episode.
    """
    _check_positive_int("max_steps", max_steps)
    default_size, default_crop = default_preprocessing(env_id)
    frame_size = tuple(frame_size) if frame_size is not None else default_size
    crop = tuple(crop) if crop is not None else default_crop
    heuristic = _HEURISTICS.get(env_id.split("-v")[0])
    if policy not in POLICIES or (policy != "random" and heuristic is None):
        raise ValueError(
            f"policy: expected one of {POLICIES} (a heuristic exists for {sorted(_HEURISTICS)}), "
            f"got {policy!r} for {env_id}"
        )
    env = _make_env(env_id)
    try:
        return _rollout(env, _make_policy(policy, env, heuristic, seed), seed, max_steps, frame_size, crop)
    finally:
        env.close()


def _make_env(env_id: str) -> gym.Env:
    # Classic-control envs render with pygame; without a display it needs SDL's dummy
    # driver, and pygame's import banner would end up in every log.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        return gym.make(env_id, render_mode="rgb_array")
    except gym.error.Error as err:
        raise ValueError(
            f"env_id: expected a registered Gymnasium environment id, got {env_id!r} ({err})"
        ) from err


def _rollout(
    env: gym.Env,
    act: Policy,
    seed: int,
    max_steps: int,
    frame_size: tuple[int, int],
    crop: tuple[int, int, int, int] | None,
) -> TensorDict:
    """One episode as a TensorDict of n + 1 frames (keys of the module docstring)."""
    obs, _ = env.reset(seed=seed)
    frames = [preprocess_frames(env.render(), frame_size, crop)]
    states = [_true_state(env, obs)]
    actions, rewards, terminated, truncated = [], [], [], []
    for t in range(max_steps):
        action = act(states[-1])
        obs, reward, term, trunc, _ = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
        terminated.append(bool(term))
        truncated.append(bool(trunc) or t == max_steps - 1)
        frames.append(preprocess_frames(env.render(), frame_size, crop))
        states.append(_true_state(env, obs))
        if term or trunc:
            break
    n = len(actions)
    actions = torch.as_tensor(np.asarray(actions))
    filler = torch.zeros((1, *actions.shape[1:]), dtype=actions.dtype)
    flag_filler = torch.zeros(1, dtype=torch.bool)
    return TensorDict(
        {
            "frames": torch.stack(frames),  # (n+1, H, W, 3)
            "actions": torch.cat([actions, filler]),  # (n+1,) or (n+1, A)
            "rewards": torch.tensor([*rewards, 0.0], dtype=torch.float32),
            "terminated": torch.cat([torch.tensor(terminated, dtype=torch.bool), flag_filler]),
            "truncated": torch.cat([torch.tensor(truncated, dtype=torch.bool), flag_filler]),
            "last": torch.arange(n + 1) == n,
            "step": torch.arange(n + 1),
            "state": torch.as_tensor(np.stack(states)),  # (n+1, S)
        },
        batch_size=[n + 1],
    )


def _true_state(env: gym.Env, obs: Any) -> np.ndarray:
    state = getattr(env.unwrapped, "state", None)
    if state is None:
        state = obs
    return np.asarray(state, dtype=np.float32).reshape(-1)


def _describe_action_space(space: gym.Space) -> dict:
    if isinstance(space, gym.spaces.Discrete):
        if space.start != 0:
            raise ValueError(f"env_id: expected Discrete actions starting at 0, got {space}")
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return {
            "type": "box",
            "shape": list(space.shape),
            "low": space.low.tolist(),
            "high": space.high.tolist(),
        }
    raise ValueError(f"env_id: expected a Discrete or 1-D Box action space, got {space}")


# ----------------------------------------------------------------------------- policies


def _make_policy(name: str, env: gym.Env, heuristic, seed: int) -> Policy:
    """The behaviour policy of one episode, all randomness drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    space = env.action_space
    space.seed(seed)

    def to_action(a):  # match the space's dtype/shape, as env.step expects
        if isinstance(space, gym.spaces.Discrete):
            return int(a)
        return np.asarray(a, dtype=space.dtype).reshape(space.shape)

    if name == "random":
        return lambda state: to_action(space.sample())
    controller = heuristic(rng)
    epsilon = rng.uniform() if name == "mixed" else 0.0
    return lambda state: to_action(space.sample() if rng.uniform() < epsilon else controller(state))


def _cartpole_heuristic(rng: np.random.Generator) -> Policy:
    # Linear state feedback (all gains positive, as LQR gives for the cart-pole) driving the
    # cart to a per-episode target position, with noise on the force: balances for hundreds
    # of steps while the cart visits the whole track across episodes.
    target = rng.uniform(-1.8, 1.8)
    return lambda s: int(10 * s[2] + 2 * s[3] + 0.3 * (s[0] - target) + 0.8 * s[1] + 0.5 * rng.normal() > 0)


def _mountain_car_heuristic(rng: np.random.Generator) -> Policy:
    # Push in the direction of motion: pumps energy until the car reaches the flag.
    return lambda s: 2 if s[1] >= 0 else 0


def _acrobot_heuristic(rng: np.random.Generator) -> Policy:
    # Torque in the direction of the actuated (second) joint's velocity: the power it puts in,
    # torque * dtheta2, is never negative, so the swing grows until the tip crosses the line
    # (about 60-120 steps). Following the first joint's velocity instead never gets there.
    return lambda s: 2 if s[3] >= 0 else 0


def _pendulum_heuristic(rng: np.random.Generator) -> Policy:
    # Energy shaping: with theta = 0 upright, E = thetadot^2 / 2 + 15 cos(theta) is conserved
    # by Pendulum-v1's dynamics (g = 10, m = l = 1) and dE/dt = 3 u thetadot, so pushing with
    # sign((15 - E) thetadot) swings up; a PD law holds the top.
    def act(s):
        theta = (s[0] + np.pi) % (2 * np.pi) - np.pi
        energy = 0.5 * s[1] ** 2 + 15 * np.cos(theta)
        if np.cos(theta) > 0.9:
            u = -10 * theta - 2 * s[1]
        else:
            u = 2.0 * np.sign((15 - energy) * s[1] + 1e-6)
        return [np.clip(u + 0.3 * rng.normal(), -2.0, 2.0)]

    return act


_HEURISTICS: dict[str, Callable[[np.random.Generator], Policy]] = {
    "CartPole": _cartpole_heuristic,
    "MountainCar": _mountain_car_heuristic,
    "Acrobot": _acrobot_heuristic,
    "Pendulum": _pendulum_heuristic,
}


# ----------------------------------------------------------------------------- storage


def _read_or_start_meta(out: Path, env_id: str, frame_size: tuple, crop: tuple | None) -> dict:
    """The dataset's meta.json, checked against this call, or a fresh one (nothing written)."""
    expected = {
        "env_id": env_id,
        "frame_size": list(frame_size),
        "crop": list(crop) if crop is not None else None,
    }
    meta_path = out / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        found = {key: meta.get(key) for key in expected}
        if found != expected:
            raise ValueError(
                f"out: {str(out)!r} holds a dataset with {found}; extending it needs the same "
                f"env_id/frame_size/crop, got {expected}"
            )
        return meta
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"out: expected a new or empty folder, or a dataset with {META_FILE}; "
            f"got {str(out)!r}, which is neither"
        )
    return {
        "format": "worldflow-trajectories",
        "version": FORMAT_VERSION,
        **expected,
        "action_space": None,
        "state_size": None,
        "policy": None,
        "episodes": 0,
        "frames": 0,
        "chunks": [],
    }


def _fresh_seeds(base: int, first_episode: int, count: int, used: set[int]) -> list[int]:
    """``base + k`` for dataset episodes ``k = first_episode, ...``, skipping used seeds."""
    seeds, k = [], first_episode
    while len(seeds) < count:
        if base + k not in used:
            seeds.append(base + k)
        k += 1
    return seeds


def _write_chunk(out: Path, rollouts: list[TensorDict], index: int) -> str:
    """Write the episodes as one memmapped chunk, atomically; return the chunk's name."""
    while (out / f"chunk_{index:03d}").exists():  # left by a run that died before meta.json
        index += 1
    name = f"chunk_{index:03d}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.tmp-{os.getpid()}"
    total = sum(r.shape[0] for r in rollouts)
    # memmap_like of an expanded row allocates the files without building the data twice.
    chunk = rollouts[0][0].expand(total).memmap_like(tmp, existsok=True)
    start = 0
    for rollout in rollouts:
        chunk[start : start + rollout.shape[0]] = rollout
        start += rollout.shape[0]
    del chunk
    os.replace(tmp, out / name)
    return name


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
