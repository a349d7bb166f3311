"""Models and per-sample losses.

A model factory takes keyword arguments from the config plus ``in_features`` and ``n_classes``
(inferred from the dataset when the config leaves them out) and returns an ``nn.Module``.
A config may name any factory by import path ``package.module:function``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from landscope.config import ConfigError, check_component, import_factory


class HalfSpace(nn.Module):
    """Linear score x.a (no bias); with ``halfspace_sigmoid`` loss: f_i = sigmoid(-b a.x) + (l2/2)|x|^2."""

    default_loss = "halfspace_sigmoid"

    def __init__(self, in_features: int, l2: float = 1e-5, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, 1, bias=False)
        self.l2 = float(l2)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """in -> width -> ... -> n_classes with ReLU; ``depth`` counts the linear layers (paper: 3)."""

    default_loss = "cross_entropy"

    def __init__(self, in_features: int, n_classes: int, width: int = 128, depth: int = 3, **_):
        super().__init__()
        if depth < 1:
            raise ConfigError(f"mlp depth must be >= 1, got {depth}")
        dims = [in_features] + [width] * (depth - 1) + [n_classes]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer."""

    default_loss = "cross_entropy"

    def __init__(self, in_features: int, n_classes: int, bias: bool = True, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes, bias=bias)

    def forward(self, x):
        return self.linear(x.flatten(1))


def _analytic(**kw):
    from landscope.analytic import AnalyticExample

    return AnalyticExample(**kw)


BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "analytic": _analytic,
    "halfspace_logistic": HalfSpace,
    "mlp": MLP,
    "logistic_regression": LogisticRegression,
}


def check_name(name: str, where: str) -> None:
    check_component(name, BUILTIN, "model", where)


def build_model(spec: dict, in_features: int, n_classes: int) -> nn.Module:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    kwargs.setdefault("in_features", in_features)
    kwargs.setdefault("n_classes", n_classes)
    name = spec["name"]
    if ":" in name:
        return import_factory(name, "model.name")(**kwargs)
    return BUILTIN[name](**kwargs)


# ----------------------------------------------------------------------------------- losses
def _cross_entropy(model, out, y):
    return F.cross_entropy(out, y, reduction="none")


def _halfspace_sigmoid(model, out, y):
    reg = 0.5 * getattr(model, "l2", 0.0) * sum((p * p).sum() for p in model.parameters())
    return torch.sigmoid(-y * out) + reg


def _mse(model, out, y):
    return ((out - y) ** 2).reshape(len(out), -1).mean(1)


def _identity(model, out, y):
    return out


LOSSES = {"cross_entropy": _cross_entropy, "halfspace_sigmoid": _halfspace_sigmoid, "mse": _mse,
          "identity": _identity}


def loss_for(model: nn.Module, name: str | None) -> Callable:
    """Return fn(model, outputs, targets) -> per-sample losses."""
    name = name or getattr(model, "default_loss", "cross_entropy")
    return LOSSES[name]


def has_stochastic_layers(model: nn.Module) -> bool:
    """Dropout / BatchNorm make train-mode and eval-mode losses differ."""
    kinds = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    return any(isinstance(m, kinds) for m in model.modules())
