"""The paper's analytic examples: values, projections, and the proven alpha-beta region of Example 1."""

import numpy as np
import polars as pl
import pytest
import torch
from conftest import make_study, run_pipeline

from landscope.measures import conditions
from landscope.problem import analytic
from landscope.trajectory import replay, rundir, train


def test_example_values_and_minimizers():
    # Example 1 at u = x + y = -1/2: (0.25/1.25 + 0.25/1.25)/2 = 0.2
    assert analytic.f_value(1, [-0.25, -0.25]) == pytest.approx(0.2)
    # Example 3: PAPER.md says f* ~ 0.408 at (2.471, 2.471). For the formula as written the global
    # minimizer is (2.3762, 2.3762) with f* = 0.405716 (a grid scan over [-2, 5]^2 agrees; the gradient
    # at (2.471, 2.471) is 0.084 along the diagonal), and (0.2589, 0.2589) is a local minimum, f = 0.4948.
    (m3,) = analytic.minimizers(3)
    np.testing.assert_allclose(m3, [2.376197, 2.376197], atol=1e-5)
    assert analytic.f_value(3, m3) == pytest.approx(0.405716, abs=1e-6)
    assert analytic.f_value(3, m3) == pytest.approx(0.408, abs=3e-3)
    grid = np.linspace(-2, 5, 141)
    assert min(analytic.f_value(3, [x, y]) for x in grid for y in grid) >= analytic.f_value(3, m3) - 1e-12
    # Example 2: two symmetric minimizers, one near each well
    m2 = analytic.minimizers(2)
    np.testing.assert_allclose(m2[0] + m2[1], [2.0, 2.0], atol=1e-6)
    assert analytic.f_value(2, m2[0]) == pytest.approx(analytic.f_value(2, m2[1]), abs=1e-12)


def test_projections():
    p = analytic.project(1, torch.tensor([1.0, 2.0], dtype=torch.float64))
    np.testing.assert_allclose(p.numpy(), [-0.75, 0.25])  # (1, 2) - 1.75 (1, 1); x + y = -1/2
    p2 = analytic.project(2, torch.tensor([1.5, 1.9], dtype=torch.float64))
    np.testing.assert_allclose(p2.numpy(), analytic.minimizers(2)[1])


def test_example1_proven_region_is_feasible_with_exact_projection(tmp_path):
    study = make_study({"model": {"name": "analytic", "example": 1, "init_scale": 3.0},
                        "dataset": {"name": "analytic", "example": 1}, "batch_size": 1,
                        "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 300, "snapshot_every": 100,
                        "seeds": [0, 1, 2], "f_i_star": "exact", "minimizer": "projection"})
    frames = []
    for spec in study.experiments["t"].runs:
        results, _, drifts = run_pipeline(spec, tmp_path / spec.run)
        assert drifts == [0.0, 0.0, 0.0]
        frames.append(pl.read_parquet(f"{results}/tables/steps/experiment=t/run={spec.run}/*.parquet"))
    steps = pl.concat(frames)
    assert len(steps) == 900 and (steps["dist_to_min"] > 0).mean() > 0.9
    u = (steps["batch_loss"] - steps["batch_loss_at_min"]).to_numpy()
    v = (steps["batch_loss"] - steps["batch_loss_star"]).to_numpy()
    a = steps["grad_dot_dir"].to_numpy()
    # every pair of the proven region (alpha >= 5/2, 4 alpha / 5 <= beta < alpha; margin 0.1) works
    pairs = [(al, be) for al in np.linspace(2.5, 20, 36) for be in np.linspace(0.8 * al, al - 0.1, 12)]
    worst = min(np.min(a - al * u + be * v) for al, be in pairs)
    assert worst >= -1e-6
    # and the exact region contains the proven one's corner (5/2, 2)
    reg = conditions.analyze_region(u, v, a, margin=0.1, alpha_max=10.0)
    assert reg.feasible and reg.alpha_min <= 2.5 + 1e-9
    assert conditions.min_t(np.array([2.5]), np.array([2.0]), u, v, a)[0] >= -1e-6


def test_parameter_path_replays_every_iterate_through_the_checkpoints(tmp_path):
    from landscope.problem import build

    spec = make_study({"model": {"name": "analytic", "example": 2, "init_scale": 1.5},
                       "dataset": {"name": "analytic", "example": 2}, "batch_size": 1,
                       "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 40, "snapshot_every": 20,
                       "f_i_star": "exact"}).experiments["t"].runs[0]
    ckpt = tmp_path / "ckpt"
    train.train_run(spec, ckpt)
    steps, path = replay.parameter_path(ckpt)
    assert steps == list(range(41)) and path.shape == (41, 2)
    for s in (0, 20, 40):  # the replayed path passes exactly through every checkpoint
        w = rundir.load_checkpoint(rundir.checkpoint_path(ckpt, s))["model"]["w"].double().numpy()
        assert np.array_equal(path[s], w)
    # each step is one SGD step on the term of that step's batch: x_{k+1} = x_k - lr grad f_{i_k}(x_k)
    k = 7
    i = int(build.batch_indices(2, 1, spec.seed, k)[0])
    w = torch.tensor(path[k], dtype=torch.float32, requires_grad=True)
    f = analytic.terms(2, w)[i]
    (g,) = torch.autograd.grad(f, w)
    np.testing.assert_allclose(path[k + 1], (w - 0.5 * g).detach().double().numpy(), rtol=1e-6)
