"""A small convolutional autoencoder: a frame's anomaly score is its reconstruction error.

Trained on the world model's kind of training episodes for a fixed wall-clock budget; it
knows what frames look like but nothing of time, so frozen or skipped frames are normal
to it.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn
from tqdm import tqdm


class ConvAutoencoder(nn.Module):
    """uint8 frames (n, H, W, 3) -> reconstructions (n, 3, H, W), pixels as [-1, 1]; H, W multiples of 8."""

    def __init__(self, width: int = 32, latent: int = 16):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * w, latent, 4, 2, 1),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent, 2 * w, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(),
            # a linear output: behind a tanh, training stalled above the mean frame's error
            # (CartPole's white background is tanh's asymptote +1)
            nn.ConvTranspose2d(w, 3, 4, 2, 1),
        )

    @staticmethod
    def to_input(frames: Tensor) -> Tensor:
        return frames.permute(0, 3, 1, 2).float() / 127.5 - 1

    def forward(self, frames: Tensor) -> Tensor:
        return self.decoder(self.encoder(self.to_input(frames)))

    @torch.no_grad()
    def score(self, frames: Tensor, batch: int = 256) -> Tensor:
        """Reconstruction error of each frame (n,), mean squared in 8-bit pixel units."""
        errors = []
        for i in range(0, frames.shape[0], batch):
            x = frames[i : i + batch]
            errors.append((self(x) - self.to_input(x)).pow(2).mean(dim=(1, 2, 3)) * 127.5**2)
        return torch.cat(errors)


def train_autoencoder(frames: Tensor, seconds: float, batch: int = 64, lr: float = 2e-3,
                      seed: int = 0, max_steps: int | None = None) -> tuple[ConvAutoencoder, dict]:
    """Train on uint8 frames (N, H, W, 3) for `seconds` of wall clock, or `max_steps` steps if
    that comes first (a fixed amount of training, whatever the machine's load); returns it and
    a summary."""
    h, w = frames.shape[1:3]
    if h % 8 or w % 8:
        raise ValueError(f"frames: expected sides divisible by 8, got {h}x{w}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ConvAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start, steps, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    with tqdm(desc="autoencoder", unit="step", total=max_steps) as bar:
        while time.perf_counter() - start < seconds and (max_steps is None or steps < max_steps):
            x = frames[torch.randint(frames.shape[0], (batch,), generator=gen)]
            loss = (model(x) - model.to_input(x)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            bar.update()
    model.eval()
    return model, {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
                   "train_mse_pixels": round(float(loss.detach()) * 127.5**2, 2)}
