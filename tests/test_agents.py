"""worldflow.agents: config checks, real frames into the world, the objective, the agents' loop."""

import math

import numpy as np
import pytest
import torch
from conftest import build
from tensordict import TensorDict
from test_envs import cartpole_model

import worldflow as wf
from worldflow.agents import AgentConfig, DreamObjective, LinearPolicy, RandomAgent, make_agent, play
from worldflow.agents.config import PLANNER_POLE_WEIGHT
from worldflow.agents.episodes import make_real_env
from worldflow.agents.planning import planning_env
from worldflow.envs import WorldFlowTorchRLEnv
from worldflow.errors import WorldFlowError


@pytest.fixture(scope="module")
def model():
    return cartpole_model(max_frames=4, context_frames=2)


@pytest.mark.parametrize(
    "field, value",
    [
        ("agent", "ppo"),
        ("horizon", 0),
        ("candidates", 2.5),
        ("top_k", 99),
        ("optim_steps", -1),
        ("jacobi_iterations", 0),
        ("termination_weight", math.nan),
        ("likelihood_weight", "high"),
        ("temperature", -1.0),
        ("denoise", "yes"),
        ("pole_weight", math.inf),
        ("seed", None),
    ],
)
def test_bad_agent_config_names_the_field(field, value):
    with pytest.raises(WorldFlowError, match=field):
        AgentConfig(**{field: value})


def test_observing_frames_one_by_one_equals_beginning_from_all_of_them(model):
    env = WorldFlowTorchRLEnv(model, context_noise=False, seed=0)
    gen = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (3, *model.config.frame_size, 3), dtype=torch.uint8, generator=gen)
    one_hot = torch.eye(2)[[1, 0]]  # actions after frames 0 and 1
    whole = env.begin(frames, one_hot[None].expand(1, 2, 2)[0], seed=7)
    td = env.begin(frames[0], seed=7)
    for t in (1, 2):
        td = env.observe(td, frames[t], one_hot[t - 1])
    n = whole["state", "frames"].item() * model.config.tokens_per_frame
    assert td["state", "frames"] == whole["state", "frames"] and td["state", "frame_index"] == 3
    keys, expected = td["state", "keys"][..., :n, :], whole["state", "keys"][..., :n, :]
    torch.testing.assert_close(keys, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(td["state", "tokens"], whole["state", "tokens"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(td["log_likelihood"], whole["log_likelihood"], atol=1e-2, rtol=1e-5)
    assert torch.equal(td["pixels"], frames[2])


def test_observe_rejects_bad_input_and_keeps_the_state(model):
    env = WorldFlowTorchRLEnv(model, seed=0)
    td = env.begin(model.start_frames[0], seed=1)
    before = td.clone()
    with pytest.raises(WorldFlowError, match="frames"):
        env.observe(td, model.start_frames[:2], torch.tensor([1.0, 0.0]))
    with pytest.raises(WorldFlowError, match="action"):
        env.observe(td, model.start_frames[1], torch.tensor([1.0, 1.0]))
    assert (td == before).all()


def test_objective_is_task_reward_minus_weighted_logit_plus_weighted_surprise(model):
    cfg = AgentConfig(termination_weight=0.7, likelihood_weight=-0.3, pole_weight=0.0)  # lean: tested below
    env = planning_env(model, cfg)
    assert isinstance(env.transform, DreamObjective)
    td = env.base_env.begin(model.start_frames[:2, None], seed=0)
    td.set("action", torch.eye(2)[[0, 1]])
    nxt = env.step(td)["next"]
    expected = nxt["task_reward"] - 0.7 * nxt["termination_logit"] - 0.3 * nxt["surprise"]
    torch.testing.assert_close(nxt["reward"].squeeze(-1), expected)
    assert nxt["termination_logit"].abs().sum() > 0  # the heads really ran


def test_pole_lean_reads_the_real_pole_angle():
    """(theta / 12 deg)^2 of real CartPole renders posed at known angles; 1 where no pole is seen."""
    from worldflow.agents.objective import pole_lean
    from worldflow.data import preprocess_frames
    from worldflow.data.preprocess import CARTPOLE_CROP, CARTPOLE_FRAME_SIZE

    env = make_real_env("CartPole-v1")
    env.reset(seed=0)
    degrees = [0.0, 3.0, -6.0, 9.0, 30.0]
    frames = []
    for d in degrees:
        env.unwrapped.state = np.array([0.3, 0.0, math.radians(d), 0.0])
        frames.append(preprocess_frames(env.render(), CARTPOLE_FRAME_SIZE, CARTPOLE_CROP))
    env.close()
    frames.append(torch.full_like(frames[0], 255))  # an empty picture: no pole
    lean = pole_lean(torch.stack(frames), CARTPOLE_FRAME_SIZE, CARTPOLE_CROP)
    expected = torch.tensor([min((d / 12) ** 2, 1.0) for d in degrees] + [1.0])
    torch.testing.assert_close(lean, expected, atol=0.08, rtol=0.0)


def test_pole_term_is_subtracted_and_only_for_cartpole(model):
    from worldflow.agents.objective import pole_lean
    from worldflow.data import model_preprocessing

    pendulum = build(action_dim=1, env_id="Pendulum-v1", task_heads=True)
    with pytest.raises(WorldFlowError, match="pole_weight"):
        planning_env(pendulum, AgentConfig(pole_weight=1.0))
    assert planning_env(pendulum, AgentConfig()).transform.pole_weight == 0.0  # the default: off there

    # the default on CartPole: on for the planners, off for the policy's dream (its shipped objective)
    assert planning_env(model, AgentConfig(agent="mppi")).transform.pole_weight == PLANNER_POLE_WEIGHT
    assert planning_env(model, AgentConfig(agent="policy")).transform.pole_weight == 0.0
    assert planning_env(model, AgentConfig(pole_weight=0.0)).transform.pole_weight == 0.0

    steps = {}
    for weight in (0.0, 3.0):
        env = planning_env(model, AgentConfig(pole_weight=weight))
        td = env.base_env.begin(model.start_frames[:2, None], seed=0)
        td.set("action", torch.eye(2)[[0, 1]])
        steps[weight] = env.step(td)["next"]
    lean = pole_lean(steps[3.0]["pixels"], *model_preprocessing(model.config))
    assert torch.equal(steps[0.0]["pixels"], steps[3.0]["pixels"])
    expected = steps[0.0]["reward"].squeeze(-1) - 3.0 * lean
    torch.testing.assert_close(steps[3.0]["reward"].squeeze(-1), expected)


def test_planning_rollout_scores_as_torchrl_rollout_and_keeps_the_start():
    """The planners' rollout (shared histories stepped once, no world state stacked) gives
    TorchRL's own rollout's actions, pixels and rewards up to each candidate's end (up to
    float32 rounding of the smaller batches), steps one world per distinct action prefix,
    and leaves its start TensorDict as it was."""
    from torchrl.envs import TransformedEnv

    model = cartpole_model(terminate=0.0, max_frames=4, context_frames=2)  # some candidates end early
    env = planning_env(model, AgentConfig())
    start = env.base_env.begin(model.start_frames[:2], seed=0).unsqueeze(0).expand(8).clone()
    before = start.clone()
    actions = torch.eye(2)[torch.randint(2, (8, 5), generator=torch.Generator().manual_seed(0))]
    stepped, world_step = [], env.base_env._step

    def counting(td):
        stepped.append(td.numel())
        return world_step(td)

    def rollout(run):
        steps = iter(range(5))
        stepped.clear()
        td = run(env, 5, lambda td: td.set("action", actions[:, next(steps)]), tensordict=start.clone(),
                 auto_reset=False, break_when_any_done=False)
        done = td["next", "done"].squeeze(-1).long()
        return td, (done.cumsum(-1) - done) == 0, list(stepped)  # the steps up to and with the end

    env.base_env._step = counting
    ours, alive, ours_stepped = rollout(type(env).rollout)
    theirs, alive_theirs, theirs_stepped = rollout(TransformedEnv.rollout)
    prefixes = [len(torch.unique(actions[:, : t + 1].flatten(1), dim=0)) for t in range(5)]
    assert ours_stepped == prefixes and prefixes[0] < prefixes[-1] <= 8 and theirs_stepped == [8] * 5
    assert "state" not in ours.keys() and "state" in theirs.keys()
    assert torch.equal(alive, alive_theirs) and alive.any() and not alive.all()
    assert torch.equal(ours["action"], theirs["action"])
    pixels = ours["next", "pixels"][alive].int(), theirs["next", "pixels"][alive].int()
    assert (pixels[0] - pixels[1]).abs().max() <= 2
    rewards = ours["next", "reward"][alive], theirs["next", "reward"][alive]
    torch.testing.assert_close(*rewards, rtol=1e-4, atol=1e-5)
    assert (start == before).all()


def test_shared_starts_groups_candidates_equal_to_their_first():
    from worldflow.agents.planning import shared_starts

    td = TensorDict({"a": torch.tensor([[1, 1, 2], [3, 3, 3]]), "b": torch.zeros(2, 3, 4)}, [2, 3])
    assert shared_starts(td).tolist() == [0, 0, 2, 3, 3, 3]
    td["b"][1, 2, 0] = 1.0
    assert shared_starts(td).tolist() == [0, 0, 2, 3, 3, 5]


def test_stepping_twice_from_one_state_gives_the_same_frame_and_leaves_it_intact(model):
    env = planning_env(model, AgentConfig())
    td = env.base_env.begin(model.start_frames[:3], seed=2).unsqueeze(0).expand(3).clone()
    td.set("action", torch.eye(2)[[0, 1, 0]])
    before = td.clone()
    first = env.step(td.clone())["next"]
    second = env.step(td.clone())["next"]
    assert (td == before).all()
    assert torch.equal(first["pixels"], second["pixels"])
    assert torch.equal(first["state", "keys"], second["state", "keys"])


def test_consuming_state_steps_alike_in_the_given_buffers(model):
    """Within `consuming_state` a step writes the next KV cache into the state it was given
    (no copy) and computes the same frame and cache as a step that copies."""
    env = planning_env(model, AgentConfig())
    world = env.base_env
    td = world.begin(model.start_frames[:3], seed=2).unsqueeze(0).expand(3).clone()
    td.set("action", torch.eye(2)[[0, 1, 0]])
    kept = env.step(td.clone())["next"]
    given = td.clone()
    with world.consuming_state():
        consumed = env.step(given)["next"]
    assert not world._consuming
    assert torch.equal(kept["pixels"], consumed["pixels"])
    assert torch.equal(kept["state", "keys"], consumed["state", "keys"])
    assert consumed["state", "keys"].data_ptr() == given["state", "keys"].data_ptr()
    assert kept["state", "keys"].data_ptr() != td["state", "keys"].data_ptr()


@pytest.mark.parametrize("agent", ["cem", "mppi"])
def test_planner_agent_acts_observes_and_is_seeded(model, agent):
    cfg = AgentConfig(agent=agent, horizon=2, candidates=4, top_k=2, seed=3)
    actions = []
    for _ in range(2):
        planner = make_agent(model, cfg)
        planner.reset(model.start_frames[0].numpy())
        chosen = []
        for t in range(3):
            a = planner.act()
            assert a in (0, 1)
            surprise = planner.observe(model.start_frames[t + 1].numpy(), a)
            assert math.isfinite(surprise)
            chosen.append(a)
        assert planner.state["state", "frame_index"] == 4
        actions.append(chosen)
    assert actions[0] == actions[1]


@pytest.mark.parametrize("agent", ["cem", "mppi"])
def test_planner_follows_the_objective(model, agent):
    """Over a one-step horizon the planner takes the action whose imagined step the
    objective scores higher (candidates share the dream's noise: only the action differs);
    objective values in the hundreds, too, where exp(return) overflows float32."""
    cfg = AgentConfig(agent=agent, horizon=1, candidates=8, top_k=2, termination_weight=500.0)
    planner = make_agent(model, cfg)
    td = planner.world.begin(model.start_frames[0], seed=0)
    rewards = []
    for a in (0, 1):
        step = td.clone()
        step.set("action", torch.eye(2)[a])
        rewards.append(float(planner.env.step(step)["next", "reward"]))
    assert rewards[0] != rewards[1] and max(map(abs, rewards)) > 100
    planner.reset(model.start_frames[0].numpy(), seed=0)
    assert planner.act() == int(np.argmax(rewards))


def test_linear_policy_acts_by_the_sign_and_round_trips(tmp_path):
    policy = LinearPolicy(weights=[0.0, 1.0, 0.0, 0.5], bias=-0.1)
    feats = np.array([[0, 0.2, 0, 0], [0, -0.2, 0, 0], [0, 0.0, 0, 0.1]], dtype=np.float32)
    assert policy.act(feats).tolist() == [1, 0, 0]
    policy.save(tmp_path / "p.json")
    assert LinearPolicy.load(tmp_path / "p.json") == policy
    (tmp_path / "bad.json").write_text('{"weights": [1, 2], "bias": 0}')
    with pytest.raises(WorldFlowError, match="policy"):
        LinearPolicy.load(tmp_path / "bad.json")


def test_policy_agent_needs_a_cartpole_model():
    pendulum = build(action_dim=1, env_id="Pendulum-v1")
    with pytest.raises(WorldFlowError, match="agent"):
        make_agent(pendulum, AgentConfig(agent="policy"), policy=LinearPolicy([0.0] * 4, 0.0))


def test_random_agent_in_real_cartpole_gets_the_real_return():
    model = wf.WorldFlow.from_pretrained("cartpole")
    agent = make_agent(model, AgentConfig(agent="random", seed=0))
    assert isinstance(agent, RandomAgent)
    episode = play(agent, model, seed=5, record=True, progress=False)
    assert episode.ret == episode.steps and 5 <= episode.steps < 200
    assert len(episode.frames) == episode.steps + 1
    assert episode.frames[0].shape == (*model.config.frame_size, 3)
    again = play(make_agent(model, AgentConfig(agent="random", seed=0)), model, seed=5, progress=False)
    assert again.ret == episode.ret


@pytest.mark.slow  # about ten minutes on two cores: three planned episodes of up to 200 real steps
def test_cem_in_the_dream_beats_random_five_times_in_real_cartpole():
    model = wf.WorldFlow.from_pretrained("cartpole")
    seeds = (2000, 2001, 2002)
    returns = {}
    for name in ("cem", "random"):
        agent = make_agent(model, AgentConfig(agent=name, seed=0))
        episodes = [play(agent, model, seed=s, max_steps=200, progress=False) for s in seeds]
        returns[name] = np.mean([e.ret for e in episodes])
    assert returns["cem"] >= 5 * returns["random"], returns


@pytest.mark.slow  # about two minutes: three generations of the cross-entropy search in the dream
def test_policy_trained_in_the_dream_alone_balances_in_the_real_env():
    from worldflow.agents.imagined import ImaginationConfig, train_policy

    model = wf.WorldFlow.from_pretrained("cartpole")
    cfg = ImaginationConfig(generations=3, population=8, elite=2, starts=6, steps=40, seed=3)
    policy = train_policy(model, cfg, progress=False)
    assert policy.trained["config"]["generations"] == 3
    assert len(policy.trained["best_dream_return_per_generation"]) == 3
    agent = make_agent(model, AgentConfig(agent="policy"), policy)
    random = make_agent(model, AgentConfig(agent="random", seed=0))
    seeds = (2000, 2001, 2002)
    real = np.mean([play(agent, model, seed=s, max_steps=200, progress=False).ret for s in seeds])
    baseline = np.mean([play(random, model, seed=s, max_steps=200, progress=False).ret for s in seeds])
    assert real > 2 * baseline, (real, baseline)


def test_dream_rollouts_start_from_the_real_moments_and_stop_counting_at_termination():
    from worldflow.agents.imagined import ImaginationConfig, cartpole_features, dream_rollouts, start_moments

    model = wf.WorldFlow.from_pretrained("cartpole")
    starts = start_moments(model, ImaginationConfig(starts=3, seed=1))
    chosen = []

    def act(features):
        chosen.append(features.copy())
        return np.arange(len(features)) % 2  # rows alternate left and right pushes

    features, rewards, alive = dream_rollouts(model, act, starts, repeat=2, steps=4,
                                              agent=AgentConfig(agent="policy"))
    assert features.shape == (6, 4, 4) and rewards.shape == alive.shape == (6, 4)
    real = cartpole_features(starts[0][:, 0].numpy(), starts[0][:, 1].numpy())
    np.testing.assert_array_equal(features[:, 0], np.concatenate([real, real]))  # row r * 3 + i: start i
    np.testing.assert_array_equal(chosen[0], features[:, 0])
    assert alive[:, 0].all() and (np.diff(alive.astype(int), axis=1) <= 0).all()  # once ended, stays ended
    assert np.isfinite(rewards).all()
