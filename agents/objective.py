"""`DreamObjective`: the planners' reward, a TorchRL transform over the dream's outputs.

The TorchRL world reports, for each imagined transition, the learned heads' task reward
and termination logit and the frame's surprise; this transform combines them into the
`reward` the planners sum (`AgentConfig`'s docstring has the formula).
"""

from __future__ import annotations

from tensordict import TensorDictBase
from torchrl.envs import Transform

from worldflow.errors import WorldFlowError


class DreamObjective(Transform):
    """reward = task_reward - termination_weight * termination_logit + likelihood_weight * surprise."""

    def __init__(self, termination_weight: float = 1.0, likelihood_weight: float = 0.0):
        super().__init__()
        self.termination_weight = float(termination_weight)
        self.likelihood_weight = float(likelihood_weight)

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        if "task_reward" not in next_tensordict.keys():
            raise WorldFlowError(
                "model: the planning objective needs a model with task heads (config.task_heads)"
            )
        reward = next_tensordict.get("task_reward") - self.termination_weight * next_tensordict.get(
            "termination_logit"
        )
        if self.likelihood_weight:
            reward = reward + self.likelihood_weight * next_tensordict.get("surprise")
        next_tensordict.set("reward", reward.unsqueeze(-1).to(next_tensordict.get("reward").dtype))
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return tensordict_reset
