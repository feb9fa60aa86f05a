"""What conditions the deep block: actions (world models) and text (video models).

Conditions only enter the networks that produce the flow's scale and shift, so the
flow stays exactly invertible whatever they are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ActionEmbedding(nn.Module):
    """Per-frame condition embeddings from actions.

    `actions[:, t]` is the action taken after seeing frame t; it conditions frame t+1.
    Frame 0 (of a video, or of a re-encoded window) has no action and gets a learned
    `null` embedding. Discrete actions are integer indices, continuous ones vectors.
    """

    def __init__(self, width: int, num_actions: int | None = None, action_dim: int | None = None):
        super().__init__()
        self.discrete = num_actions is not None
        self.table = nn.Embedding(num_actions, width) if self.discrete else nn.Linear(action_dim, width)
        self.null = nn.Parameter(torch.zeros(width))

    def embed(self, action: Tensor) -> Tensor:
        """(B,) int or (B, A) float -> (B, width); also works with extra leading dims."""
        return self.table(action.long() if self.discrete else action.to(self.null.dtype))

    def per_frame(self, actions: Tensor | None, num_frames: int, batch: int) -> Tensor:
        """Condition embeddings (B, T, width) for frames 0..T-1 from actions[:, :T-1]."""
        null = self.null.expand(batch, 1, -1)
        if num_frames == 1 or actions is None:
            return null.expand(batch, num_frames, -1)
        return torch.cat([null, self.embed(actions[:, : num_frames - 1])], dim=1)


class ByteTextEncoder(nn.Module):
    """A self-contained text encoder: UTF-8 bytes -> embeddings (B, S, text_dim).

    Needs no download. Bytes get learned embeddings and positions, then `layers`
    bidirectional Transformer layers (torch's `TransformerEncoderLayer`, pre-norm) mix
    them, so a word's meaning can gather in any of its bytes; with `layers=0` the deep
    block's causal attention over the prefix does all of it. Byte 0 is padding (prompts
    are cut or padded to `length` bytes); "" is the null prompt of classifier-free guidance.
    """

    def __init__(self, text_dim: int, length: int, layers: int = 0, head_dim: int = 32):
        super().__init__()
        self.length = length
        self.bytes = nn.Embedding(257, text_dim)
        self.position = nn.Parameter(torch.zeros(length, text_dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(text_dim, max(1, text_dim // head_dim), 4 * text_dim, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(text_dim) if layers else nn.Identity()

    def tokenize(self, prompts: list[str]) -> Tensor:
        ids = torch.zeros(len(prompts), self.length, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            data = list(prompt.encode("utf-8"))[: self.length]
            ids[i, : len(data)] = torch.tensor(data, dtype=torch.long) + 1
        return ids

    def forward(self, prompts: list[str]) -> Tensor:
        ids = self.tokenize(prompts).to(self.position.device)
        h = self.bytes(ids) + self.position
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)


class PretrainedTextEncoder(nn.Module):
    """A Hugging Face text encoder loaded from a LOCAL directory only (never downloads).

    Its hidden size must equal the model's `text_dim`. Requires `transformers`.
    """

    def __init__(self, path: str, length: int):
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:  # pragma: no cover - optional dependency
            raise ImportError("text_encoder: a local pretrained encoder needs `transformers`") from err
        self.length = length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        batch = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.length, return_tensors="pt"
        )
        return self.encoder(**batch).last_hidden_state
