"""worldflow.envs.WorldFlowVectorEnv: batched worlds, next-step autoreset, grouping, bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import build
from test_envs import cartpole_model

import worldflow.envs  # noqa: F401  (registers worldflow/Dream-v0)
from worldflow.envs import WorldFlowEnv, WorldFlowVectorEnv
from worldflow.errors import WorldFlowError
from worldflow.video_state import VideoState


@pytest.fixture(scope="module")
def model():
    return cartpole_model()


def make_vec(model, num_envs=4, **kwargs):
    return gym.make_vec(
        "worldflow/Dream-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        model=model,
        **kwargs,
    )


def test_make_vec_uses_the_vector_entry_point(model):
    envs = make_vec(model, num_envs=8)
    assert isinstance(envs.unwrapped, WorldFlowVectorEnv)
    assert envs.observation_space.shape == (8, 16, 16, 3) and envs.single_action_space == gym.spaces.Discrete(
        2
    )
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, info = envs.reset(seed=0)
    assert obs.shape == (8, 16, 16, 3) and obs.dtype == np.uint8 and info["_surprise"].all()
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert rewards.shape == (8,) and terminated.dtype == bool and truncated.shape == (8,)
    assert len(envs.unwrapped._groups) == 1  # one batched pass for all worlds
    assert (info["frame_index"] == 1).all() and len(envs.render()) == 8


def test_world_i_dreams_what_a_single_env_seeded_s_plus_i_dreams(model):
    envs = make_vec(model, num_envs=3)
    actions = np.random.default_rng(0).integers(0, 2, (6, 3))
    obs, _ = envs.reset(seed=10)
    vec = [obs]
    for a in actions:
        vec.append(envs.step(a)[0])
    for i in range(3):
        env = WorldFlowEnv(model)
        single = [env.reset(seed=10 + i)[0]] + [env.step(a)[0] for a in actions[:, i]]
        assert np.array_equal(vec[0][i], single[0])
        for v, s in zip(vec[1:], single[1:]):  # batched float rounding only
            assert np.abs(v[i].astype(int) - s.astype(int)).max() <= 2


def test_next_step_autoreset(model):
    envs = make_vec(model, num_envs=2, max_episode_steps=3)
    first, _ = envs.reset(seed=0)
    for t in range(3):
        obs, rewards, terminated, truncated, info = envs.step(np.array([0, 1]))
        assert not terminated.any() and truncated.tolist() == [t == 2] * 2
    obs, rewards, terminated, truncated, info = envs.step(np.array([1, 1]))  # the action is ignored
    assert rewards.tolist() == [0.0, 0.0] and not terminated.any() and not truncated.any()
    assert (info["frame_index"] == 0).all() and (info["jacobi_iterations"] == 0).all()
    starts = {f.tobytes() for f in model.start_frames.numpy()}
    assert all(o.tobytes() in starts for o in obs)
    obs, rewards, terminated, truncated, info = envs.step(np.array([0, 0]))
    assert (info["frame_index"] == 1).all() and (rewards < 0).all()


def test_terminated_worlds_restart_alone_and_groups_merge_again():
    model = cartpole_model()
    envs = WorldFlowVectorEnv(3, model, max_episode_steps=None)
    envs.reset(seed=0)
    envs.step(np.array([0, 0, 0]))
    envs._autoreset[1] = True  # as if world 1 had terminated
    obs, rewards, *_ = envs.step(np.array([0, 0, 0]))
    assert rewards[1] == 0.0 and rewards[0] != 0.0
    assert sorted(len(idx) for idx, _ in envs._groups) == [1, 2]
    cfg = model.config
    for _ in range(2 * cfg.max_frames):  # the windows line up once the old ones slide
        envs.step(np.array([1, 0, 1]))
    assert len(envs._groups) == 1
    assert sorted(envs._groups[0][0].tolist()) == [0, 1, 2]


def test_heads_terminate_worlds():
    envs = WorldFlowVectorEnv(2, cartpole_model(terminate=20.0))
    envs.reset(seed=0)
    assert envs.step(np.array([0, 1]))[2].all()


def test_reset_options_and_partial_reset(model):
    envs = WorldFlowVectorEnv(2, model, context_noise=False)
    context = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8).numpy()
    obs, info = envs.reset(seed=0, options={"context": context, "actions": np.array([[0, 1], [1, 1]])})
    assert np.array_equal(obs, context[:, -1]) and (info["frame_index"] == 2).all()
    single = WorldFlowEnv(model, context_noise=False)
    _, info0 = single.reset(seed=0, options={"context": context[0], "actions": np.array([0, 1])})
    assert info["log_likelihood"][0] == pytest.approx(info0["log_likelihood"], rel=1e-5)
    envs.step(np.array([0, 0]))
    mask = np.array([False, True])
    obs, info = envs.reset(options={"reset_mask": mask, "context": context[:, :1]})
    assert info["_frame_index"].tolist() == [False, True] and np.array_equal(obs[1], context[1, 0])
    assert envs._frames.tolist() == [4, 1]


def test_bad_actions_raise_and_leave_the_worlds_unchanged(model):
    a, b = WorldFlowVectorEnv(3, model), WorldFlowVectorEnv(3, model)
    a.reset(seed=1), b.reset(seed=1)
    for bad, error in [
        (np.array([0, 1]), WorldFlowError),
        (np.array([0, 1, 2]), WorldFlowError),
        (np.array([0.0, 1.0, 0.0]), TypeError),
        (1, WorldFlowError),
    ]:
        with pytest.raises(error, match="actions"):
            a.step(bad)
    for bad, name in [
        ({"context": np.zeros((2, 16, 16, 3), np.uint8)}, "context"),
        ({"reset_mask": [1]}, "reset_mask"),
    ]:
        with pytest.raises(WorldFlowError, match=name):
            a.reset(seed=5, options=bad)
    with pytest.raises(WorldFlowError, match="seed"):
        a.reset(seed=[1, 2])
    ra, rb = a.step(np.array([1, 0, 1])), b.step(np.array([1, 0, 1]))
    assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1])
    assert all(np.array_equal(ra[4][k], rb[4][k]) for k in ra[4])


def test_step_before_reset_raises(model):
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        WorldFlowVectorEnv(2, model).step(np.array([0, 0]))


def test_video_state_cat_inverts_select(model):
    with torch.no_grad():
        state = model.start(4, context=torch.randint(0, 256, (4, 2, 16, 16, 3), dtype=torch.uint8), seed=0)
        model.step(state, torch.tensor([0, 1, 0, 1]))
    parts = [state.select([2, 0]), state.select([1]), state.select([3])]
    joined = VideoState.cat(parts)
    order = [2, 0, 1, 3]
    ref = state.select(order)
    assert joined.cache.length == state.cache.length and joined.frames_in_window == 3
    for x, y in [
        (joined.cache.keys, ref.cache.keys),
        (joined.tokens, ref.tokens),
        (joined.cond, ref.cond),
        (joined.recent, ref.recent),
        *zip(joined.prev_affine, ref.prev_affine),
    ]:
        assert torch.equal(x, y)
    other = build(num_actions=2).start(1, context=torch.zeros(1, 1, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="states"):
        VideoState.cat([state, other])
