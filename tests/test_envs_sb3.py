"""Stable-Baselines3 PPO trains in the dream (slow: about a minute on one CPU core)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_envs import cartpole_model

import worldflow.envs  # noqa: F401  (registers worldflow/Dream-v0)


@pytest.mark.slow
def test_ppo_cnn_policy_trains_2048_steps_in_the_dream():
    from stable_baselines3 import PPO

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # NatureCNN (CnnPolicy's extractor) needs frames of at least 36x36: a tiny model at
        # 40x40 with 8x8 patches (25 tokens a frame) keeps the dream as cheap as the 16x16 one.
        model = cartpole_model(terminate=-2.0, frame_size=(40, 40), patch_size=8)
        env = gym.make("worldflow/Dream-v0", model=model, reward="task", max_episode_steps=100)
        agent = PPO("CnnPolicy", env, n_steps=512, batch_size=64, n_epochs=4, seed=0, device="cpu")
        agent.learn(total_timesteps=2048)
        assert agent.num_timesteps == 2048
        obs, _ = env.reset(seed=0)
        action, _ = agent.predict(obs, deterministic=True)
        assert env.action_space.contains(int(np.asarray(action)))
    finally:
        torch.set_num_threads(threads)
