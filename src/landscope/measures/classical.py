"""The classical conditions beside alpha-beta, as best constants along a trajectory (table ``condition_constants``).

Each condition is a per-row ratio r_k whose minimum over the rows is the best constant (the largest mu / theta
that holds at every row); with x_K standing in for the minimizer and f* for the optimal value:

    pl              mu    = (1/2) ||g||^2 / (f - f*)^(2/delta)         rows with f - f* > 0
    aiming          theta = <g, x - x_K> / f                           rows with f > 0
    qcvx            theta = <g, x - x_K> / (f - f*)                    rows with f - f* > 0
    star_convexity  theta - 1 (QCvx with theta = 1: holds where >= 0)  rows with f - f* > 0
    rsi             mu    = <g, x - x_K> / ||x - x_K||^2
    eb              mu    = ||g|| / ||x - x_K||
    qg              mu    = 2 (f - f*) / ||x - x_K||^2

Scope "full_batch" reads the ``directions`` rows (f the full loss, f* = f(x_K)); scope "mini_batch" the ``steps``
rows (f = f_{i_k}, g its gradient): there f* is f_{i_k}(x_K) for qcvx, star_convexity and qg (the alpha-beta
condition's u_k) and the batch's own minimum f_{i_k}* for pl. Rows at x_K (distance 0), non-finite rows and
rows outside a condition's domain (above) are left out and counted in ``note``. alpha_beta's constant is the
region's smallest alpha (the same linear programs as condition_summary, passed in as ``region``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

SCOPES = ("full_batch", "mini_batch")
CONDITIONS = ("alpha_beta", "pl", "aiming", "qcvx", "star_convexity", "rsi", "eb", "qg")
REFERENCE = {  # which f* each (scope, condition) uses, stated in the table's f_star column
    ("full_batch", "alpha_beta"): "f_i = f, f_i* = f* = f(x_K) (full batch: QCvx with theta = alpha - beta)",
    ("mini_batch", "alpha_beta"): "f_i(x_K) and f_i* = the batch's own minimum",
    ("full_batch", "pl"): "f(x_K)", ("mini_batch", "pl"): "f_i* (the batch's own minimum)",
    ("full_batch", "aiming"): "0", ("mini_batch", "aiming"): "0",
    ("full_batch", "qcvx"): "f(x_K)", ("mini_batch", "qcvx"): "f_i(x_K)",
    ("full_batch", "star_convexity"): "f(x_K)", ("mini_batch", "star_convexity"): "f_i(x_K)",
    ("full_batch", "rsi"): "-", ("mini_batch", "rsi"): "-",
    ("full_batch", "eb"): "-", ("mini_batch", "eb"): "-",
    ("full_batch", "qg"): "f(x_K)", ("mini_batch", "qg"): "f_i(x_K)",
}


def scope_arrays(scope: str, rows: dict) -> dict:
    """The common inputs of one scope from its table's columns: f, f_ref (f at x_K), f_low (the lower reference
    PL uses), g (gradient norm), a (<g, x - x_K>), d (||x - x_K||), run (and run_id, its integer code), step."""
    if scope == "full_batch":
        f, fk = rows["full_loss"], rows["full_loss_at_min"]
        out = dict(f=f, f_ref=fk, f_low=fk, g=rows["full_grad_norm"], a=rows["full_grad_dot_dir"])
    else:
        out = dict(f=rows["batch_loss"], f_ref=rows["batch_loss_at_min"], f_low=rows["batch_loss_star"],
                   g=rows["grad_norm"], a=rows["grad_dot_dir"])
    out = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    out["d"] = np.asarray(rows["dist_to_min"], dtype=np.float64)
    out["run"] = np.asarray(rows["run"]).astype(str)
    out["run_id"] = np.unique(out["run"], return_inverse=True)[1]  # integer codes: cheap to sort by
    out["step"] = np.asarray(rows["step"], dtype=np.int64)
    return out


def ratios(condition: str, x: dict, delta: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-row ratio of a (non alpha-beta) condition, the rows in its domain, and what the domain leaves out."""
    f, g, a, d = x["f"], x["g"], x["a"], x["d"]
    gap = f - (x["f_low"] if condition == "pl" else x["f_ref"])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if condition == "pl":
            return 0.5 * g**2 / gap ** (2.0 / delta), gap > 0, "f - f* <= 0 (holds for every mu)"
        if condition == "aiming":
            return a / f, f > 0, "f <= 0"
        if condition == "qcvx":
            return a / gap, gap > 0, "f - f* <= 0"
        if condition == "star_convexity":
            return a / gap - 1.0, gap > 0, "f - f* <= 0"
        if condition == "rsi":
            return a / d**2, np.ones(len(f), bool), ""
        if condition == "eb":
            return g / d, np.ones(len(f), bool), ""
        if condition == "qg":
            return 2.0 * gap / d**2, np.ones(len(f), bool), ""
    raise ValueError(f"unknown condition {condition!r}")


def largest_gap(run: np.ndarray, step: np.ndarray) -> int | None:
    """The largest step gap between consecutive rows of a run (None without two rows in any run): one
    sort by (run, step), then one pass, instead of a mask per run."""
    if len(step) < 2:
        return None
    order = np.lexsort((step, run))  # a no-op on rows already in (run, step) order
    run, step = run[order], step[order]
    same = run[1:] == run[:-1]
    return int(np.diff(step)[same].max()) if same.any() else None


def _note(counts: dict[str, int]) -> str:
    return "; ".join(f"{n} rows excluded: {why}" for why, n in counts.items() if n)


def _ab_row_ok(u, v, a, margin: float) -> np.ndarray:
    """Rows that on their own admit a pair (alpha >= beta + margin, beta >= 0): along (1, 1) the slack changes by
    v - u per unit of beta, so a row holds for a large beta when u < v, else only at beta = 0 (margin u <= a)."""
    return (u < v) | (margin * u <= a)


def _first_infeasible_step(step, u, v, a, margin, region) -> int | None:
    """The first step at which the rows up to it admit no pair, for rows whose whole set admits none (a
    prefix only loses pairs: binary search)."""
    steps = np.unique(step)
    lo, hi = 0, len(steps) - 1  # rows up to steps[hi] are infeasible; find the smallest such index
    while lo < hi:
        mid = (lo + hi) // 2
        m = step <= steps[mid]
        if region(u[m], v[m], a[m], margin).feasible:
            lo = mid + 1
        else:
            hi = mid
    return int(steps[lo])


def constant_row(condition: str, scope: str, x: dict, keep: np.ndarray, delta: float, margin: float,
                 region: Callable) -> dict:
    """One condition_constants row (without experiment, point, run) over the rows ``keep`` of ``x``."""
    at_min = keep & (x["d"] == 0)
    base = keep & (x["d"] != 0)
    why = {"at x_K (distance 0)": int(at_min.sum())}
    out = dict(condition=condition, scope=scope, f_star=REFERENCE[(scope, condition)], constant=None,
               constant_step=None, holds=False, first_fail_step=None, fraction_positive=None, n_rows=0,
               spacing=None)
    if condition == "alpha_beta":
        u, a = x["f"] - x["f_ref"], x["a"]
        v = x["f"] - (x["f_ref"] if scope == "full_batch" else x["f_low"])
        fin = base & np.isfinite(u) & np.isfinite(v) & np.isfinite(a)
        why["not finite"] = int((base & ~fin).sum())
        u, v, a, step = u[fin], v[fin], a[fin], x["step"][fin]
        order = np.argsort(step, kind="stable")
        u, v, a, step = u[order], v[order], a[order], step[order]
        out.update(n_rows=int(fin.sum()), spacing=largest_gap(x["run_id"][fin], x["step"][fin]))
        if not len(u):
            return {**out, "note": _note(why) or "no rows"}
        reg = region(u, v, a, margin)
        ok = _ab_row_ok(u, v, a, margin)
        out.update(constant=reg.alpha_min if reg.feasible else None, holds=bool(reg.feasible),
                   fraction_positive=float(ok.mean()),
                   first_fail_step=None if reg.feasible else _first_infeasible_step(step, u, v, a, margin, region))
        extra = f"constant = smallest alpha (beta = {reg.beta_at_alpha_min:.6g}), margin {margin:g}" \
            if reg.feasible else f"no pair with alpha >= beta + {margin:g}, beta >= 0"
        return {**out, "note": "; ".join(s for s in (extra, _note(why)) if s)}
    r, domain, outside = ratios(condition, x, delta)
    fin = base & domain & np.isfinite(r)
    why[outside or "outside the domain"] = int((base & ~domain).sum())
    why["not finite"] = int((base & domain & ~np.isfinite(r)).sum())
    out.update(n_rows=int(fin.sum()), spacing=largest_gap(x["run_id"][fin], x["step"][fin]))
    if not fin.any():
        return {**out, "note": _note(why) or "no rows"}
    r, step = r[fin], x["step"][fin]
    i = int(np.argmin(r))
    holds_k = r >= 0 if condition == "star_convexity" else r > 0
    fails = step[~holds_k]
    out.update(constant=float(r[i]), constant_step=int(step[i]), holds=bool(holds_k.all()),
               first_fail_step=int(fails.min()) if len(fails) else None, fraction_positive=float(holds_k.mean()))
    extra = f"delta = {delta:g}" if condition == "pl" else ""
    return {**out, "note": "; ".join(s for s in (extra, _note(why)) if s)}


def condition_constants(experiment: str, point: str, runs: list[str], tables: dict[str, dict], delta: float,
                        margin: float, region: Callable) -> list[dict]:
    """condition_constants rows of one sweep point: every condition in both scopes, for each run and "all".

    ``tables`` maps "full_batch" to the directions columns and "mini_batch" to the steps columns (numpy arrays);
    ``region(u, v, a, margin)`` returns the alpha-beta constants (feasible, alpha_min, beta_at_alpha_min)."""
    rows = []
    for scope in SCOPES:
        x = scope_arrays(scope, tables[scope])
        for run in [*runs, "all"]:
            keep = np.ones(len(x["f"]), bool) if run == "all" else x["run"] == run
            for condition in CONDITIONS:
                row = constant_row(condition, scope, x, keep, delta, margin, region)
                if row["constant"] is not None and not math.isfinite(row["constant"]):
                    row["constant"] = None
                rows.append(dict(experiment=experiment, point=point, run=run, **row))
    return rows
