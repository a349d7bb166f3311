"""What each classical condition's standard theorem promises with the measured constants, beside what the run
achieved (tables ``condition_bounds`` and ``condition_bound_curve``; docs/conditions.md derives every bound).

Each theorem (THEOREMS) is SGD with a constant step gamma under one condition, evaluated with the condition's
best constant (``condition_constants``), L = the largest measured lambda_max (a lower estimate of the
smoothness), the gradient noise sigma^2 (a path average) or, for alpha-beta, sigma_int^2 and the pair of the
exact region that minimises the bound (a Charnes-Cooper LP), D0 = ||x_0 - x_K|| and Delta_k = f(x_k) - f(x_K)
on the full batch. Where an assumption fails (momentum, Adam, a schedule, a failed condition, a step size out
of range, no L) the row says which instead of a number. Per point the rows are each run's and "all": the worst
case over the point's runs (largest L, noise, D0, gap and achieved value, the constants of the "all" rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import duckdb
import numpy as np
from scipy.optimize import linprog

from landscope import store
from landscope.measures import classical, conditions

NAN = math.nan
CURVE_POINTS = 200  # at most this many curve steps per run and condition
PLAIN_PL_DELTA = 2.0  # pl's ratio is (1/2)||g||^2 / gap^(2/delta): delta = 2 is the plain PL inequality
SMOOTHNESS_UNKNOWN = "L unknown: curvature not measured (curvature.enabled: false)"
QG_WHY = "quadratic growth alone promises no rate (PL implies QG, not the converse: Karimi et al. 2016)"
NOISE_SOURCE = ("mean over the full-batch rows k that have a replayed step of max(0, ||g_k||^2 - ||grad f(x_k)||^2), "
                "an unbiased one-batch estimate of E||g - grad f||^2 at x_k; the theorems assume that bound at "
                "every x, not its path average")
FULL_BATCH_NOISE = "0: full-batch gradient descent (batch_size >= n_train)"
SIGMA_INT_SOURCE = "sigma_int^2 = f(x_K) - mean over the replayed steps of the batch's own minimum f_{i_k}*"
ACHIEVED = {
    "last": "f(x_k) - f(x_K), full batch, at the last full-batch row before K (step k = `steps`; the row at x_K "
            "itself is 0 when x_K is the last iterate)",
    "min": "min over the full-batch rows k < K of f(x_k) - f(x_K)",
    "min_f": "min over the full-batch rows k < K of f(x_k) (Aiming compares with 0)",
}
class Theorem(NamedTuple):
    """A condition's theorem: which achieved value it bounds (a key of ACHIEVED), its source, its formula."""

    kind: str
    source: str
    formula: str


QCVX = "D0^2/(2 gamma (theta - L gamma) K) + gamma sigma^2/(2 (theta - L gamma)), gamma < theta/L"
THEOREMS = {
    "alpha_beta": Theorem(
        "min", "Islamov et al. 2024 (NeurIPS), SGD with a constant step under the alpha-beta-condition",
        "min_{k<K} E[Delta_k] <= D0^2/(K gamma (alpha-beta)) + 2 L gamma sigma_int^2/(alpha-beta) + 2 beta "
        "sigma_int^2/(alpha-beta), gamma <= (alpha-beta)/(2L)"),
    "pl": Theorem(
        "last", "Bottou, Curtis & Nocedal 2018 (SIAM Review), Thm 4.6: SGD with a fixed step under PL",
        "E[Delta_k] <= (1 - gamma mu)^k Delta_0 + (1 - (1 - gamma mu)^k) gamma L sigma^2/(2 mu), gamma <= 1/L"),
    "aiming": Theorem(
        "min_f", "Aiming (Liu, Drusvyatskiy, Belkin, Davis & Ma 2023, NeurIPS) in the descent-on-distance "
        "argument of SGD (docs/conditions.md)",
        "min_{k<K} E f(x_k) <= " + QCVX + " (f >= 0)"),
    "qcvx": Theorem(
        "min", "quasar-convex SGD, the descent-on-distance argument (docs/conditions.md; cf. Gower, Sebbouh & "
        "Loizou 2021)", "min_{k<K} E[Delta_k] <= " + QCVX),
    "star_convexity": Theorem(
        "min", "star-convex SGD: the quasar-convex bound with theta = 1 (docs/conditions.md)",
        "min_{k<K} E[Delta_k] <= D0^2/(2 gamma (1 - L gamma) K) + gamma sigma^2/(2 (1 - L gamma)), gamma < 1/L"),
    "rsi": Theorem(
        "last", "restricted secant inequality: Zhang & Yin 2013 for GD, with SGD's noise term (docs/conditions.md)",
        "E[Delta_k] <= (L/2) (rho^k D0^2 + gamma^2 sigma^2/(1 - rho)), rho = 1 - 2 gamma mu + gamma^2 L^2, "
        "gamma < 2 mu/L^2"),
    "eb": Theorem(
        "last", "error bound + L-smooth => PL with mu^2/L (Karimi, Nutini & Schmidt 2016), then Bottou et al. "
        "2018 Thm 4.6", "E[Delta_k] <= the PL bound with mu_PL = mu^2/L, gamma <= 1/L"),
    "qg": Theorem("min", "Karimi, Nutini & Schmidt 2016", "none"),
}


# ----------------------------------------------------------------------------------- the theorems
def pl_bound(k, lr: float, smoothness: float, mu: float, noise: float, gap0: float):
    """Bottou et al. 2018 Thm 4.6 (PL): q^k Delta_0 + (1 - q^k) gamma L sigma^2 / (2 mu), q = 1 - gamma mu."""
    q = (1.0 - lr * mu) ** np.asarray(k, dtype=np.float64)
    return q * gap0 + (1.0 - q) * lr * smoothness * noise / (2.0 * mu)


def qcvx_bound(k, lr: float, smoothness: float, theta: float, noise: float, d0: float):
    """QCvx (and star-convexity, theta = 1; Aiming, on f itself): D0^2/(2 gamma c k) + gamma sigma^2/(2 c)."""
    c = theta - smoothness * lr
    return d0**2 / (2.0 * lr * c * np.asarray(k, dtype=np.float64)) + lr * noise / (2.0 * c)


def rsi_bound(k, lr: float, smoothness: float, mu: float, noise: float, d0: float):
    """RSI: (L/2) (rho^k D0^2 + gamma^2 sigma^2 / (1 - rho)), rho = 1 - 2 gamma mu + gamma^2 L^2."""
    rho = 1.0 - 2.0 * lr * mu + lr**2 * smoothness**2
    return smoothness / 2.0 * (rho ** np.asarray(k, dtype=np.float64) * d0**2 + lr**2 * noise / (1.0 - rho))


def ab_bound(k, lr: float, smoothness: float, alpha: float, beta: float, sigma_int: float, d0: float):
    """Islamov et al. 2024: D0^2/(k gamma w) + 2 L gamma s/w + 2 beta s/w, w = alpha - beta, s = sigma_int^2."""
    w = alpha - beta
    return d0**2 / (np.asarray(k, dtype=np.float64) * lr * w) + 2.0 * smoothness * lr * sigma_int / w \
        + 2.0 * beta * sigma_int / w


def ab_pair(u, v, a, margin: float, lr: float, smoothness: float, sigma_int: float, d0: float, k: int):
    """The pair of the alpha-beta region (rows alpha u - beta v <= a, alpha >= beta + margin, beta >= 0) with
    alpha - beta >= 2 L gamma that minimises ab_bound at k: (alpha, beta, bound, at_infinity), or (nan, w_max,
    nan, False) when no pair has alpha - beta >= 2 L gamma (w_max: the largest alpha - beta of the region).

    The bound is (c0 + c1 beta) / (alpha - beta) with c0 = D0^2/(k gamma) + 2 L gamma s, c1 = 2 s; with
    t = 1/(alpha - beta), y = t (alpha, beta) (Charnes-Cooper) it is the LP  min c0 t + c1 y_beta  s.t.
    u y_alpha - v y_beta <= a t,  y_alpha - y_beta = 1,  0 <= t <= 1/max(margin, 2 L gamma),  y >= 0.
    t = 0 is an unbounded direction of the region: the infimum c1 y_beta is approached, not attained."""
    u, v, a = (np.asarray(x, dtype=np.float64) for x in (u, v, a))
    floor = max(margin, 2.0 * smoothness * lr)
    if conditions.lp_min(u, v, a, floor, (1.0, 0.0)) is None:
        widest = conditions.lp_min(u, v, a, margin, (-1.0, 1.0))
        return NAN, (NAN if widest is None else widest[0] - widest[1]), NAN, False
    A, b = conditions.scaled_rows(u, v, a, floor)  # the same half-spaces, at unit scale
    rows = np.column_stack([A[:-1], -b[:-1]])  # homogeneous in (y, t); the margin row is the bound on t
    c0 = d0**2 / (k * lr) + 2.0 * smoothness * lr * sigma_int
    res = linprog(c=[0.0, 2.0 * sigma_int, c0], A_ub=rows if len(rows) else None,
                  b_ub=np.zeros(len(rows)) if len(rows) else None, A_eq=[[1.0, -1.0, 0.0]], b_eq=[1.0],
                  bounds=[(0.0, None), (0.0, None), (0.0, 1.0 / floor)], method="highs-ds")
    if res.status != 0:
        return NAN, NAN, NAN, False
    ya, yb, t = (float(x) for x in res.x)
    if t <= 1e-9:
        return math.inf, math.inf, 2.0 * sigma_int * yb, True
    alpha, beta = ya / t, yb / t
    return alpha, beta, float(ab_bound(k, lr, smoothness, alpha, beta, sigma_int, d0)), False


# ----------------------------------------------------------------------------------- estimates
def smoothness_estimate(lambda_max, eval_samples, n_runs: int = 1) -> tuple[float, str]:
    """L = the largest measured lambda_max (NaN without curvature rows), and how it was estimated."""
    lam = np.asarray(lambda_max, dtype=np.float64)
    ok = np.isfinite(lam)
    if not ok.any():
        return NAN, ""
    samples = ", ".join(str(int(s)) for s in sorted(set(np.asarray(eval_samples)[ok].tolist())))
    runs = f" of {n_runs} runs" if n_runs > 1 else ""
    return float(lam[ok].max()), (f"max lambda_max over {int(ok.sum())} curvature checkpoints{runs} (Lanczos, "
                                  f"eval_samples={samples}): a lower estimate of the smoothness constant the "
                                  "theorems assume")


def gradient_noise(dir_step, full_grad_norm, step_step, grad_norm) -> float:
    """The path average of max(0, ||g_k||^2 - ||grad f(x_k)||^2) over the full-batch rows that have a replayed
    step at the same k (NaN when none); steps unique within each array."""
    _, i, j = np.intersect1d(np.asarray(dir_step), np.asarray(step_step), return_indices=True)
    est = np.maximum(0.0, np.asarray(grad_norm, np.float64)[j] ** 2 - np.asarray(full_grad_norm, np.float64)[i] ** 2)
    est = est[np.isfinite(est)]
    return float(est.mean()) if len(est) else NAN


def assumption_reasons(optimizer: dict, schedule: dict) -> list[str]:
    """Why a run is not the theorems' plain SGD with a constant step (empty when it is)."""
    name, mom = optimizer.get("name", "sgd"), float(optimizer.get("momentum") or 0.0)
    nesterov, wd = bool(optimizer.get("nesterov")), float(optimizer.get("weight_decay") or 0.0)
    out = []
    if name != "sgd" or mom or nesterov:
        extra = ", ".join(s for s in (f"momentum {mom:g}" if mom else "", "nesterov" if nesterov else "") if s)
        out.append(f"theorem for plain SGD; this run uses {name}" + (f" ({extra})" if extra else ""))
    if wd:
        out.append(f"theorem for SGD on f; this run adds weight decay {wd:g} (it descends f + wd/2 ||x||^2)")
    sched = schedule.get("name", "constant")
    if sched not in ("constant", "none"):
        out.append(f"theorem for a constant step; this run's schedule is {sched}")
    return out


def condition_reason(condition: str, row: dict | None) -> str:
    """'' when the condition held along the run (its condition_constants row), else why not."""
    if row is None or row["constant"] is None or not math.isfinite(row["constant"]):
        return "condition not measured (no usable rows)"
    positive = row["constant"] >= 0 if condition == "star_convexity" else row["constant"] > 0
    if row["holds"] and positive:
        return ""
    step = row["first_fail_step"]
    return f"condition fails at step {step}" if step is not None else "condition fails"


def range_reason(condition: str, lr: float, smoothness: float, constant: float) -> str:
    """'' when gamma lies in the theorem's range, else the numbers (and a mu above L, impossible for true
    constants, as a sign that L is underestimated)."""
    lim = {"pl": (1.0 / smoothness, "<=", "1/L"), "eb": (1.0 / smoothness, "<=", "1/L"),
           "qcvx": (constant / smoothness, "<", "theta/L"), "aiming": (constant / smoothness, "<", "theta/L"),
           "star_convexity": (1.0 / smoothness, "<", "1/L"),
           "rsi": (2.0 * constant / smoothness**2, "<", "2 mu/L^2")}[condition]
    out = []
    if condition in ("pl", "eb", "rsi") and constant > smoothness:
        out.append(f"measured mu={constant:.4g} above L={smoothness:.4g}, impossible for true constants "
                   "(L from the sharpness is a lower estimate)")
    ok = lr <= lim[0] if lim[1] == "<=" else lr < lim[0]
    if not ok:
        out.append(f"step size gamma={lr:.4g} above the theorem's range gamma {lim[1]} {lim[2]} = {lim[0]:.4g}")
    return "; ".join(out)


# ----------------------------------------------------------------------------------- one run, one point
@dataclass
class Setting:
    """What the theorems read of one run, or of a point's worst case (run "all")."""

    run: str
    lr: float
    reasons: list[str]  # why the optimizer or the schedule is not the theorems' (empty when it is)
    steps: int  # K
    smoothness: float
    smoothness_source: str
    noise: float
    noise_source: str
    sigma_int: float
    d0: float
    gap0: float
    uva: tuple  # the alpha-beta rows (u, v, a) of the replayed steps, hull-reduced


def achieved_curve(kind: str, step, gap, loss, k_end: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, achieved) from full-batch rows sorted by step. 'last': Delta_k at the rows k < K. 'min' ('min_f'):
    at s = k + 1 after each row k < K (the bound for s steps then covers that row) and at s = K, the minimum of
    Delta (of f) over the rows k < s: the measured rows only, an upper estimate of the minimum over every step."""
    val = np.asarray(loss if kind == "min_f" else gap, dtype=np.float64)
    ok = np.isfinite(val)
    step, val = np.asarray(step, dtype=np.int64)[ok], val[ok]
    if kind == "last":
        return step[step < k_end], val[step < k_end]
    at = np.union1d(step[step < k_end] + 1, [k_end]).astype(np.int64)
    idx = np.searchsorted(step, at, side="left") - 1  # the last row with step < s
    prefix = np.minimum.accumulate(val) if len(val) else val
    return at[idx >= 0], prefix[idx[idx >= 0]]


def worst_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The largest achieved value over runs at the steps every run has."""
    common = curves[0][0]
    for at, _ in curves[1:]:
        common = np.intersect1d(common, at)
    vals = [ach[np.searchsorted(at, common)] for at, ach in curves]
    return common, np.max(vals, axis=0) if len(common) else np.array([])


def thin(steps: np.ndarray, most: int = CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``most`` of the sorted ``steps``: log-spaced in step + 1, the first and the last kept."""
    if len(steps) <= most:
        return np.arange(len(steps))
    targets = np.geomspace(steps[0] + 1.0, steps[-1] + 1.0, most - 2) - 1.0
    return np.union1d(np.clip(np.searchsorted(steps, targets), 0, len(steps) - 1), [0, len(steps) - 1])


def verdict(condition: str, st: Setting, crow: dict | None, delta: float, margin: float) -> tuple[list[str], tuple]:
    """Why the theorem does not apply to this setting (empty: it does), and the alpha-beta pair
    (alpha, beta, bound, at_infinity; NaNs for the other conditions)."""
    pair = (NAN, NAN, NAN, False)
    if condition == "qg":
        return [QG_WHY], pair
    why = list(st.reasons)
    if condition == "pl" and delta != PLAIN_PL_DELTA:
        why.append(f"PL measured with pl_delta = {delta:g}; the theorem is for plain PL (pl_delta = 2: exponent "
                   "2/delta = 1)")
    why.append(condition_reason(condition, crow))
    if not math.isfinite(st.smoothness):
        why.append(SMOOTHNESS_UNKNOWN)
    if condition == "alpha_beta" and not st.sigma_int >= 0:
        why.append(f"sigma_int^2 estimate {st.sigma_int:.4g} < 0 or unknown: f* or f_i* misestimated")
    if condition != "alpha_beta" and not math.isfinite(st.noise):
        why.append("noise unknown: no full-batch row at a replayed step")
    why = [w for w in why if w]
    if why:
        return why, pair
    if condition != "alpha_beta":
        return [w for w in [range_reason(condition, st.lr, st.smoothness, crow["constant"])] if w], pair
    pair = ab_pair(*st.uva, margin, st.lr, st.smoothness, st.sigma_int, st.d0, st.steps)
    if math.isnan(pair[0]):
        return [(f"step size gamma={st.lr:.4g} above the theorem's range: (alpha-beta)/(2L) <= "
                f"{pair[1] / (2 * st.smoothness):.4g} for every feasible pair")], (NAN, NAN, NAN, False)
    return [], pair


def bound_at(condition: str, k, st: Setting, constant: float, pair: tuple):
    """The condition's bound at step(s) k (its K for the 'min' bounds) with the setting's numbers."""
    g, L, s2 = st.lr, st.smoothness, st.noise
    if condition == "pl":
        return pl_bound(k, g, L, constant, s2, st.gap0)
    if condition == "eb":
        return pl_bound(k, g, L, constant**2 / L, s2, st.gap0)
    if condition in ("qcvx", "aiming", "star_convexity"):
        return qcvx_bound(k, g, L, 1.0 if condition == "star_convexity" else constant, s2, st.d0)
    if condition == "rsi":
        return rsi_bound(k, g, L, constant, s2, st.d0)
    if pair[3]:  # alpha-beta's infimum along an unbounded direction: the limit, whatever k
        return np.full(np.shape(k), pair[2])
    return ab_bound(k, g, L, pair[0], pair[1], st.sigma_int, st.d0)


def bound_rows(experiment: str, point: str, st: Setting, curves: dict, consts: dict, delta: float,
               margin: float) -> tuple[list[dict], list[dict]]:
    """condition_bounds and condition_bound_curve rows of one setting. ``curves[condition]``: its achieved curve
    (steps, values); ``consts[(condition, scope)]``: its condition_constants row."""
    rows, curve = [], []
    for condition in classical.CONDITIONS:
        kind, theorem, formula = THEOREMS[condition]
        scope = "mini_batch" if condition == "alpha_beta" else "full_batch"
        crow = consts.get((condition, scope))
        why, pair = verdict(condition, st, crow, delta, margin)
        at, ach = curves[condition]
        at, ach = at[thin(at)], ach[thin(at)]
        bound = np.asarray(bound_at(condition, at, st, crow["constant"], pair), dtype=np.float64) if not why \
            else np.full(len(at), NAN)
        curve += [{"experiment": experiment, "point": point, "run": st.run, "condition": condition,
                   "step": int(s), "bound": _num(b), "achieved": _num(v)} for s, b, v in zip(at, bound, ach)]
        if pair[3]:
            formula += "; the infimum over the region is approached as alpha, beta -> inf, never attained"
        ab = condition == "alpha_beta"
        rows.append({
            "experiment": experiment, "point": point, "run": st.run, "condition": condition, "scope": scope,
            "constant": _num(None if crow is None else crow["constant"]), "pair_alpha": _num(pair[0], True),
            "pair_beta": _num(pair[1], True), "theorem": theorem, "formula": formula, "applicable": not why,
            "why_not": "; ".join(why) or None, "lr": st.lr, "smoothness": _num(st.smoothness),
            "smoothness_source": st.smoothness_source or None, "noise": _num(st.sigma_int if ab else st.noise),
            "noise_source": SIGMA_INT_SOURCE if ab else st.noise_source, "d0": _num(st.d0), "gap0": _num(st.gap0),
            "steps": int(at[-1]) if kind == "last" and len(at) else st.steps,
            "bound": _num(bound[-1]) if len(at) else None, "achieved": _num(ach[-1]) if len(at) else None,
            "achieved_what": ACHIEVED[kind], "violated_steps": None if why else int((ach > bound).sum())})
    return rows, curve


def _num(x, inf: bool = False) -> float | None:
    """A float for the table: None when missing or NaN (infinite values kept with ``inf``, else None)."""
    if x is None or not (math.isfinite(float(x)) or (inf and math.isinf(float(x)))):
        return None
    return float(x)


# ----------------------------------------------------------------------------------- the rule
def _read(con, files, columns: str, order: str = "run, step") -> dict[str, np.ndarray]:
    """The columns of the part files as arrays (numbers as float64 with NaN for NULL; run as str)."""
    names = [c.strip() for c in columns.split(",")]
    if not files:
        return {c: np.array([], dtype=str if c == "run" else np.float64) for c in names}
    src = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    raw = con.sql(f"SELECT {columns} FROM read_parquet({src}) ORDER BY {order}").fetchnumpy()
    return {c: (np.asarray(x).astype(str) if x.dtype.kind in "OUS" else np.ma.filled(np.ma.asarray(x, np.float64),
                                                                                   NAN)) for c, x in raw.items()}


def _of(arrays: dict, mask: np.ndarray) -> dict:
    return {c: x[mask] for c, x in arrays.items()}


def run_setting(spec, n_train, d: dict, s: dict, c: dict) -> Setting | None:
    """The setting of one run from its directions (d), steps (s) and curvature (c) rows; None without a
    full-batch row."""
    if not len(d["step"]):
        return None
    full = n_train is not None and math.isfinite(n_train) and spec.batch_size >= n_train
    smooth, smooth_src = smoothness_estimate(c["lambda_max"], c["eval_samples"])
    u, v = s["batch_loss"] - s["batch_loss_at_min"], s["batch_loss"] - s["batch_loss_star"]
    a = s["grad_dot_dir"]
    ok = np.isfinite(u) & np.isfinite(v) & np.isfinite(a)
    hull = conditions.hull_reduce(u[ok], v[ok], a[ok]) if ok.any() else np.array([], dtype=int)
    return Setting(
        run=spec.run, lr=float(spec.optimizer["lr"]), reasons=assumption_reasons(spec.optimizer, spec.schedule),
        steps=int(spec.steps), smoothness=smooth, smoothness_source=smooth_src,
        noise=0.0 if full else gradient_noise(d["step"], d["full_grad_norm"], s["step"], s["grad_norm"]),
        noise_source=FULL_BATCH_NOISE if full else NOISE_SOURCE,
        sigma_int=float(d["full_loss_at_min"][0] - np.mean(s["batch_loss_star"])) if len(s["step"]) else NAN,
        d0=float(d["dist_to_min"][0]), gap0=float(d["full_loss"][0] - d["full_loss_at_min"][0]),
        uva=(u[ok][hull], v[ok][hull], a[ok][hull]))


def worst_setting(settings: list[Setting], c: dict) -> Setting:
    """Run "all": the largest L (over every run's curvature rows ``c``), noise, sigma_int^2, D0 and gap, every
    run's alpha-beta rows; lr, reasons and K of the first run (a point's runs differ only in the seed)."""
    smooth, src = smoothness_estimate(c["lambda_max"], c["eval_samples"], len(settings))
    u, v, a = (np.concatenate([st.uva[i] for st in settings]) for i in range(3))
    hull = conditions.hull_reduce(u, v, a) if len(u) else np.array([], dtype=int)
    worst = {k: max((getattr(st, k) for st in settings), key=lambda x: -math.inf if math.isnan(x) else x)
             for k in ("noise", "sigma_int", "d0", "gap0")}
    sources = dict.fromkeys(st.noise_source for st in settings)
    return Setting(run="all", lr=settings[0].lr, reasons=settings[0].reasons,
                   steps=max(st.steps for st in settings), smoothness=smooth, smoothness_source=src,
                   noise_source="largest over the point's runs of: " + " / ".join(sources),
                   uva=(u[hull], v[hull], a[hull]), **worst)


def experiment_bounds(exp, results, constants_file, runs_files, steps_files, directions_files,
                      curvature_files) -> dict:
    """Write condition_bounds and condition_bound_curve for one experiment (an ExperimentSpec) from its
    condition_constants part and the exact part files of its runs' runs, steps, directions and curvature
    tables (curvature_files empty when curvature is not measured)."""
    margin, delta = float(exp.conditions["margin"]), float(exp.conditions["pl_delta"])
    con = duckdb.connect(":memory:")
    consts: dict = {}
    src = "'" + str(constants_file).replace("'", "''") + "'"
    for point, run, cond, scope, *row in con.sql(f"""SELECT point, run, condition, scope, constant, holds,
                                                     first_fail_step FROM read_parquet({src})""").fetchall():
        consts.setdefault((point, run), {})[(cond, scope)] = dict(zip(("constant", "holds", "first_fail_step"), row))
    runs = _read(con, runs_files, "run, n_train", "run")
    n_train = dict(zip(runs["run"], runs["n_train"]))
    steps = _read(con, steps_files, "run, step, grad_norm, batch_loss, batch_loss_at_min, batch_loss_star, "
                                    "grad_dot_dir")
    dirs = _read(con, directions_files, "run, step, full_loss, full_loss_at_min, full_grad_norm, dist_to_min")
    curv = _read(con, curvature_files, "run, step, lambda_max, eval_samples")
    points: dict[str, list] = {}
    for r in exp.runs:
        points.setdefault(r.point, []).append(r)
    out = {"condition_bounds": [], "condition_bound_curve": []}
    for point, specs in points.items():
        settings, curves = [], []
        for spec in specs:
            d = _of(dirs, dirs["run"] == spec.run)
            st = run_setting(spec, n_train.get(spec.run), d, _of(steps, steps["run"] == spec.run),
                             _of(curv, curv["run"] == spec.run))
            if st is None:
                continue  # no full-batch row (diverged before its first one): no row, as in seed_conditions
            cv = {cond: achieved_curve(THEOREMS[cond][0], d["step"], d["full_loss"] - d["full_loss_at_min"],
                                       d["full_loss"], st.steps) for cond in classical.CONDITIONS}
            settings.append(st)
            curves.append(cv)
            rows, curve = bound_rows(exp.name, point, st, cv, consts.get((point, spec.run), {}), delta, margin)
            out["condition_bounds"] += rows
            out["condition_bound_curve"] += curve
        if not settings:
            continue
        mine = np.isin(curv["run"], [st.run for st in settings])
        every = {cond: worst_curve([cv[cond] for cv in curves]) for cond in classical.CONDITIONS}
        rows, curve = bound_rows(exp.name, point, worst_setting(settings, _of(curv, mine)), every,
                                 consts.get((point, "all"), {}), delta, margin)
        out["condition_bounds"] += rows
        out["condition_bound_curve"] += curve
    meta = {"experiment": exp.name, "conditions": exp.conditions, **store.provenance()}
    for table, rows in out.items():
        cols = {c: [r[c] for r in rows] for c in store.SCHEMAS[table]}
        store.write_table(store.part_path(results, table, exp.name), table, cols, meta)
    return {"experiment": exp.name, "rows": out["condition_bounds"]}
