"""Curvature of the loss landscape at a run's checkpoints, from Hessian-vector products.

The per-run ``curvature`` job (:func:`curvature_run`) measures every ``every``-th checkpoint on a
fixed evaluation subset (:func:`eval_subset`) with the operator and estimators of
landscope.measures.hvp (:func:`measure_operator`: SLQ top eigenvalues, lambda_min and negative
fraction, Hutchinson and Hutch++ traces), and sets the sharpness against the optimizer's stability
threshold:

- :func:`adam_preconditioner` and :func:`preconditioned_operator`: ``v -> D H D`` with
  D = P^{-1/2}, P Adam's preconditioner read from the optimizer state, whose largest eigenvalue is
  the preconditioned sharpness;
- :func:`eos_threshold`: the stability threshold of the optimizer's linearised update on a
  quadratic (2/lr for gradient descent, 38/lr for Adam with beta1 = 0.9);
  :func:`edge_of_stability` compares the sharpness with it.

The same job adds the curvature of each parameter block's diagonal Hessian block
(landscope.measures.blocks), the stationarity of all checkpoints and the flatness row at x_K
(landscope.measures.flatness).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from landscope import store
from landscope.measures.blocks import measure_blocks, parameter_blocks
from landscope.measures.flatness import flatness_row, stationarity
from landscope.measures.hvp import (
    HVP,
    HessianOperator,
    hessian_operator,
    hutchinson,
    hutchpp,
    lanczos,
    seeded_generator,
    slq,
)
from landscope.problem.build import build_problem
from landscope.problem.evaluate import flatten, trainable_parameters
from landscope.problem.optim import OPTIMIZER_DEFAULTS
from landscope.settings import TOP_COLUMNS, curvature_settings
from landscope.trajectory.replay import attach_recording
from landscope.trajectory.rundir import checkpoint_path, load_checkpoint, load_minimizer, run_manifest

F64 = torch.float64


# ----------------------------------------------------------------------------------- edge of stability
ADAM_TYPES = ("adam", "adamw", "nadamw")


def adam_preconditioner(opt_state: dict, params: list[torch.Tensor], optimizer: dict) -> torch.Tensor:
    """Adam's diagonal preconditioner at a checkpoint, flat in the parameters' order (float64).

    The update is x <- x - lr m_t / P with P = (1 - b1^t) (sqrt(v_t / (1 - b2^t)) + eps) (Adam,
    AdamW; NAdamW divides the same way), read from the optimizer's ``state_dict()``: ``state[i]``
    holds ``exp_avg_sq`` (v_t) and ``step`` (t) of the i-th parameter of the (single-group) optimizer
    built on ``model.parameters()``. A parameter without state (it never had a gradient) gets P = inf
    (it does not move). Cohen et al. (2022, arXiv 2207.14484) define the preconditioned sharpness as
    the largest eigenvalue of P^{-1} H.
    """
    b1, b2 = (float(b) for b in (optimizer.get("betas") or OPTIMIZER_DEFAULTS["betas"]))
    eps = float(optimizer.get("eps") if optimizer.get("eps") is not None else OPTIMIZER_DEFAULTS["eps"])
    ids = [i for g in opt_state["param_groups"] for i in g["params"]]
    if len(ids) != len(params):
        raise ValueError(f"adam_preconditioner: the optimizer state has {len(ids)} parameters, the model "
                         f"{len(params)}; the checkpoint does not belong to this model")
    out = []
    for i, p in zip(ids, params):
        st = opt_state["state"].get(i)
        if not st or "exp_avg_sq" not in st:
            out.append(torch.full((p.numel(),), math.inf, dtype=F64))
            continue
        t = float(st["step"])
        v = st["exp_avg_sq"].detach().reshape(-1).to("cpu", F64)
        out.append((1 - b1 ** t) * ((v / (1 - b2 ** t)).sqrt() + eps))
    return torch.cat(out)


def preconditioned_operator(hvp: HVP, precond: torch.Tensor) -> HVP:
    """``v -> P^{-1/2} H P^{-1/2} v`` (symmetric, same eigenvalues as P^{-1} H) for a diagonal P > 0."""
    d = precond.to(F64).rsqrt()

    def op(v: torch.Tensor) -> torch.Tensor:
        return d.to(v.device) * hvp(d.to(v.device) * v).to(F64)

    return op


def eos_threshold(optimizer: dict, lr: float) -> tuple[float, str]:
    """(threshold, rule): the largest curvature (preconditioned for Adam types) at which the
    optimizer's update, linearised on a quadratic with frozen preconditioner, stays stable.

    The boundary is where an eigenmode flips sign every step (z = -1 in the recurrence):
    gradient descent 2/lr; heavy-ball momentum b (PyTorch SGD) 2(1 + b)/lr; Nesterov
    2(1 + b)/(lr (1 + 2b)); Adam/AdamW with EMA momentum b1 (2 + 2 b1)/((1 - b1) lr), 38/lr at
    b1 = 0.9 (Cohen et al. 2022); NAdamW's Nesterov EMA 2(1 + b1)/((1 - b1)(1 + 2 b1) lr).
    SPS_max and NGN never step further than lr: 2/lr is their threshold at the largest step.
    The other adaptive methods (DecSPS, AdaGrad-norm-max, normalized SGD) have none: NaN, 'none'.
    At lr = 0 the optimizer does not move and every threshold is infinite, a comparison that cannot
    fail: NaN, 'lr_zero' (not applicable).
    """
    name = optimizer.get("name", "sgd")
    if not lr > 0:
        return math.nan, "lr_zero"

    def get(key):
        return optimizer.get(key) if optimizer.get(key) is not None else OPTIMIZER_DEFAULTS[key]

    if name == "sgd":
        b = float(get("momentum"))
        if b == 0:
            return 2.0 / lr, "gd"
        if get("nesterov"):
            return 2 * (1 + b) / (lr * (1 + 2 * b)), "nesterov"
        return 2 * (1 + b) / lr, "heavy_ball"
    if name in ("adam", "adamw"):
        b1 = float(get("betas")[0])
        return 2 * (1 + b1) / ((1 - b1) * lr), "adam"
    if name == "nadamw":
        b1 = float(get("betas")[0])
        return 2 * (1 + b1) / ((1 - b1) * (1 + 2 * b1) * lr), "nadam"
    if name in ("sps_max", "ngn"):
        return 2.0 / lr, "gd_max_step"
    return math.nan, "none"


# ----------------------------------------------------------------------------------- per checkpoint
def eval_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a fixed random subset (the same at every checkpoint of a run)."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=seeded_generator(seed, "cpu"))[:size].sort().values


def measure_operator(op: HessianOperator, settings: dict, device="cpu",
                     precond: torch.Tensor | None = None) -> tuple[dict, list[dict]]:
    """One checkpoint's curvature row and its SLQ spectrum rows from one Hessian operator.

    The top-k eigenvalues and lambda_min come from the SLQ probes' Lanczos runs themselves
    (per rank the best Ritz value over probes), so they cost no extra products. Hutchinson and
    Hutch++ each spend ``hutchinson_probes`` products (Hutch++ is NaN below 4). With ``precond``
    (Adam's P, :func:`adam_preconditioner`) one more Lanczos run of ``lanczos_iters`` products gives
    the preconditioned sharpness (else NaN). Per-estimator wall seconds are in the ``*_wall_s`` keys.
    """
    s = settings
    nan = math.nan
    t0 = time.perf_counter()
    dens = slq(op, op.n, s["slq_probes"], s["lanczos_iters"], s["seed"], device)
    top = dens.top(s["top_k"])
    neg, neg_se = dens.negative_fraction()
    zero, zero_se = dens.near_zero_fraction()
    t1 = time.perf_counter()
    trace, trace_se, _ = hutchinson(op, op.n, s["hutchinson_probes"], s["seed"] + 1, device)
    t2 = time.perf_counter()
    pp, pp_se = (nan, nan)
    if s["hutchinson_probes"] >= 4:
        pp, pp_se, _ = hutchpp(op, op.n, s["hutchinson_probes"], s["seed"] + 4, device)
    t3 = time.perf_counter()
    pre = nan
    if precond is not None:
        v0 = torch.randn(op.n, dtype=F64, generator=seeded_generator(s["seed"] + 5, device), device=device)
        pre = float(lanczos(preconditioned_operator(op, precond), v0, s["lanczos_iters"]).ritz[-1])
    t4 = time.perf_counter()
    row = {c: (top[i] if i < len(top) else None) for i, c in enumerate(TOP_COLUMNS)}
    row.update(lambda_min=dens.bottom, neg_fraction=neg, neg_fraction_se=neg_se,
               near_zero_fraction=zero, near_zero_fraction_se=zero_se, density_sigma=dens.sigma,
               trace=trace, trace_se=trace_se, trace_hutchpp=pp, trace_hutchpp_se=pp_se,
               precond_lambda_max=pre, n_hvp=op.n_hvp, slq_wall_s=t1 - t0, hutchinson_wall_s=t2 - t1,
               hutchpp_wall_s=t3 - t2, precond_wall_s=t4 - t3)
    spectrum = [{"probe": j, "node": i, "ritz": float(r), "weight": float(w)}
                for j, p in enumerate(dens.probes) for i, (r, w) in enumerate(zip(p.ritz, p.weights))]
    return row, spectrum


def edge_of_stability(lambda_max: float, lr: float, optimizer: dict | None = None,
                      precond_lambda_max: float = math.nan) -> dict:
    """Sharpness against the optimizer's stability threshold (:func:`eos_threshold`).

    ``two_over_lr`` is always 2/lr (gradient descent's threshold, the classic reference line);
    ``eos_sharpness`` is the preconditioned sharpness for Adam types and lambda_max otherwise;
    ``above_eos`` compares it with ``eos_threshold`` (None where the optimizer has no threshold, and
    at lr = 0, rule 'lr_zero', where the optimizer does not move).
    """
    optimizer = optimizer or {"name": "sgd"}
    two = 2.0 / lr if lr > 0 else math.inf
    threshold, rule = eos_threshold(optimizer, lr)
    sharp = precond_lambda_max if optimizer.get("name") in ADAM_TYPES else lambda_max
    above = None if not (math.isfinite(sharp) and not math.isnan(threshold)) else bool(sharp > threshold)
    return {"two_over_lr": two, "eos_threshold": threshold, "eos_rule": rule, "eos_sharpness": sharp,
            "above_eos": above}


def measured_steps(steps: list[int], every: int, minimizer_step: int | None) -> list[int]:
    """Every ``every``-th checkpoint, always the last one and x_K's."""
    keep = set(steps[::every]) | {steps[-1]}
    if minimizer_step is not None and minimizer_step in steps:
        keep.add(minimizer_step)
    return sorted(keep)


# ----------------------------------------------------------------------------------- per run
def curvature_run(spec, ckpt_dir, minimizer_path, results, settings: dict) -> dict:
    """Measure one trained run; write its ``curvature``, ``spectrum``, ``block_curvature``,
    ``stationarity`` and ``flatness`` parts.

    Each measured checkpoint's model state is restored into the run's model (as a resumed run would
    be) and measured on the same evaluation subset, the whole model and then each parameter block
    (landscope.measures.blocks, after the whole model's products, so its rows do not move).
    Stationarity reads every checkpoint (not only the ``every`` stride) and x_K from the minimizer
    file. Flatness (sublevel radius, LLC) is measured at
    the minimizer file's parameters on the same subset; its log-volume proxy uses the top
    eigenvalues of the curvature row at x_K's step (NaN when that step has none).
    Returns {'rows': n, 'wall_s': s, 'stationarity_s': s, 'flatness_s': s, 'llc_s': s}.
    """
    s = curvature_settings(settings)
    t_run = time.perf_counter()
    ckpt_dir = Path(ckpt_dir)
    manifest = run_manifest(spec, ckpt_dir, "curvature")
    chash, key = spec.config_hash(), spec.training_key()
    minimizer = load_minimizer(minimizer_path) if minimizer_path else None
    x_k = minimizer.get("step") if minimizer else None
    all_steps = [c["step"] for c in manifest["checkpoints"]]
    steps = measured_steps(all_steps, s["every"], x_k)
    problem = attach_recording(build_problem(spec), ckpt_dir)  # a recorded loop's own learning rates
    idx = eval_subset(len(problem.data), s["eval_samples"], s["seed"]).to(problem.device)
    x, y = problem.data.x[idx], problem.data.y[idx]
    rows, spec_rows, block_rows = [], [], []
    points = {}  # flat parameters of each checkpoint read (stationarity needs every one)
    blocks = parameter_blocks(problem.model, s["blocks"])
    adam = spec.optimizer.get("name") in ADAM_TYPES
    for step in steps:
        t0 = time.perf_counter()
        state = load_checkpoint(checkpoint_path(ckpt_dir, step), key)
        problem.model.load_state_dict(state["model"])
        points[step] = flatten(trainable_parameters(problem.model))
        op = hessian_operator(problem.model, problem.loss_fn, x, y)
        precond = (adam_preconditioner(state["optimizer"], list(problem.model.parameters()), spec.optimizer)
                   if adam and state["optimizer"]["state"] else None)  # step 0: no state yet
        if precond is not None and len(precond) != op.n:
            raise ValueError(f"curvature {spec.experiment}/{spec.run}: parameters without requires_grad; "
                             "the preconditioned sharpness needs every parameter trainable")
        row, spectrum = measure_operator(op, s, problem.device, precond)
        lr = problem.lr(step)
        row.update(step=step, is_minimizer=step == x_k, lr=lr, eval_samples=len(idx),
                   **edge_of_stability(row["lambda_max"], lr, spec.optimizer, row["precond_lambda_max"]),
                   wall_s=time.perf_counter() - t0)
        rows.append(row)
        spec_rows += [{"step": step, **r} for r in spectrum]
        block_rows += [{**b, "step": step, "is_minimizer": step == x_k, "lr": lr, "eval_samples": len(idx),
                        "eos_threshold": row["eos_threshold"], "eos_rule": row["eos_rule"]}
                       for b in measure_blocks(op, op.n, blocks, s, problem.device)]
    meta = {**store.provenance(chash, str(problem.device)), "settings": json.dumps(s, sort_keys=True)}
    _write(results, "curvature", spec, rows, meta)
    _write(results, "spectrum", spec, spec_rows, meta)
    _write(results, "block_curvature", spec, block_rows, meta)

    t0 = time.perf_counter()
    for step in all_steps:  # the checkpoints the curvature loop skipped (every > 1)
        if step not in points:
            problem.model.load_state_dict(load_checkpoint(checkpoint_path(ckpt_dir, step), key)["model"])
            points[step] = flatten(trainable_parameters(problem.model))
    if minimizer is not None:
        problem.model.load_state_dict(minimizer["model"])
    else:  # x_K: the model as the last checkpoint left it, whichever was read last
        problem.model.load_state_dict(load_checkpoint(checkpoint_path(ckpt_dir, all_steps[-1]), key)["model"])
    pairs, run_level = stationarity(all_steps, [points[s] for s in all_steps],
                                    flatten(trainable_parameters(problem.model)))
    t_stat = time.perf_counter() - t0
    _write(results, "stationarity", spec, [{**p, **run_level} for p in pairs], meta)

    at_min = next((r for r in rows if r["step"] == x_k), None)
    tops = [at_min[c] for c in TOP_COLUMNS] if at_min else []
    flat = flatness_row(problem.model, problem.loss_fn, x, y, s, tops, at_min["lambda_min"] if at_min else None)
    flat.update(step=x_k if x_k is not None else all_steps[-1], eval_samples=len(idx),
                stationarity_wall_s=t_stat)
    _write(results, "flatness", spec, [flat], meta)
    return {"rows": len(rows), "wall_s": time.perf_counter() - t_run, "stationarity_s": t_stat,
            "flatness_s": flat["flatness_wall_s"], "llc_s": flat["llc_wall_s"]}


def _write(results, table: str, spec, rows: list[dict], meta: dict) -> None:
    cols = [c for c in store.SCHEMAS[table] if c not in ("experiment", "run")]
    columns = {"experiment": [spec.experiment] * len(rows), "run": [spec.run] * len(rows),
               **{c: [r[c] for r in rows] for c in cols}}
    store.write_table(store.part_path(results, table, spec.experiment, spec.run), table, columns, meta)
