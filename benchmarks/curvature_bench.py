"""Curvature estimators on the default study's largest MLP: products and seconds per checkpoint.

1. Hessian-vector products until lambda_max is within 1e-3 relative of a 100-step Lanczos
   reference: Lanczos (Ritz value of the leading j x j block) against power iteration.
2. Seconds per checkpoint of each estimator at the default ``curvature:`` settings.

The model is 784-512-512-10 on 10k Fashion-MNIST images when the data is installed, else
64-256-256-10 on scikit-learn digits; it is trained for ``--steps`` SGD steps first so the
Hessian is that of a partly trained network, not of the initialisation.
Prints a table and writes benchmarks/out/curvature.json.

    .venv/bin/python benchmarks/curvature_bench.py [--steps 300] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from landscope import curvature as cv
from landscope.config import load_study
from landscope.data import locate_fashion
from landscope.trajectory import build_problem

OUT = Path(__file__).parent / "out" / "curvature.json"
TOL = 1e-3


def largest_mlp_spec(threads: int):
    """The default study's largest MLP run (Fashion-MNIST width 512, else digits width 256)."""
    fashion = locate_fashion(None) is not None
    exp = {"model": {"name": "mlp", "depth": 3, "width": 512 if fashion else 256},
           "dataset": {"name": "fashion_mnist", "n_train": 10000} if fashion else {"name": "digits"},
           "optimizer": {"name": "sgd", "lr": 0.09}, "batch_size": 64, "steps": 2000,
           "snapshot_every": 1000, "seeds": [0]}
    study = load_study({"device": "cpu", "torch_threads": threads, "experiments": {"bench": exp}})
    return study.experiments["bench"].runs[0]


def train_briefly(problem, steps: int, lr: float) -> None:
    """Plain SGD on the run's own batches, so the measured Hessian is off the initialisation."""
    opt = torch.optim.SGD(problem.model.parameters(), lr=lr)
    problem.model.train()
    for step in range(steps):
        idx = problem.batch(step)
        loss = problem.loss_fn(problem.model, problem.model(problem.data.x[idx]), problem.data.y[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def products_to_tolerance(op, ref: float) -> dict:
    """Products until |estimate - ref| <= TOL * |ref| for Lanczos and power iteration."""
    run = cv.lanczos(op, torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), 60)
    lanczos_n = next((j for j in range(1, run.n_hvp + 1)
                      if abs(float(run.ritz_after(j)[-1]) - ref) <= TOL * abs(ref)), None)
    history = []
    cv.power_iteration(op, op.n, tol=0.0, max_iters=500, seed=1, history=history)
    power_n = next((i + 1 for i, h in enumerate(history) if abs(h - ref) <= TOL * abs(ref)), None)
    return {"lanczos": lanczos_n, "power": power_n}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def estimator_seconds(problem, x, y, s: dict) -> dict:
    """Wall seconds of each estimator at settings ``s`` (each on a fresh operator), and products."""
    rows = {}

    def fresh():
        return cv.hessian_operator(problem.model, problem.loss_fn, x, y)

    op, rows["operator (graph build)"] = timed(fresh)
    _, one = timed(lambda: op(torch.ones(op.n, dtype=torch.float64)))
    rows["one product"] = one
    jobs = {
        f"lanczos top-{s['top_k']} + lambda_min ({s['lanczos_iters']} it)":
            lambda o: cv.top_eigenvalues(o, o.n, s["top_k"], s["lanczos_iters"], s["seed"]),
        f"slq ({s['slq_probes']} x {s['lanczos_iters']})":
            lambda o: cv.slq(o, o.n, s["slq_probes"], s["lanczos_iters"], s["seed"]),
        f"hutchinson ({s['hutchinson_probes']})": lambda o: cv.hutchinson(o, o.n, s["hutchinson_probes"], s["seed"]),
        f"power iteration (tol {TOL})": lambda o: cv.power_iteration(o, o.n, tol=TOL, seed=s["seed"]),
        "checkpoint total (as the rule)": lambda o: cv.measure_operator(o, s),
    }
    products = {}
    for name, job in jobs.items():
        o = fresh()
        _, rows[name] = timed(lambda: job(o))
        products[name] = o.n_hvp
    return {"seconds": rows, "products": products}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="SGD steps before measuring")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    spec = largest_mlp_spec(args.threads)
    problem = build_problem(spec)
    train_briefly(problem, args.steps, float(spec.optimizer["lr"]))
    s = cv.settings_of({})
    idx = cv.eval_subset(len(problem.data), s["eval_samples"], s["seed"])
    x, y = problem.data.x[idx], problem.data.y[idx]
    op = cv.hessian_operator(problem.model, problem.loss_fn, x, y)
    ref = cv.lanczos(op, cv.rademacher(op.n, torch.Generator().manual_seed(0)), 100).ritz[-1].item()
    need = products_to_tolerance(op, ref)
    cost = estimator_seconds(problem, x, y, s)
    report = {"model": spec.model, "dataset": spec.dataset["name"], "n_params": op.n,
              "eval_samples": len(idx), "trained_steps": args.steps, "threads": args.threads,
              "lambda_max_ref": ref, "products_to_1e-3": need, **cost, "settings": s,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(f"{spec.dataset['name']} MLP {spec.model['width']} wide, {op.n} parameters, "
          f"{len(idx)} evaluation samples, lambda_max = {ref:.6g}")
    print(f"products for lambda_max to {TOL:g} relative: Lanczos {need['lanczos']}, power {need['power']}")
    print(f"{'estimator':45s} {'products':>8s} {'seconds':>8s}")
    for name, sec in cost["seconds"].items():
        print(f"{name:45s} {cost['products'].get(name, 1 if name == 'one product' else 0):8d} {sec:8.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
