"""Diffusion of one run (landscope.measures.diffusion.diffusion_run) against ground truth: the plateau window
on hand-made loss curves, the autocorrelation factor on residuals with a hand-computed lag-1 correlation, and
whole runs whose checkpoints are written as an exact random walk (exponent 1) or a stationary cloud around a
fixed point (exponent 0), with snapshot and curvature rows whose drifts are exact lines."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from landscope import store
from landscope.config import load_study
from landscope.measures.diffusion import (
    ar1_factor,
    claims,
    diffusion_run,
    diffusion_settings,
    motion_label,
    msd_exponent,
    plateau_start,
    running_median,
    trend_label,
)
from landscope.problem.build import build_problem
from landscope.problem.evaluate import trainable_parameters, write_flat
from landscope.report.diffusion import diffusion_part, window_rows
from landscope.trajectory.rundir import save_checkpoint, write_manifest


# ----------------------------------------------------------------------------------- the window
def test_plateau_start_on_hand_made_curves():
    steps = list(range(0, 110, 10))
    loss = [5.0, 3.0, 2.0, 1.2, 1.05, 1.0, 1.02, 0.99, 1.01, 1.0, 1.0]
    # f_end = median of the last ceil(0.1 * 11) = 2 losses = 1.0, f_first = 5: total decrease 4.
    # tol 0.05: band 1.0 + 0.2, first held from index 3 (1.2) on -> step 30
    assert plateau_start(steps, loss, 0.05) == 30
    # tol 0.01: band 1.04; 1.05 at index 4 is above it -> step 50
    assert plateau_start(steps, loss, 0.01) == 50
    # a later excursion above the band moves the start past it (1.5 at index 7 -> step 80) ...
    spiked = loss[:7] + [1.5] + loss[8:]
    assert plateau_start(steps, spiked, 0.05) == 80
    # ... unless a running median over 5 checkpoints hides it (a median of the unsmoothed losses 1.2, 1.05, 1.0,
    # 1.02 about index 3 is 1.2: the start is step 30 again); three in a row do count: the medians at indices
    # 8 (1.5, 1.5, 1.5, 1.0, 1.0) and 9 (1.5, 1.5, 1.0, 1.0 -> 1.25) are above 1.2, index 10's (1.5, 1.0, 1.0)
    # is 1.0: step 100
    assert plateau_start(steps, spiked, 0.05, median=5) == 30
    assert plateau_start(steps, loss[:6] + [1.5] * 3 + loss[9:], 0.05, median=5) == 100
    assert running_median([3.0, 1.0, 2.0, math.nan, 5.0], 3)[:2].tolist() == [2.0, 2.0]
    # a loss that never decreases is on its plateau from the start; one that ends non-finite has none
    assert plateau_start(steps, [1.0] * 11, 0.05) == 0
    assert plateau_start(steps, loss[:-2] + [math.nan, math.nan], 0.05) is None
    # a NaN inside the window breaks it: the plateau starts after the last non-finite loss
    holed = loss[:8] + [math.nan] + loss[9:]
    assert plateau_start(steps, holed, 0.05) == 90


def test_ar1_factor_on_residuals_with_a_known_lag_one_correlation():
    # residuals e = (10, -2, -8, -8, -2, 10) (3 x ((s - 2.5)^2 - 35/12)) sum to 0 and are orthogonal to s, so
    # the straight-line fit of 3 + 0.5 s + e leaves exactly e: r = (-20 + 16 + 64 + 16 - 20) / 336 = 1/6 and
    # the factor is sqrt((1 + 1/6) / (1 - 1/6)) = sqrt(7/5)
    s = np.arange(6.0)
    e = np.array([10.0, -2, -8, -8, -2, 10])
    assert ar1_factor(s, 3 + 0.5 * s + e) == pytest.approx(math.sqrt(7 / 5), rel=1e-12)
    # alternating residuals (negative r) are clipped to r = 0: factor 1; so are exact lines and short series
    assert ar1_factor(np.arange(4.0), [1.0, -1.0, -1.0, 1.0]) == 1.0
    assert ar1_factor(s, 2 * s) == 1.0 and ar1_factor([0, 1, 2], [1.0, 5.0, 2.0]) == 1.0


def test_labels_and_claims():
    assert [motion_label(a) for a in (0.1, 0.5, 1.0, 1.5, 2.0, math.nan)] == [
        "converged", "subdiffusive", "diffusive", "superdiffusive", "ballistic", "no exponent"]
    assert trend_label(-0.2, 0.05, 10) == "decreased" and trend_label(0.2, 0.05, 10) == "increased"
    assert trend_label(0.05, 0.05, 10) == "no significant drift" and trend_label(0.1, 0.0, 10) == "increased"
    assert trend_label(0.0, 0.0, 10) == "no significant drift" and trend_label(0.5, 0.01, 2) == "not measured"
    flat = {"lambda_max": "decreased", "trace": "not measured", "log_volume": "increased"}
    assert claims("diffusive", True, flat) == ("held", "held")
    assert claims("converged", True, {"lambda_max": "increased"}) == ("not held: converged", "contradicted")
    assert claims("diffusive", True, {"lambda_max": "increased", "trace": "decreased"})[1] == "mixed"
    assert claims("diffusive", True, {}) == ("held", "not tested: no curvature")
    assert claims("diffusive", False, flat)[0].startswith("not tested")
    with pytest.raises(ValueError, match="unknown setting"):
        diffusion_settings({"plateau_tolerance": 0.1})


# ----------------------------------------------------------------------------------- a whole run
D = 200  # parameters of the run: halfspace_logistic on 200-dimensional half-space data


def synthetic_run(tmp_path, iterates, lam=None):
    """A run whose checkpoints (every 10 steps to 1000) hold ``iterates`` and whose snapshot rows are: full loss
    falling 2.0 - 0.0038 s to step 490, then exactly 0.1; gradient norm 0.5; test loss 0.3 + 1e-4 (s - 500) from
    step 500; and, with ``lam``, curvature rows at every other checkpoint with lambda_max = lam(s)."""
    study = load_study({"device": "cpu", "experiments": {"t": {
        "model": {"name": "halfspace_logistic"}, "dataset": {"name": "halfspace", "dim": D, "n_per_class": 5},
        "steps": 1000, "snapshot_every": 10, "batch_size": 1, "seeds": [0], "diffusion": {"enabled": True}}}})
    spec = study.experiments["t"].runs[0]
    problem = build_problem(spec)
    params = trainable_parameters(problem.model)
    assert sum(p.numel() for p in params) == D
    ckpt, results = tmp_path / "ckpt", tmp_path / "results"
    opt = torch.optim.SGD(problem.model.parameters(), lr=0.1)
    steps = spec.checkpoint_steps
    for step, x in zip(steps, iterates):
        write_flat(params, torch.as_tensor(x))
        save_checkpoint(ckpt, step, problem, opt)
    write_manifest(ckpt, {"spec": spec.to_dict(), "training_key": spec.training_key(),
                          "checkpoints": [{"step": s} for s in steps]})
    s = np.array(steps, dtype=float)
    loss = np.where(s < 500, 2.0 - 0.0038 * s, 0.1)
    test = np.where(s < 500, 1.0, 0.3 + 1e-4 * (s - 500))
    n = len(steps)
    store.write_table(store.part_path(results, "snapshots", "t", spec.run), "snapshots", {
        "experiment": ["t"] * n, "run": [spec.run] * n, "step": steps, "full_loss": loss.tolist(),
        "full_grad_norm": [0.5] * n, "param_norm": np.linalg.norm(iterates, axis=1).tolist(),
        "accuracy": [1.0] * n, "test_loss": test.tolist(), "test_accuracy": [1.0] * n,
        "generalization_gap": (test - loss).tolist()})
    curvature = None
    if lam is not None:
        measured = steps[::2]
        cols = {c: [None] * len(measured) for c in store.SCHEMAS["curvature"]}
        cols.update(experiment=["t"] * len(measured), run=[spec.run] * len(measured), step=measured,
                    lambda_max=[lam(x) for x in measured])
        curvature = store.write_table(store.part_path(results, "curvature", "t", spec.run), "curvature", cols)
    return spec, ckpt, results, curvature


def read_rows(results, table, spec):
    return pq.read_table(store.part_path(results, table, spec.experiment, spec.run)).to_pylist()


def test_random_walk_after_the_plateau_is_diffusion_and_the_drifts_are_exact(tmp_path):
    # iterates: a random walk of unit variance per step and coordinate, so the checkpoints 10 steps apart
    # differ by N(0, 10 I): MSD(L) = D L. Window from step 500 (plateau_tol 0.01: band 0.1 + 0.019, and the
    # loss at 490 is 0.138) to 1000: 51 checkpoints. Tolerance on alpha: relative variance of the MSD at the
    # longest fitted lag (25 checkpoints) 4 * 25 / (3 * 51 * 200) = 0.0033 (SD 0.057), over a log-lag range
    # of ln 25 = 3.2: the slope's SD is ~0.03; 0.15 is ~5 SD.
    rng = np.random.default_rng(0)
    walk = np.cumsum(math.sqrt(10) * rng.normal(size=(101, D)), axis=0)
    spec, ckpt, results, curv = synthetic_run(tmp_path, walk, lam=lambda s: 10 - 0.004 * max(s - 500, 0))
    out = diffusion_run(spec, ckpt, results, {"enabled": True, "plateau_tol": 0.01}, curv)
    (row,) = read_rows(results, "diffusion", spec)
    assert out["checkpoints"] == 51 and out["motion"] == "diffusive"
    assert (row["plateau_step"], row["start_step"], row["end_step"], row["n_checkpoints"], row["thin_stride"]) == (
        500, 500, 1000, 51, 1)
    assert row["exponent"] == pytest.approx(1.0, abs=0.15) and row["n_params"] == D
    # again on lags 62.5..250 (lag_max / 4 .. lag_max): default_lags has 70, 80, ..., 120, 140, 150, 170, 180,
    # 200, 220, 250 there (13), over ln(250 / 70) = 1.3: the slope's SD ~0.07
    assert row["lag_max"] == 250 and row["n_lags_long"] == 13
    assert row["exponent_long"] == pytest.approx(1.0, abs=0.3)
    stored = walk.astype(np.float32).astype(np.float64)  # the model's parameters are float32
    assert row["displacement"] == pytest.approx(float(np.linalg.norm(stored[-1] - stored[50])), rel=1e-12)
    # flat loss (exactly 0.1), test loss 0.3 + 1e-4 (s - 500): mean 0.325, change 0.05, rel_change 0.05 / 0.325
    assert row["loss_rel_change"] == 0.0 and row["loss_trend"] == "flat"
    assert row["test_loss_rel_change"] == pytest.approx(0.05 / 0.325, rel=1e-9)
    assert row["test_loss_slope"] == pytest.approx(1e-4, rel=1e-9) and row["test_loss_trend"] == "increased"
    # lambda_max 10 - 0.004 (s - 500) at 500, 520, ..., 1000: mean 9, change -2 -> rel_change -2/9, decreased;
    # the log-volume proxy -1/2 log lambda_max rises; no trace measured
    assert row["lambda_max_rel_change"] == pytest.approx(-2 / 9, rel=1e-9) and row["lambda_max_trend"] == "decreased"
    assert row["log_volume_trend"] == "increased" and row["trace_trend"] == "not measured"
    assert (row["diffusion_claim"], row["flattening_claim"]) == ("held", "held")
    msd = read_rows(results, "diffusion_msd", spec)
    assert msd[0]["lag"] == 10 and msd[0]["n_pairs"] == 50
    # lag 10: the mean of 50 * 200 chi^2_1 draws times 10, relative SD sqrt(2 / 10000) = 0.014
    assert msd[0]["msd"] == pytest.approx(10 * D, rel=0.07)
    fitted = [m for m in msd if m["in_fit"]]
    assert [m["lag"] for m in fitted] == [m["lag"] for m in msd if m["lag"] <= 250] and len(fitted) == row["n_lags"]
    # the fitted power law passes through the fitted MSDs' geometric mean with slope alpha
    logs = np.log([m["msd"] for m in fitted]) - np.log([m["msd_fit"] for m in fitted])
    assert logs.mean() == pytest.approx(0.0, abs=1e-12)
    assert all(math.isnan(m["msd_fit"]) for m in msd if not m["in_fit"])

    # the page section says it with these numbers, and charts the MSD rows and the window's 51 checkpoints
    con = store.connect(results)
    text, sections = diffusion_part(con, "t")
    assert f"with exponent α = {row['exponent_long']:.2f} over runs" in text and "diffusive in 1" in text
    assert f"Over all fitted lags α = {row['exponent']:.2f}" in text
    assert "steps 500 to 1,000, 51 checkpoints" in text and "−22.2 %" in text  # lambda_max's -2/9
    assert "diffusion claim held in 1 of 1 runs; its flattening claim held in 1" in text
    assert [s.id for s in sections] == ["diffusiona", "diffusionb"]
    msd_data = sections[0].chart.to_dict()["datasets"]
    assert sum(len(v) for v in msd_data.values()) == len(msd)
    window = window_rows(con, "t")
    assert window.filter(pl.col("series") == "full loss").height == 51
    assert window.filter(pl.col("series") == "sharpness λ_max").height == 26


def test_a_stationary_cloud_is_converged_and_a_short_window_is_named(tmp_path):
    # a fixed point x* plus independent N(0, sigma^2 I) noise at every checkpoint: MSD = 2 D sigma^2 at every lag
    # (each lag averages >= 26 * 200 chi^2 draws, relative SD <= 0.02), so alpha ~ 0 (0.1 is > 5 SD of the slope)
    rng = np.random.default_rng(1)
    cloud = rng.normal(size=D) + 1e-3 * rng.normal(size=(101, D))
    spec, ckpt, results, _ = synthetic_run(tmp_path, cloud)
    diffusion_run(spec, ckpt, results, {"plateau_tol": 0.01})
    (row,) = read_rows(results, "diffusion", spec)
    assert row["exponent"] == pytest.approx(0.0, abs=0.1) and row["motion"] == "converged"
    assert row["exponent_long"] == pytest.approx(0.0, abs=0.2)
    assert row["diffusion_claim"] == "not held: converged" and row["flattening_claim"] == "not tested: no curvature"
    assert row["lambda_max_trend"] == "not measured" and math.isnan(row["lambda_max_rel_change"])
    # more checkpoints asked for than the window has: a row with the reason, no MSD rows
    diffusion_run(spec, ckpt, results, {"plateau_tol": 0.01, "min_checkpoints": 60})
    (row,) = read_rows(results, "diffusion", spec)
    assert row["exponent"] is None and row["plateau_step"] == 500 and row["motion"] == "no exponent"
    assert row["note"] == "51 checkpoints after the plateau (step 500); need 60"
    assert read_rows(results, "diffusion_msd", spec) == []
    # start_fraction 0.8 and max_checkpoints 6: the window 800..1000 (21 checkpoints) read every ceil(21 / 6) = 4th
    diffusion_run(spec, ckpt, results, {"plateau_tol": 0.01, "start_fraction": 0.8, "max_checkpoints": 6,
                                        "min_checkpoints": 3})
    (row,) = read_rows(results, "diffusion", spec)
    assert (row["start_step"], row["end_step"], row["n_checkpoints"], row["thin_stride"]) == (800, 1000, 6, 4)


def test_a_random_walk_under_a_jitter_floor_is_named_by_its_long_lags(tmp_path):
    # a random walk of variance 1 per checkpoint and coordinate plus independent N(0, 1) jitter at every
    # checkpoint: E MSD(L checkpoints) = D (2 + L) exactly. Over all fitted lags (1..25 checkpoints) the floor
    # flattens the log-log slope to that of log(2 + L), 0.72 on the default lags, "subdiffusive"; on the upper
    # two octaves (7..25 checkpoints) it is 0.86: the walk shows, and the motion is named "diffusive".
    # Tolerance: relative SD of each MSD <= sqrt(4 * 25 / (3 * 51 * 200)) + jitter terms ~ 0.06, so the
    # slopes' SDs are ~0.03 (all lags) and ~0.05 (long lags); 0.12 is over 2 SD of either.
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(size=(101, D)), axis=0) + rng.normal(size=(101, D))
    spec, ckpt, results, _ = synthetic_run(tmp_path, walk)
    diffusion_run(spec, ckpt, results, {"plateau_tol": 0.01})
    (row,) = read_rows(results, "diffusion", spec)
    lags = np.array([m["lag"] for m in read_rows(results, "diffusion_msd", spec)], dtype=float)
    exact = D * (2 + lags / 10)
    short = msd_exponent(lags, exact, lag_max=250).alpha
    long = msd_exponent(lags, exact, lag_min=62.5, lag_max=250).alpha
    assert (round(short, 2), round(long, 2)) == (0.72, 0.86)
    assert row["exponent"] == pytest.approx(short, abs=0.12) and row["exponent_long"] == pytest.approx(long, abs=0.12)
    assert row["motion"] == "diffusive" and motion_label(row["exponent"]) == "subdiffusive"
