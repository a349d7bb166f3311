import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_study(experiment: dict, name: str = "t", **top):
    from landscope.config import load_study

    return load_study({"device": "cpu", **top, "experiments": {name: experiment}})


@pytest.fixture
def spec_factory():
    def factory(**exp):
        base = {"model": {"name": "logistic_regression"}, "dataset": {"name": "digits", "n_train": 200},
                "batch_size": 16, "steps": 12, "snapshot_every": 4, "seeds": [0],
                "optimizer": {"name": "sgd", "lr": 0.5}}
        base.update(exp)
        return make_study(base).experiments["t"].runs[0]
    return factory


def run_pipeline(spec, root: Path):
    """Train, snapshot, select x_K and replay every segment of one run (no Snakemake)."""
    from landscope import measure, trajectory

    results = root / "results"
    ckpt = root / "ckpt"
    trajectory.train_run(spec, ckpt, results)
    snaps = measure.snapshot_run(spec, ckpt, results)
    measure.select_minimizer(spec, ckpt, snaps, ckpt / "minimizer.pt", results)
    drifts = [trajectory.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, results)["drift"]
              for j in range(spec.n_segments)]
    return results, ckpt, drifts


PYTHON = sys.executable
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
LANDSCOPE = [sys.executable, "-m", "landscope.cli"]


# A bring-your-own model that diverges (used by the divergence tests of several modules)
EXPLODING_MODULE = '''
import torch
from torch import nn


class Exploding(nn.Module):
    """Logits exp(w x): a large step size makes them overflow to inf, and the loss NaN."""

    def __init__(self, in_features, n_classes, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes)

    def forward(self, x):
        return torch.exp(self.linear(x))


def make(**kw):
    return Exploding(**kw)
'''
