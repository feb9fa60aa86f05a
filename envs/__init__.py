"""Environments over worldflow world models (installed as `worldflow.envs`).

Importing this package registers `worldflow/Dream-v0` with Gymnasium:

    import gymnasium as gym, worldflow.envs
    env = gym.make("worldflow/Dream-v0", model="cartpole", reward="log_likelihood")
    envs = gym.make_vec("worldflow/Dream-v0", num_envs=8, vectorization_mode="vector_entry_point",
                        model="cartpole")

`WorldFlowTorchRLEnv` is the same world as a TorchRL `EnvBase` (state in the TensorDict).
"""

from gymnasium.envs.registration import register, registry

from .dream import WorldFlowEnv
from .vector import WorldFlowVectorEnv
from .world import DreamWorld, noise_floor_bits

__all__ = ["DreamWorld", "WorldFlowEnv", "WorldFlowTorchRLEnv", "WorldFlowVectorEnv", "noise_floor_bits"]


def __getattr__(name: str):
    if name == "WorldFlowTorchRLEnv":  # imported on first use: TorchRL takes a second to import
        from .torchrl_env import WorldFlowTorchRLEnv

        return WorldFlowTorchRLEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "worldflow/Dream-v0" not in registry:
    register(
        id="worldflow/Dream-v0",
        entry_point="worldflow.envs.dream:WorldFlowEnv",
        vector_entry_point="worldflow.envs.vector:WorldFlowVectorEnv",
    )
