"""The tensors a problem trains on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Dataset:
    x: torch.Tensor
    y: torch.Tensor
    name: str
    f_i_star: torch.Tensor | None = None  # per-sample minima, when known exactly
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])
