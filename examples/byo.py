"""Bring your own model and data: factories that a landscope config names by import path.

`examples/byo.yaml` uses them; from the repository root:

    snakemake --cores all --configfile examples/byo.yaml

A model factory receives the config's keyword arguments plus ``in_features`` (the size of one
flattened input) and ``n_classes``; it returns a ``torch.nn.Module`` whose output for a batch is
what the loss expects (class logits for ``cross_entropy``). A dataset factory receives the config's
keyword arguments and returns ``(x, y)`` tensors (or a ``landscope.problem.dataset.Dataset``). Keep both
deterministic: landscope seeds torch before building the model, and the data must come out the
same in every job process.
"""

import numpy as np
import torch
from torch import nn


class GatedMLP(nn.Module):
    """A small MLP with multiplicative (GLU) hidden layers: a model landscope does not ship."""

    def __init__(self, in_features: int, n_classes: int, width: int = 32, depth: int = 2):
        super().__init__()
        layers, d = [], in_features
        for _ in range(depth):
            layers.append(nn.Linear(d, 2 * width))
            layers.append(nn.GLU())
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))


def gated_mlp(in_features: int, n_classes: int, width: int = 32, depth: int = 2) -> nn.Module:
    return GatedMLP(in_features, n_classes, width, depth)


def noisy_spirals(n: int = 600, turns: float = 1.5, noise: float = 0.15, seed: int = 0):
    """Two interleaved 2-D spirals with n noisy points each: (x float32 (2n, 2), y long (2n,))."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0, 1, n)) * turns * 2 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (turns * 2 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0, noise / 4, (2 * n, 2))
    y = np.concatenate([np.zeros(n), np.ones(n)])
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
