"""A preallocated key/value cache for one Transformer stack.

The caller owns it and passes it in; nothing else in worldflow keeps state between
calls. Layout is batch-leading, `(B, layers, heads, capacity, head_dim)`, so a cache
can live in a TensorDict and be indexed or expanded over candidates by planners.
Keys are stored after rotary rotation (a slot's angle never changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KVCache:
    keys: Tensor  # (B, layers, heads, capacity, head_dim)
    values: Tensor  # (B, layers, heads, capacity, head_dim)
    length: int = 0  # filled slots, shared by the batch

    @classmethod
    def empty(
        cls,
        batch: int,
        layers: int,
        heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (batch, layers, heads, capacity, head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        )

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store a layer's new keys/values after the filled slots; return all of them.

        k, v: (B, heads, n, head_dim). The length advances only with `advance(n)`, once
        every layer has written.
        """
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} slots needed, capacity {self.capacity}")
        if k.requires_grad or v.requires_grad:  # autograd through the cache (exact scores):
            self.keys, self.values = self.keys.clone(), self.values.clone()  # keep saved views intact
        self.keys[:, layer, :, start:end] = k
        self.values[:, layer, :, start:end] = v
        return self.keys[:, layer, :, :end], self.values[:, layer, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def rewind(self, n: int) -> None:
        """Forget the last `n` slots (a rejected Jacobi iterate)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"rewind: expected 0 <= n <= {self.length}, got {n}")
        self.length -= n

    def clear(self) -> None:
        self.length = 0

    def clone(self) -> KVCache:
        return KVCache(self.keys.clone(), self.values.clone(), self.length)

    def select(self, index: Tensor | slice | list[int]) -> KVCache:
        """The cache of a subset (or reordering) of the batch."""
        return KVCache(self.keys[index], self.values[index], self.length)

    def expand(self, repeats: int) -> KVCache:
        """Each item repeated `repeats` times, consecutively: (B, ...) -> (B * repeats, ...)."""
        return KVCache(
            self.keys.repeat_interleave(repeats, dim=0),
            self.values.repeat_interleave(repeats, dim=0),
            self.length,
        )

    @staticmethod
    def cat(caches: list[KVCache]) -> KVCache:
        """Concatenate caches of equal length along the batch."""
        lengths = {c.length for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"caches: expected equal lengths, got {sorted(lengths)}")
        return KVCache(
            torch.cat([c.keys for c in caches]), torch.cat([c.values for c in caches]), lengths.pop()
        )
