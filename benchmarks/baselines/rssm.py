"""A Dreamer-style recurrent state-space model built from TorchRL's model-based modules.

TorchRL's `ObsEncoder` / `ObsDecoder` (convolutional, 64x64 pictures), `RSSMPrior` (a GRU
belief and a Gaussian state predicted from the last state and action) and `RSSMPosterior`
(the state corrected by the observed frame). Frames are resized to 64x64 on the way in and
back to the model's size on the way out. Trained on clips of the world model's kind of
training episodes for a fixed wall-clock budget with the evidence lower bound: pixel
reconstruction plus the KL of posterior to prior, with `free_nats` (as DreamerV1/V2; the
Gaussian latents are V1's, not V3's discrete ones). Open-loop prediction filters the
context frames with the posterior, then rolls the prior forward under the given actions
and decodes its mean.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torchrl.data import OneHot
from torchrl.modules.models.model_based import ObsDecoder, ObsEncoder, RSSMPosterior, RSSMPrior
from tqdm import tqdm

SIDE = 64  # what TorchRL's encoder and decoder are built for


class RSSM(nn.Module):
    def __init__(self, num_actions: int, frame_size: tuple[int, int], state_dim: int = 30,
                 hidden: int = 200, channels: int = 32):
        super().__init__()
        self.num_actions, self.frame_size = num_actions, tuple(frame_size)
        self.encoder = ObsEncoder(channels=channels, num_layers=4, in_channels=3)
        embed = channels * 8 * 2 * 2
        self.prior = RSSMPrior(OneHot(num_actions), hidden_dim=hidden, rnn_hidden_dim=hidden,
                               state_dim=state_dim, action_dim=num_actions)
        self.posterior = RSSMPosterior(hidden_dim=hidden, state_dim=state_dim, rnn_hidden_dim=hidden,
                                       obs_embed_dim=embed)
        self.decoder = ObsDecoder(channels=channels, num_layers=4, latent_dim=state_dim + hidden)
        self.state_dim, self.hidden = state_dim, hidden

    def to_input(self, frames: Tensor) -> Tensor:
        """uint8 (..., H, W, 3) -> float (..., 3, 64, 64) in [-0.5, 0.5]."""
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 255 - 0.5
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        return x.view(*lead, 3, SIDE, SIDE)

    def to_frames(self, x: Tensor) -> Tensor:
        """float (..., 3, 64, 64) -> uint8 (..., H, W, 3) at the world model's frame size."""
        lead = x.shape[:-3]
        y = F.interpolate(x.reshape(-1, 3, SIDE, SIDE), size=self.frame_size, mode="bilinear",
                          align_corners=False)
        y = ((y + 0.5) * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return y.reshape(*lead, *self.frame_size, 3)

    def start(self, b: int) -> tuple[Tensor, Tensor]:
        return torch.zeros(b, self.state_dim), torch.zeros(b, self.hidden)

    def filter(self, frames: Tensor, actions: Tensor, sample: bool = True):
        """Posterior over frames (B, T, H, W, 3), `actions[:, t]` taken after frame t.

        Returns per step the prior and posterior (mean, std) and the posterior states and
        beliefs (B, T, .)."""
        b, t = frames.shape[:2]
        embed = self.encoder(self.to_input(frames).flatten(0, 1)).view(b, t, -1)
        state, belief = self.start(b)
        one_hot = F.one_hot(actions.long(), self.num_actions).float()
        prev_action = torch.zeros(b, self.num_actions)
        out = {k: [] for k in ("prior_mean", "prior_std", "post_mean", "post_std", "state", "belief")}
        for i in range(t):
            prior_mean, prior_std, _, belief = self.prior(state, belief, prev_action)
            post_mean, post_std, state = self.posterior(belief, embed[:, i])
            if not sample:
                state = post_mean
            for k, v in zip(out, (prior_mean, prior_std, post_mean, post_std, state, belief)):
                out[k].append(v)
            prev_action = one_hot[:, i]
        return {k: torch.stack(v, dim=1) for k, v in out.items()}

    def loss(self, frames: Tensor, actions: Tensor, free_nats: float = 3.0) -> tuple[Tensor, dict]:
        seq = self.filter(frames, actions)
        recon = self.decoder(seq["state"], seq["belief"])
        mse = (recon - self.to_input(frames)).pow(2).sum(dim=(-3, -2, -1)).mean()
        kl = kl_divergence(Normal(seq["post_mean"], seq["post_std"]),
                           Normal(seq["prior_mean"], seq["prior_std"])).sum(-1).mean()
        parts = {"reconstruction": float(mse.detach()), "kl": float(kl.detach())}
        return mse + kl.clamp_min(free_nats), parts

    @torch.no_grad()
    def predict(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        """Open-loop frames (B, horizon, H, W, 3) after context (B, C, H, W, 3); `actions`
        (B, C + horizon - 1) counted from the first context frame."""
        c = context.shape[1]
        seq = self.filter(context, actions[:, :c], sample=False)
        state, belief = seq["state"][:, -1], seq["belief"][:, -1]
        one_hot = F.one_hot(actions.long(), self.num_actions).float()
        frames = []
        for k in range(horizon):
            mean, _, _, belief = self.prior(state, belief, one_hot[:, c - 1 + k])
            state = mean
            frames.append(self.decoder(state, belief))
        return self.to_frames(torch.stack(frames, dim=1))


def train_rssm(episodes: list, num_actions: int, frame_size, seconds: float, clip_len: int = 16,
               batch: int = 16, lr: float = 6e-4, seed: int = 0) -> tuple[RSSM, dict]:
    """Train on clips of episodes (TensorDicts with `frames`, `actions`) for `seconds`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    usable = [ep for ep in episodes if ep.shape[0] >= clip_len]
    if not usable:
        raise ValueError(f"episodes: expected some of at least {clip_len} frames, got none")
    model = RSSM(num_actions, frame_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-5)
    start, steps, parts = time.perf_counter(), 0, {}
    with tqdm(desc="rssm", unit="step", total=None) as bar:
        while time.perf_counter() - start < seconds:
            picks = torch.randint(len(usable), (batch,), generator=gen).tolist()
            starts = [int(torch.randint(usable[i].shape[0] - clip_len + 1, (1,), generator=gen))
                      for i in picks]
            frames = torch.stack([usable[i]["frames"][s : s + clip_len] for i, s in zip(picks, starts)])
            actions = torch.stack([usable[i]["actions"][s : s + clip_len] for i, s in zip(picks, starts)])
            loss, parts = model.loss(frames, actions)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            opt.step()
            steps += 1
            bar.update()
    model.eval()
    return model, {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
                   **{k: round(v, 2) for k, v in parts.items()}}
