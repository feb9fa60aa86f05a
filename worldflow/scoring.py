"""Per-frame anomaly scores of recorded video: surprise, and time that stood still.

For each frame t of a video (B, T), from the window of W = `max_frames` frames that ends at
it (frames from W on have W - 1 frames of history, earlier ones what there is):

- `bits_per_dim`: the exact surprise, -log2 p(frame t | history, actions, prompt) / D.
- `prediction_error`: mean squared error (8-bit pixel units) of frame t against the model's
  temperature-0 prediction of it from the same history (the next-frame distribution's
  centre, decoded by Jacobi iteration; not denoised, see `worldflow.generation`).
- `copy_error`: the same against frame t - 1, copy-last's prediction.
- `stillness = log(prediction_error + FLOOR) - log(copy_error + FLOOR)`: positive where
  "nothing moved" explains the frame better than the model's own prediction of motion. A
  repeated frame is likely by nature (its bits/dim are low), so surprise alone misses frozen
  time; this catches it. The log ratio does not depend on how fast the scene moves.
- `anomaly`: the larger of the robust z-scores ((x - median) / (1.4826 MAD)) of
  `log(prediction_error + FLOOR)` (the frame is not where the model expected it) and of
  `stillness` (it did not move where the model expected motion), against reference frames
  (by default the scored frames themselves: anomalies are assumed rare). The first frame has
  no history: its prediction scores are NaN and its anomaly is the robust z of its bits.

Why the prediction and not the bits: the density of a model trained on noised frames
(the shipped models: `sigma = 0.05`, 6.4 levels) is blind to differences smaller than its
noise, such as a frame one or two steps out of time, while the temperature-0 prediction is
the distribution's centre and sharp. On held-out CartPole episodes (docs/experiments.md)
adding the bits' z-score to the maximum lowered the mean AUROC over nine kinds of anomaly from 0.981 to 0.965.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from .errors import WorldFlowError

MAD_TO_STD = 1.4826  # a normal distribution's std over its median absolute deviation
# squared 8-bit levels added to errors before their logs, so that rounding-sized errors do not
# dominate the ratio (chosen among 1/12, the variance of rounding, 0.5 and 1 on development seeds)
FLOOR = 0.5


@dataclass
class FrameScores:
    """(B, T) scores of each frame (see the module docstring); float32, NaN where undefined."""

    bits_per_dim: Tensor
    prediction_error: Tensor
    copy_error: Tensor
    stillness: Tensor
    anomaly: Tensor

    @classmethod
    def of(cls, bits_per_dim: Tensor, prediction_error: Tensor, copy_error: Tensor,
           reference: FrameScores | None = None) -> FrameScores:
        """Scores from the three measurements; `anomaly` against `reference` (default: these)."""
        still = log_error(prediction_error) - log_error(copy_error)
        scores = cls(bits_per_dim, prediction_error, copy_error, still, torch.zeros_like(bits_per_dim))
        scores.anomaly = scores.anomaly_against(reference)
        return scores

    def anomaly_against(self, reference: FrameScores | None = None) -> Tensor:
        """The anomaly of these frames with z-scores against `reference` (default: these frames)."""
        ref = self if reference is None else reference
        return combine(robust_z(self.bits_per_dim, ref.bits_per_dim),
                       robust_z(log_error(self.prediction_error), log_error(ref.prediction_error)),
                       robust_z(self.stillness, ref.stillness))


def log_error(error: Tensor) -> Tensor:
    return torch.log(error + FLOOR)


def robust_z(x: Tensor, ref: Tensor) -> Tensor:
    ref = ref[torch.isfinite(ref)]
    if ref.numel() == 0:
        return torch.full_like(x, float("nan"))
    median = ref.median()
    spread = MAD_TO_STD * (ref - median).abs().median()
    return (x - median) / spread.clamp_min(1e-6)


def combine(bits_z: Tensor, miss_z: Tensor, still_z: Tensor) -> Tensor:
    """The larger of the prediction's two z-scores; the bits' alone where there is no prediction."""
    predicted = torch.isfinite(miss_z) & torch.isfinite(still_z)
    return torch.where(predicted, torch.maximum(miss_z, still_z), bits_z)


@torch.no_grad()
def score_frames(model, frames, actions=None, prompt=None, *, batch: int = 64,
                 reference: FrameScores | None = None, sampler="jacobi",
                 progress: bool = False) -> FrameScores:
    """Score every frame of uint8 frames (B, T, H, W, 3); `actions` as `log_prob` takes them
    ((B, T) or (B, T - 1), `actions[:, t]` taken after frame t), `prompt` a str or B strs.
    `sampler` decodes the predictions (Jacobi stops when a whole batch has converged, so
    its predictions move within its tolerance with the batch; "sequential" does not)."""
    frames = model.check_frames(frames, "frames").cpu()
    b, t = frames.shape[:2]
    if actions is not None:
        actions = model.check_actions(actions, b, t).cpu()
        if actions.shape[1] == t - 1:  # the last frame's action is never used: pad it
            actions = torch.cat([actions, actions[:, -1:]], dim=1)
    if not isinstance(batch, int) or batch < 1:
        raise WorldFlowError(f"batch: expected a positive int, got {batch!r}")
    prompts = _prompts(prompt, b)
    window = model.config.max_frames
    groups: dict[int, list[int]] = {}  # window length -> the frames ending such windows
    for e in range(1, t):  # frame e given min(e, W - 1) frames before it
        groups.setdefault(min(e, window - 1) + 1, []).append(e)
    groups = groups or {1: [0]}  # one frame: its bits alone
    parts = [(length, [(i, e) for i in range(b) for e in ends][lo : lo + batch])
             for length, ends in groups.items() for lo in range(0, b * len(ends), batch)]
    bits = torch.full((b, t), float("nan"))
    pred = torch.full((b, t), float("nan"))
    for length, part in tqdm(parts, desc="scoring", unit="batch", disable=not progress):
        clips = torch.stack([frames[i, e - length + 1 : e + 1] for i, e in part])
        acts = None if actions is None else torch.stack([actions[i, e - length + 1 : e + 1] for i, e in part])
        text = None if prompts is None else [prompts[i] for i, _ in part]
        lp = model.log_prob(clips, acts, text).bits_per_dim.cpu()
        for k, (i, e) in enumerate(part):
            bits[i, e] = lp[k, -1]
            if e == length - 1:  # a window from the first frame: its bits too
                bits[i, 0] = lp[k, 0]
        if length > 1:
            guess = model.generate(1, context=clips[:, :-1], prompt=text, temperature=0.0, sampler=sampler,
                                   seed=0, actions=None if acts is None else acts[:, :-1])[:, 0]
            error = (guess.float() - clips[:, -1].float()).pow(2).mean(dim=(1, 2, 3))
            for k, (i, e) in enumerate(part):
                pred[i, e] = error[k]
    copy = torch.full((b, t), float("nan"))
    copy[:, 1:] = (frames[:, 1:].float() - frames[:, :-1].float()).pow(2).mean(dim=(2, 3, 4))
    return FrameScores.of(bits, pred, copy, reference)


def _prompts(prompt, b: int) -> list[str] | None:
    if prompt is None or isinstance(prompt, str):
        return None if prompt is None else [prompt] * b
    prompt = list(prompt)
    if len(prompt) != b or not all(isinstance(p, str) for p in prompt):
        raise WorldFlowError(f"prompt: expected a str or {b} strs, got {prompt!r}")
    return prompt
