"""Optimizers and learning-rate schedules.

A schedule is a pure function of the step (no state to checkpoint): ``lr_at(opt, sched, steps, k)``.
"""

from __future__ import annotations

import math

import torch


def make_optimizer(spec: dict, params) -> torch.optim.Optimizer:
    name, lr = spec["name"], float(spec["lr"])
    wd = float(spec.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(spec.get("momentum", 0.0)),
                               weight_decay=wd, foreach=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(spec.get("betas", (0.9, 0.999))),
                                weight_decay=wd, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(spec.get("betas", (0.9, 0.999))),
                                 weight_decay=wd, foreach=False)
    raise ValueError(f"unknown optimizer {name!r}; available: sgd, adam, adamw")


def lr_at(opt: dict, sched: dict, steps: int, step: int) -> float:
    """Learning rate used at ``step`` (0-based) of a run with ``steps`` steps."""
    base = float(opt["lr"])
    name = sched.get("name", "constant")
    if name == "constant":
        return base
    if name == "cosine":
        lo = float(sched.get("min_lr", 0.0))
        return lo + 0.5 * (base - lo) * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    raise ValueError(f"unknown schedule {name!r}; available: constant, cosine")
