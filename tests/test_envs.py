"""worldflow.envs.WorldFlowEnv: the Gymnasium contract, determinism, rewards, bad input, observe."""

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import build

import worldflow.envs as wenvs
from worldflow.envs import WorldFlowEnv, noise_floor_bits
from worldflow.errors import WorldFlowError


def cartpole_model(terminate: float | None = -20.0, start_frames: bool = True, **overrides):
    """A random tiny CartPole world model; `terminate` sets the termination head's bias."""
    model = build(num_actions=2, env_id="CartPole-v1", task_heads=True, **overrides)
    if terminate is not None:
        with torch.no_grad():
            model.heads.terminated.bias.fill_(terminate)
    if start_frames:
        gen = torch.Generator().manual_seed(1)
        h, w = model.config.frame_size
        model.start_frames = torch.randint(0, 256, (4, h, w, 3), dtype=torch.uint8, generator=gen)
    return model


@pytest.fixture(scope="module")
def model():
    return cartpole_model()


@pytest.fixture(scope="module")
def pendulum():
    model = build(action_dim=1, env_id="Pendulum-v1", seed=3)
    model.start_frames = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    return model


def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, False, False, info)]
    for a in actions:
        out.append(env.step(a))
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x[0], y[0])
        assert x[1:] == y[1:]


# ---------------------------------------------------------------------- contract
def test_registered_and_made_with_gym_make(model):
    env = gym.make("worldflow/Dream-v0", model=model)
    assert env.observation_space == gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert env.action_space == gym.make("CartPole-v1").action_space
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == (16, 16, 3)
    obs, reward, terminated, truncated, info = env.step(1)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert set(info) == {
        "log_likelihood",
        "bits_per_dim",
        "surprise",
        "jacobi_iterations",
        "frame_index",
        "task_reward",
    }
    assert all(type(v) in (float, int) for v in info.values())
    assert info["frame_index"] == 1 and info["jacobi_iterations"] > 0
    assert np.array_equal(env.render(), obs)


def test_gymnasium_env_checker_passes_with_warnings_as_errors(model, pendulum):
    from gymnasium.utils.env_checker import check_env

    for m in (model, pendulum):
        env = gym.make("worldflow/Dream-v0", model=m)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if (
                m is pendulum
            ):  # Pendulum-v1's own Box(-2, 2) draws this advice; the space is copied by contract
                warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
            check_env(env.unwrapped)


def test_stable_baselines3_env_checker_passes(model, pendulum):
    from stable_baselines3.common.env_checker import check_env

    for m in (model, pendulum):
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*minimal resolution.*"
            )  # 16x16 frames < NatureCNN's 36
            warnings.filterwarnings(
                "ignore", message=".*symmetric and normalized.*"
            )  # Pendulum-v1's own space
            check_env(WorldFlowEnv(m))


def test_scores_are_consistent(model):
    env = WorldFlowEnv(model, reward="surprise")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(0)
    dims = 16 * 16 * 3
    assert info["bits_per_dim"] == pytest.approx(-info["log_likelihood"] / (dims * math.log(2)))
    assert info["surprise"] == pytest.approx(info["bits_per_dim"] - noise_floor_bits(model.config.noise_std))
    assert reward == info["surprise"]


def test_reward_modes(model):
    seen = []

    def custom(obs, action, info):
        seen.append((obs.shape, action, info["frame_index"]))
        return 2.5

    for mode, key in (("log_likelihood", "log_likelihood"), ("task", "task_reward"), (custom, None)):
        env = WorldFlowEnv(model, reward=mode)
        env.reset(seed=0)
        obs, reward, *_, info = env.step(1)
        assert reward == (2.5 if key is None else info[key])
    assert seen == [((16, 16, 3), 1, 1)]


def test_termination_from_head_and_truncation(model):
    env = WorldFlowEnv(cartpole_model(terminate=20.0))
    env.reset(seed=0)
    assert env.step(0)[2] is True
    env = WorldFlowEnv(model, max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


# ---------------------------------------------------------------------- determinism
def test_same_seed_same_50_step_trajectory_other_seed_differs(model):
    actions = np.random.default_rng(0).integers(0, 2, 50)
    a = rollout(WorldFlowEnv(model), 7, actions)
    b = rollout(WorldFlowEnv(model), 7, actions)
    assert_same(a, b)
    c = rollout(WorldFlowEnv(model), 8, actions)
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a[1:], c[1:]))
    assert [x[1] for x in a] != [x[1] for x in c]


def test_continuous_actions_are_deterministic_and_matter(pendulum):
    env = WorldFlowEnv(pendulum)
    assert env.action_space == gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    a = rollout(env, 0, [np.array([1.5], np.float32)] * 3)
    b = rollout(WorldFlowEnv(pendulum), 0, [np.array([1.5], np.float32)] * 3)
    assert_same(a, b)
    c = rollout(WorldFlowEnv(pendulum), 0, [np.array([-1.5], np.float32)] * 3)
    assert not np.array_equal(a[-1][0], c[-1][0])


# ---------------------------------------------------------------------- starting state
def test_reset_context_options(model):
    env = WorldFlowEnv(model, context_noise=False)
    frames = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8).numpy()
    obs, info = env.reset(seed=0, options={"context": frames, "actions": np.array([0, 1])})
    assert np.array_equal(obs, frames[-1]) and info["frame_index"] == 2
    lp = model.log_prob(torch.from_numpy(frames)[None], torch.tensor([[0, 1]]))
    assert info["log_likelihood"] == pytest.approx(-lp.nll[0, -1].item(), rel=1e-5)
    obs, info = env.reset(seed=0, options={"context": frames[0]})
    assert np.array_equal(obs, frames[0]) and info["frame_index"] == 0
    # without a context: one of the model's start frames, chosen by the seed
    starts = {env.reset(seed=s)[0].tobytes() for s in range(12)}
    assert starts <= {f.tobytes() for f in model.start_frames.numpy()} and len(starts) > 1


def test_model_without_start_frames_generates_the_first_frame():
    env = WorldFlowEnv(cartpole_model(start_frames=False))
    obs, info = env.reset(seed=0)
    assert obs.shape == (16, 16, 3) and info["jacobi_iterations"] > 0 and info["frame_index"] == 0
    assert not np.array_equal(obs, env.reset(seed=1)[0])


def test_model_from_a_directory(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    env = gym.make("worldflow/Dream-v0", model=str(tmp_path / "m"))
    a = rollout(env, 3, [0, 1, 1])
    b = rollout(WorldFlowEnv(model), 3, [0, 1, 1])
    assert_same(a, b)


def test_shipped_cartpole_model_when_present():
    from worldflow.checkpoint import ASSETS

    if not (ASSETS / "cartpole").is_dir():
        pytest.skip("the shipped cartpole model is not in worldflow/assets yet")
    from gymnasium.utils.env_checker import check_env

    env = gym.make("worldflow/Dream-v0", model="cartpole")
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (*env.unwrapped.model.config.frame_size, 3)


# ---------------------------------------------------------------------- long episodes
def test_long_episode_keeps_state_size_flat(model):
    env = WorldFlowEnv(model, max_episode_steps=None)
    env.reset(seed=0)
    cap = env._state.cache.keys.shape
    for t in range(3 * model.config.max_frames):
        env.step(t % 2)
        assert env._state.frames_in_window <= model.config.max_frames
        assert env._state.cache.keys.shape == cap
        assert env._state.recent.shape[1] <= model.config.denoiser_window - 1
    assert env.step(0)[4]["frame_index"] == 3 * model.config.max_frames + 1


# ---------------------------------------------------------------------- observe
def test_observe_scores_a_real_frame_like_log_prob(model):
    env = WorldFlowEnv(model, context_noise=False)
    frames = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    env.reset(seed=0, options={"context": frames[:2].numpy(), "actions": np.array([1])})
    surprise = env.observe(frames[2].numpy(), 0)
    assert type(surprise) is float
    lp = model.log_prob(frames[None], torch.tensor([[1, 0]]))
    expected = lp.bits_per_dim[0, -1].item() - noise_floor_bits(model.config.noise_std)
    assert surprise == pytest.approx(expected, rel=1e-5)
    assert np.array_equal(env.render(), frames[2].numpy())
    assert env.step(1)[4]["frame_index"] == 3


def test_observe_scores_frames_one_at_a_time_like_log_prob():
    """Observing real frames one at a time, past a window slide, scores each as
    `log_prob` of the whole video does."""
    model = cartpole_model()
    env = WorldFlowEnv(model, context_noise=False)
    gen = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (11, 16, 16, 3), dtype=torch.uint8, generator=gen)
    actions = torch.randint(0, 2, (1, 10), generator=gen)
    env.reset(seed=0, options={"context": frames[:2].numpy(), "actions": actions[0, :1].numpy()})
    surprises = [env.observe(frames[t].numpy(), int(actions[0, t - 1])) for t in range(2, 11)]
    lp = model.log_prob(frames[None], actions)
    expected = lp.bits_per_dim[0, 2:] - noise_floor_bits(model.config.noise_std)
    np.testing.assert_allclose(surprises, expected.detach().numpy(), rtol=1e-5)


def test_observe_continues_from_reality(model):
    real = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8).numpy()
    a, b = WorldFlowEnv(model), WorldFlowEnv(model)
    a.reset(seed=0)
    b.reset(seed=0)
    a.step(1)
    b.observe(real, 1)
    assert not np.array_equal(a.step(0)[0], b.step(0)[0])


# ---------------------------------------------------------------------- bad input
BAD_ACTIONS = [
    (2, WorldFlowError),
    (-1, WorldFlowError),
    (1.0, TypeError),
    (True, TypeError),
    ("1", TypeError),
    (np.array([1]), WorldFlowError),
    (None, TypeError),
]


def twins(model, **kwargs):
    a, b = WorldFlowEnv(model, **kwargs), WorldFlowEnv(model, **kwargs)
    assert_same([a.reset(seed=5) + (0,)], [b.reset(seed=5) + (0,)])
    return a, b


def assert_twins_agree(a, b, action):
    assert_same([a.step(action)], [b.step(action)])


@pytest.mark.parametrize("bad, error", BAD_ACTIONS)
def test_bad_discrete_action_raises_and_leaves_env_unchanged(model, bad, error):
    a, b = twins(model)
    a.step(0), b.step(0)
    with pytest.raises(error, match="action"):
        a.step(bad)
    with pytest.raises(error, match="action"):
        a.observe(np.zeros((16, 16, 3), np.uint8), bad)
    assert_twins_agree(a, b, 1)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.array([np.nan], np.float32), WorldFlowError),
        (np.array([2.5], np.float32), WorldFlowError),
        (np.array([[0.5]], np.float32), WorldFlowError),
        (np.array([True]), TypeError),
        (0.5, WorldFlowError),
    ],
)
def test_bad_continuous_action_raises_and_leaves_env_unchanged(pendulum, bad, error):
    a, b = twins(pendulum)
    with pytest.raises(error, match="action"):
        a.step(bad)
    assert_twins_agree(a, b, np.array([0.3], np.float32))


@pytest.mark.parametrize(
    "options, error, name",
    [
        ({"context": np.zeros((8, 8, 3), np.uint8)}, WorldFlowError, "context"),
        ({"context": np.zeros((16, 16, 4), np.uint8)}, WorldFlowError, "context"),
        ({"context": np.zeros((0, 16, 16, 3), np.uint8)}, WorldFlowError, "context"),
        ({"context": np.zeros((16, 16, 3), np.float32)}, TypeError, "context"),
        ({"context": [[0]]}, TypeError, "context"),
        (
            {"context": np.zeros((2, 16, 16, 3), np.uint8), "actions": np.array([0, 1])},
            WorldFlowError,
            "actions",
        ),
        (
            {"context": np.zeros((2, 16, 16, 3), np.uint8), "actions": np.array([5])},
            WorldFlowError,
            "actions",
        ),
        ({"actions": np.array([0])}, WorldFlowError, "actions"),
        ({"prompt": "a cart"}, WorldFlowError, "prompt"),
        ({"contex": None}, WorldFlowError, "options"),
    ],
)
def test_bad_reset_raises_and_leaves_env_unchanged(model, options, error, name):
    a, b = twins(model)
    a.step(1), b.step(1)
    with pytest.raises(error, match=name):
        a.reset(seed=99, options=options)  # must not reseed either
    assert_twins_agree(a, b, 0)
    assert_same([a.reset() + (0,)], [b.reset() + (0,)])  # np_random untouched too
    assert_twins_agree(a, b, 1)


def test_bad_observed_frame_raises_and_leaves_env_unchanged(model):
    a, b = twins(model)
    for frame, error in [(np.zeros((16, 16), np.uint8), WorldFlowError), (np.zeros((16, 16, 3)), TypeError)]:
        with pytest.raises(error, match="frame"):
            a.observe(frame, 0)
    assert_twins_agree(a, b, 0)


def test_step_and_observe_before_reset_raise_and_leave_env_unchanged(model):
    a, b = WorldFlowEnv(model), WorldFlowEnv(model)
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        a.step(0)
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        a.observe(np.zeros((16, 16, 3), np.uint8), 0)
    assert_same(rollout(a, 1, [0, 1]), rollout(b, 1, [0, 1]))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"reward": "likelihood"}, "reward"),
        ({"reward": 3}, "reward"),
        ({"sampler": "newton"}, "sampler"),
        ({"temperature": -1.0}, "temperature"),
        ({"denoise": "sharp"}, "denoise"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"render_mode": "human"}, "render_mode"),
        ({"model": 3}, "model"),
    ],
)
def test_bad_construction_raises_naming_the_argument(model, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        WorldFlowEnv(**{"model": model, **kwargs})


def test_mode_path_is_not_denoised_by_default(model):
    a = rollout(WorldFlowEnv(model, temperature=0.0), 0, [1, 0])
    b = rollout(WorldFlowEnv(model, temperature=0.0, denoise=False), 0, [1, 0])
    c = rollout(WorldFlowEnv(model, temperature=0.0, denoise=True), 0, [1, 0])
    assert np.array_equal(a[1][0], b[1][0])
    assert not np.array_equal(a[1][0], c[1][0])


@pytest.mark.parametrize("denoise", [False, "exact"])
def test_denoise_choices(model, denoise):
    a = rollout(WorldFlowEnv(model, denoise=denoise), 0, [1, 0])
    b = rollout(WorldFlowEnv(model), 0, [1, 0])
    assert a[1][4]["log_likelihood"] == b[1][4]["log_likelihood"]  # the same sample, cleaned otherwise
    assert not np.array_equal(a[1][0], b[1][0])


def test_task_reward_needs_heads():
    with pytest.raises(WorldFlowError, match="reward"):
        WorldFlowEnv(build(num_actions=2), reward="task")


def test_public_names():
    assert {"WorldFlowEnv", "WorldFlowVectorEnv", "WorldFlowTorchRLEnv"} <= set(wenvs.__all__)
    assert wenvs.WorldFlowTorchRLEnv.__name__ == "WorldFlowTorchRLEnv"
