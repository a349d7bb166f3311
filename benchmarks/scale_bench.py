"""Scale: conditions and report on a synthetic study of 100 runs and >= 10^6 step rows.

Writes synthetic ``steps``/``directions``/``drift``/``train``/``runs``/``snapshots``/``minimizers``
parts whose exact alpha-beta region is known (every step row is a positive combination of three
binding half-planes, each also present on its own), then runs the conditions computation and the
report writer each in its own process and reads that process's peak RSS (os.wait4).

    python benchmarks/scale_bench.py [--runs-per-point 10] [--points 10] [--steps 10000]

prints rows, wall time and peak RSS per stage and writes benchmarks/out/scale.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from landscope import store
from landscope.config import load_study

MARGIN = 0.1
SEGMENTS = 4


def study(points: int, seeds: int, steps: int):
    """The ExperimentSpec 'scale': a width sweep of ``points`` values times ``seeds`` seeds."""
    cfg = {"device": "cpu", "experiments": {"scale": {
        "model": {"name": "mlp"}, "dataset": {"name": "digits", "n_train": 200}, "steps": steps,
        "snapshot_every": steps // SEGMENTS, "seeds": list(range(seeds)),
        "sweep": {"model.width": [8 * (p + 1) for p in range(points)]},
        "conditions": {"margin": MARGIN, "grid_size": 20}}}}
    return load_study(cfg).experiments["scale"]


def truth(p: int) -> dict:
    """Point p's binding half-planes alpha >= amin, beta >= bmin, alpha - beta <= c and its region."""
    amin, bmin, c = 1.0 + 0.5 * p, 0.2 + 0.1 * p, 2.0 + 0.1 * p
    alpha_min = max(amin, bmin + MARGIN)
    beta = max(bmin, alpha_min - c)
    return {"amin": amin, "bmin": bmin, "c": c, "alpha_min": alpha_min, "beta_at_alpha_min": beta,
            "beta_min": beta}


def binding_rows(t: dict) -> np.ndarray:
    """(u, v, a) of the three half-planes alpha*u - beta*v <= a."""
    return np.array([[-1.0, 0.0, -t["amin"]], [0.0, 1.0, -t["bmin"]], [1.0, 1.0, t["c"]]])


def step_rows(t: dict, n: int, rng, first: bool) -> np.ndarray:
    """n rows implied by the binding ones (positive combinations); the binding ones first if asked."""
    rows = rng.exponential(size=(n, 3)) @ binding_rows(t)
    if first:
        rows[:3] = binding_rows(t)
    return rows


def write_run(results, exp, spec, p: int, rng) -> dict:
    """Every part of one synthetic run; returns its smallest Aiming coefficient."""
    t, name, run = truth(p), exp.name, spec.run
    marks = spec.checkpoint_steps
    aiming = []
    for j in range(len(marks) - 1):
        lo, hi = marks[j], marks[j + 1]
        uva = step_rows(t, hi - lo, rng, first=j == 0)
        loss = uva[:, 1] + 1.0  # v = batch_loss - f_i* with f_i* = 1
        store.write_table(store.part_path(results, "steps", name, run, j), "steps", {
            "experiment": [name] * (hi - lo), "run": [run] * (hi - lo), "step": np.arange(lo, hi),
            "lr": np.full(hi - lo, 0.1), "batch_loss": loss, "batch_loss_at_min": loss - uva[:, 0],
            "batch_loss_star": np.ones(hi - lo), "grad_dot_dir": uva[:, 2],
            "grad_norm": np.ones(hi - lo), "dist_to_min": np.ones(hi - lo)})
        d_steps = [lo] + ([hi] if hi == spec.steps else [])
        coef = rng.uniform(0.5, 2.0, len(d_steps))
        aiming += list(coef)
        store.write_table(store.part_path(results, "directions", name, run, j), "directions", {
            "experiment": [name] * len(d_steps), "run": [run] * len(d_steps), "step": d_steps,
            "full_loss": [1.0] * len(d_steps), "full_loss_at_min": [0.5] * len(d_steps),
            "full_grad_norm": [1.0] * len(d_steps), "full_grad_dot_dir": coef,
            "dist_to_min": [1.0] * len(d_steps), "cos_angle": coef / 2, "aiming_coef": coef})
        store.write_table(store.part_path(results, "drift", name, run, j), "drift", {
            "experiment": [name], "run": [run], "segment": [j], "step": [hi], "max_abs_drift": [0.0],
            "tolerance": [0.0], "replay_wall_s": [0.0]})
    n = spec.steps
    store.write_table(store.part_path(results, "train", name, run), "train", {
        "experiment": [name] * n, "run": [run] * n, "step": np.arange(n), "epoch": np.arange(n) // 12,
        "lr": np.full(n, 0.1), "batch_loss": 1.0 + np.exp(-np.arange(n) / n) + rng.uniform(0, 0.1, n)})
    write_run_tables(results, spec, marks)
    return {"point": spec.point, "aiming_min": min(aiming)}


def write_run_tables(results, spec, marks) -> None:
    """The one-row-per-run (or per-checkpoint) tables a report joins on."""
    name, run = spec.experiment, spec.run
    store.write_table(store.part_path(results, "runs", name, run), "runs", {
        "experiment": [name], "run": [run], "point": [spec.point], "seed": [spec.seed],
        "sweep_json": [json.dumps(spec.sweep)], "model": [json.dumps(spec.model)], "dataset": ["digits"],
        "optimizer": ["sgd"], "lr": [0.1], "batch_size": [spec.batch_size], "steps": [spec.steps],
        "snapshot_every": [spec.snapshot_every], "n_params": [100], "n_train": [200],
        "status": ["completed"], "diverged_step": [None], "train_wall_s": [1.0], "device": ["cpu"],
        "config_hash": [spec.config_hash()], "training_key": [spec.training_key()]})
    k = len(marks)
    store.write_table(store.part_path(results, "snapshots", name, run), "snapshots", {
        "experiment": [name] * k, "run": [run] * k, "step": marks, "full_loss": [1.0] * k,
        "full_grad_norm": [1.0] * k, "param_norm": [1.0] * k, "accuracy": [0.5] * k,
        "test_loss": [1.25] * k, "test_accuracy": [0.45] * k, "generalization_gap": [0.25] * k})
    store.write_table(store.part_path(results, "minimizers", name, run), "minimizers", {
        "experiment": [name], "run": [run], "method": ["last"], "step": [marks[-1]], "full_loss": [1.0]})


def generate(results, points: int, seeds: int, steps: int) -> dict:
    """Write the synthetic study; returns the expected per-point results."""
    exp = study(points, seeds, steps)
    rng = np.random.default_rng(0)
    widths = [8 * (p + 1) for p in range(points)]
    expected: dict[str, dict] = {}
    for spec in exp.runs:
        p = widths.index(spec.model["width"])
        got = write_run(results, exp, spec, p, rng)
        e = expected.setdefault(spec.point, {**truth(p), "aiming_min": np.inf, "n_runs": 0, "n_steps": 0})
        e["aiming_min"] = min(e["aiming_min"], got["aiming_min"])
        e["n_runs"] += 1
        e["n_steps"] += spec.steps
    return expected


# ----------------------------------------------------------------------------------- stages
def stage_conditions(results: str, points: int, seeds: int, steps: int) -> None:
    from landscope.measures.conditions import experiment_conditions

    exp = study(points, seeds, steps)
    files = {t: sorted(glob.glob(f"{results}/tables/{t}/experiment=scale/*/*.parquet"))
             for t in ("steps", "directions", "drift")}
    experiment_conditions(exp, results, files["steps"], files["directions"], files["drift"])


def stage_report(results: str, points: int, seeds: int, steps: int) -> None:
    from landscope.report.index import write_index
    from landscope.report.page import write_experiment_report

    exp = study(points, seeds, steps)
    write_experiment_report(results, "scale", Path(results).parent / "scale.html",
                            runs=[r.run for r in exp.runs])
    write_index(results, ["scale"], Path(results).parent / "index.html")


STAGES = {"conditions": stage_conditions, "report": stage_report}


def measure(stage: str, results, points: int, seeds: int, steps: int) -> dict:
    """Run one stage in a fresh interpreter; its wall time and peak RSS (from os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--results", str(results),
                             "--points", str(points), "--seeds", str(seeds), "--steps", str(steps)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed with exit code {proc.returncode}")
    return {"stage": stage, "wall_s": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024}


def baseline_rss_mb() -> float:
    """Peak RSS of an interpreter that only imports landscope.store and torch (what every stage pays)."""
    proc = subprocess.Popen([sys.executable, "-c", "import torch, landscope.store, duckdb, polars"])
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--stage", choices=sorted(STAGES))
    ap.add_argument("--results")
    args = ap.parse_args()
    if args.stage:
        STAGES[args.stage](args.results, args.points, args.seeds, args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        t0 = time.perf_counter()
        generate(results, args.points, args.seeds, args.steps)
        out = {"runs": args.points * args.seeds, "step_rows": args.points * args.seeds * args.steps,
               "generate_wall_s": time.perf_counter() - t0, "baseline_rss_mb": baseline_rss_mb(),
               "stages": [measure(s, results, args.points, args.seeds, args.steps) for s in STAGES]}
    print(json.dumps(out, indent=1))
    dest = Path(__file__).parent / "out" / "scale.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
