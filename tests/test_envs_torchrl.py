"""worldflow.envs.WorldFlowTorchRLEnv: specs, rollouts, batching, SerialEnv parity, CEM planning."""

import pytest
import torch
import torch.nn.functional as F
from conftest import build
from tensordict import TensorDict
from test_envs import cartpole_model
from torchrl.envs import SerialEnv
from torchrl.envs.utils import check_env_specs, step_mdp
from torchrl.modules.planners import CEMPlanner

from worldflow.envs import WorldFlowTorchRLEnv
from worldflow.envs.torchrl_env import ArgmaxOneHot
from worldflow.errors import WorldFlowError


@pytest.fixture(scope="module")
def model():
    return cartpole_model(max_frames=4, context_frames=2)  # a small window: light state buffers


@pytest.fixture(scope="module")
def pendulum():
    model = build(action_dim=1, env_id="Pendulum-v1", seed=3, max_frames=4, context_frames=2)
    model.start_frames = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    return model


class Actions:
    """A policy replaying fixed actions (*batch, T, A)."""

    def __init__(self, actions):
        self.actions, self.t = actions, 0

    def __call__(self, td):
        td.set("action", self.actions[..., self.t, :])
        self.t += 1
        return td


@pytest.mark.parametrize("batch_size", [(), (4,)])
def test_check_env_specs(model, batch_size):
    env = WorldFlowTorchRLEnv(model, batch_size=batch_size, seed=0)
    assert not env.batch_locked
    check_env_specs(env)
    assert isinstance(env.action_spec, ArgmaxOneHot) and env.action_spec.shape == (*batch_size, 2)


def test_check_env_specs_continuous_and_with_max_steps(pendulum):
    env = WorldFlowTorchRLEnv(pendulum, batch_size=(2,), seed=0, max_episode_steps=2, reward="surprise")
    check_env_specs(env)
    low, high = env.action_spec.space.low, env.action_spec.space.high
    assert low.shape == (2, 1) and (low == -2).all() and (high == 2).all()


@pytest.mark.parametrize("batch_size", [(), (4,)])
def test_rollout_of_100_steps(model, batch_size):
    env = WorldFlowTorchRLEnv(model, batch_size=batch_size, seed=0)
    td = env.rollout(100, break_when_any_done=False)
    assert td.batch_size == (*batch_size, 100)
    assert (
        td["next", "pixels"].shape == (*batch_size, 100, 16, 16, 3)
        and td["next", "pixels"].dtype == torch.uint8
    )
    assert td["next", "reward"].shape == (*batch_size, 100, 1)
    frames = td["next", "state", "frames"]
    assert frames.max() == model.config.max_frames and frames.min() >= model.config.context_frames
    assert (td["next", "state", "frame_index"][..., -1] == 101).all()
    assert torch.isfinite(td["next", "log_likelihood"]).all()


def test_state_in_the_tensordict_determines_the_step(model):
    env = WorldFlowTorchRLEnv(model, seed=0)
    td = env.reset()
    td["action"] = F.one_hot(torch.tensor(1), 2).float()
    a = env.step(td.clone())["next"]
    b = env.step(td.clone())["next"]  # stepping the same state again: same frame
    assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["reward"], b["reward"])
    many = env.step(td.expand(3).clone())["next"]  # an expanded state: the same world, thrice
    assert (many["pixels"] == a["pixels"]).all() and torch.allclose(many["reward"], a["reward"].expand(3, 1))


@pytest.fixture(scope="module")
def short_window_model():
    """An attention window of 4 frames: the 6-step episodes slide it."""
    return cartpole_model(max_frames=4, context_frames=2)


@pytest.mark.parametrize("kind", ["model", "short_window_model"])
def test_serial_env_of_two_matches_the_batched_env_stepwise(kind, request):
    model = request.getfixturevalue(kind)
    batched = WorldFlowTorchRLEnv(model, batch_size=(2,), max_episode_steps=6)
    serial = SerialEnv(2, lambda: WorldFlowTorchRLEnv(model, max_episode_steps=6))
    batched.set_seed(3)
    serial.set_seed(3)
    actions = F.one_hot(torch.randint(0, 2, (2, 14), generator=torch.Generator().manual_seed(0)), 2).float()
    rb = batched.rollout(14, Actions(actions), break_when_any_done=False)
    rs = serial.rollout(14, Actions(actions), break_when_any_done=False)
    serial.close()
    assert torch.equal(rb["pixels"][:, 0], rs["pixels"][:, 0])  # the same start frames
    assert torch.equal(rb["next", "truncated"], rs["next", "truncated"])
    assert torch.equal(rb["next", "state", "noise_seed"], rs["next", "state", "noise_seed"])
    assert (rb["next", "pixels"].int() - rs["next", "pixels"].int()).abs().max() <= 2  # float rounding only
    torch.testing.assert_close(rb["next", "reward"], rs["next", "reward"], rtol=1e-4, atol=0.05)


def test_cem_planner_runs(model, pendulum):
    for m in (model, pendulum):
        env = WorldFlowTorchRLEnv(m, seed=0)
        planner = CEMPlanner(env, planning_horizon=3, optim_steps=2, num_candidates=6, top_k=2)
        td = env.reset(env.reset().expand(2).clone())  # plan for two states at once
        out = planner(td)
        assert out["action"].shape == (2, *env.action_spec.shape)
        assert env.action_spec.is_in(out["action"])


def test_cem_planner_action_follows_the_state(model):
    # Reward 1 when the action equals the parity of the frame it produces: the best first
    # action alternates with the state's frame index, and only the state tells which.
    def parity(obs, action, info):
        return float(action == info["frame_index"] % 2)

    env = WorldFlowTorchRLEnv(model, seed=0, reward=parity, temperature=0.0)
    planner = CEMPlanner(env, planning_horizon=2, optim_steps=3, num_candidates=16, top_k=4)
    torch.manual_seed(0)  # CEM's own Gaussian draws
    td = env.reset()
    chosen = []
    for _ in range(4):
        td = planner(td)
        chosen.append((int(td["state", "frame_index"]) % 2, int(td["action"].argmax())))
        td = step_mdp(env.step(td))
    assert all(action == frames % 2 for frames, action in chosen)
    assert {a for _, a in chosen} == {0, 1}


def test_bad_actions_raise_and_change_nothing(model, pendulum):
    env = WorldFlowTorchRLEnv(model, seed=0)
    td = env.reset()
    before = td.clone()
    for bad, error in [
        (torch.tensor([0.5, 0.5]), WorldFlowError),
        (torch.tensor([1.0, 1.0]), WorldFlowError),
        (torch.tensor([float("nan"), 1.0]), WorldFlowError),
        (torch.tensor([1.0, 0.0, 0.0]), WorldFlowError),
    ]:
        td["action"] = bad
        with pytest.raises(error, match="action"):
            env.step(td)
    assert (td.exclude("action") == before).all()
    td["action"] = torch.tensor([0.0, 1.0])
    assert torch.equal(
        env.step(td.clone())["next", "pixels"], env.step(before.set("action", td["action"]))["next", "pixels"]
    )

    env = WorldFlowTorchRLEnv(pendulum, seed=0)
    td = env.reset()
    for bad, error in [
        (torch.tensor([3.0]), WorldFlowError),
        (torch.tensor([float("nan")]), WorldFlowError),
        (torch.tensor([1]), TypeError),
    ]:
        td["action"] = bad
        with pytest.raises(error, match="action"):
            env.step(td)


def test_partial_reset_keeps_the_other_worlds(model):
    env = WorldFlowTorchRLEnv(model, batch_size=(3,), seed=0)
    td = env.reset()
    td["action"] = F.one_hot(torch.tensor([0, 1, 0]), 2).float()
    td = step_mdp(env.step(td))
    kept = td.clone()
    td.set("_reset", torch.tensor([[False], [True], [False]]))
    td = env.reset(td)
    assert td["state", "frame_index"].tolist() == [2, 1, 2]
    assert torch.equal(td["state", "keys"][0], kept["state", "keys"][0])
    td["action"] = F.one_hot(torch.tensor([1, 1, 1]), 2).float()
    nxt = env.step(td)["next"]  # three layouts, lined up into passes
    assert nxt["state", "frame_index"].tolist() == [3, 2, 3]


def test_reset_with_a_tensordict_of_another_batch_shape(model):
    env = WorldFlowTorchRLEnv(model, seed=0)
    td = env.reset(TensorDict({}, batch_size=[5]))
    assert td["pixels"].shape == (5, 16, 16, 3) and td["state", "noise_seed"].unique().numel() == 5
