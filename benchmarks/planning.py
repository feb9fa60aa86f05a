"""Planning in the dream, acting in real CartPole: return and speed of every agent.

    python benchmarks/planning.py [--agents cem,mppi,policy,random] [--episodes 10] ...

1. Real CartPole-v1 return over `episodes` seeded episodes (seeds `seed`, `seed + 1`, ...;
   the same for every agent), mean and std, and seconds per real step (wall time of the
   whole loop: planning, observing the real frame, the real env's step and render).
   Agents: `cem` / `mppi` plan in the dream (`worldflow.agents.PlannerAgent`, the cheap
   path), `policy` is the linear policy learned in the dream (the model's shipped
   `policy.json`), `random` the uniform baseline.
   The planners' objective is `AgentConfig`'s default on CartPole: the learned heads and
   the pole's lean read from the imagined frames (`--pole_weight 0`: the heads alone).
2. The same planner with a perfect model (`cem_true_dynamics`, `--true_dynamics false` to
   skip): one round of `candidates` random `horizon`-step plans (what one round of CEM's
   standard Gaussian gives through the argmax), each stepped with CartPole's true dynamics
   from the real state and scored by the pole objective (sum of 1 - min((theta / 12 deg)^2, 1),
   -100 where the episode ends); the `top_k` best vote on the first action. The ceiling
   the planner reaches where the dream is exact; the gap to `cem` is the dream's.
3. Agreement of the cheap planning path with the full one: on `agreement_states` real
   states (frames of seeded heuristic-policy episodes), the fraction where CEM on the
   cheap path (one Jacobi pass a block) picks the same first action as CEM on the full
   path (Jacobi to convergence), from the same seed. Neither denoises: at temperature 0
   the library's default (`denoise="auto"`) does not.

Prints one JSON line; `--out` also writes it (e.g. benchmarks/results/planning.json).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

import worldflow as wf
from worldflow.agents import AgentConfig, make_agent, play
from worldflow.agents.config import PLANNER_POLE_WEIGHT
from worldflow.agents.objective import POLE_LIMIT
from worldflow.benchmarking import benchmark_main, machine
from worldflow.data import record_episode


@dataclass
class Args:
    model: str = "cartpole"
    agents: str = "cem,mppi,policy,random"
    episodes: int = 10
    seed: int = 1000  # episode i is reset with seed + i
    max_steps: int = 0  # 0: the environment's own limit (500)
    horizon: int = 8
    candidates: int = 16
    top_k: int = 3
    pole_weight: float = PLANNER_POLE_WEIGHT  # the planners' pole term (their default on CartPole)
    true_dynamics: bool = True  # also run the planner over CartPole's true dynamics
    agreement_states: int = 20
    threads: int = 2
    out: str = ""  # e.g. benchmarks/results/planning.json


def evaluate(model, args: Args, name: str) -> dict:
    cfg = AgentConfig(agent=name, **planner_fields(args))
    agent = make_agent(model, cfg)
    returns, steps, seconds = [], 0, 0.0
    for i in range(args.episodes):
        episode = play(agent, model, args.seed + i, args.max_steps or None, progress=True)
        returns.append(episode.ret)
        steps, seconds = steps + episode.steps, seconds + episode.seconds
        print(f"  {name} episode {i}: return {episode.ret:.0f}", file=sys.stderr, flush=True)
    return {
        "returns": returns,
        "mean_return": round(float(np.mean(returns)), 1),
        "std_return": round(float(np.std(returns)), 1),
        "seconds_per_step": round(seconds / max(steps, 1), 4),
    }


def cem_with_true_dynamics(args: Args) -> dict:
    """The planner's real return with CartPole's true dynamics in place of the dream."""
    from gymnasium.envs.classic_control import CartPoleEnv

    sim, returns = CartPoleEnv(), []
    env = gym.make("CartPole-v1")
    limit = args.max_steps or env.spec.max_episode_steps
    for i in range(args.episodes):
        env.reset(seed=args.seed + i)
        rng, ret, steps, done = np.random.default_rng(args.seed + i), 0.0, 0, False
        while not done and steps < limit:
            plans = rng.integers(0, 2, size=(args.candidates, args.horizon))
            scores = [pole_score(sim, env.unwrapped.state, plan) for plan in plans]
            elites = np.argsort(scores, kind="stable")[::-1][: args.top_k]
            action = int(np.bincount(plans[elites, 0], minlength=2).argmax())  # the elites' vote
            _, reward, terminated, truncated, _ = env.step(action)
            ret, steps, done = ret + reward, steps + 1, terminated or truncated
        returns.append(ret)
    env.close()
    return {"returns": returns, "mean_return": round(float(np.mean(returns)), 1),
            "std_return": round(float(np.std(returns)), 1)}


def pole_score(sim, state, plan) -> float:
    """Sum over `plan` of 1 - min((theta / 12 deg)^2, 1), -100 where the episode ends, from `state`."""
    sim.state, sim.steps_beyond_terminated, score = np.array(state, dtype=np.float64), None, 0.0
    for action in plan:
        (_, _, theta, _), _, terminated, _, _ = sim.step(int(action))
        score += 1.0 - min((theta / POLE_LIMIT) ** 2, 1.0)
        if terminated:
            return score - 100.0
    return score


def planner_fields(args: Args) -> dict:
    names = ("horizon", "candidates", "top_k", "pole_weight")
    return {name: getattr(args, name) for name in names}


def agreement(model, args: Args) -> dict:
    """Same first action, cheap vs full planning path, over real states."""
    cheap_cfg = AgentConfig(**planner_fields(args))
    full_cfg = AgentConfig(**planner_fields(args), jacobi_iterations=None)
    cheap, full = make_agent(model, cheap_cfg), make_agent(model, full_cfg)
    cfg, same, times = model.config, 0, {"cheap": 0.0, "full": 0.0}
    rng = np.random.default_rng(args.seed)
    for k in range(args.agreement_states):
        ep = record_episode(
            cfg.env_id, seed=args.seed + 10_000 + k, max_steps=60, frame_size=cfg.frame_size, crop=cfg.crop
        )
        t = int(rng.integers(0, len(ep["frames"]) - 1))
        frames, acts = ep["frames"][max(t - 3, 0) : t + 1], ep["actions"][max(t - 3, 0) : t]
        one_hot = torch.nn.functional.one_hot(acts.long(), 2).float()
        chosen = []
        for name, agent in (("cheap", cheap), ("full", full)):
            agent.state = agent.world.begin(frames, one_hot, seed=k)
            agent._generator.manual_seed(k)
            start = time.perf_counter()
            chosen.append(agent.act())
            times[name] += time.perf_counter() - start
        same += chosen[0] == chosen[1]
    n = args.agreement_states
    return {
        "agreement": round(same / n, 3),
        "states": n,
        "seconds_per_plan": {k: round(v / n, 3) for k, v in times.items()},
    }


def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    model = wf.WorldFlow.from_pretrained(args.model)
    results = {}
    for name in args.agents.split(","):
        results[name] = evaluate(model, args, name)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    out = {
        "benchmark": "planning",
        "model": args.model,
        "env": model.config.env_id,
        "episodes": args.episodes,
        "seeds": [args.seed, args.seed + args.episodes - 1],
        "planner": planner_fields(args),
        **results,
    }
    if args.true_dynamics:
        out["cem_true_dynamics"] = cem_with_true_dynamics(args)
        print(f"cem_true_dynamics: {out['cem_true_dynamics']}", file=sys.stderr, flush=True)
    if args.agreement_states:
        out["cheap_vs_full"] = agreement(model, args)
    return {**out, **machine()}


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
