"""The alpha-beta-condition's exact feasible region, min-T heatmaps, and PL / Aiming / angle / QCvx.

For every replayed step k (all seeds of a sweep point)

    T_k(alpha, beta) = a_k - alpha * u_k + beta * v_k,
    a_k = <grad f_{i_k}(x_k), x_k - x_K>,  u_k = f_{i_k}(x_k) - f_{i_k}(x_K),  v_k = f_{i_k}(x_k) - f_{i_k}*,

the slack of the alpha-beta-condition <grad f_i(x), x - x_p> >= alpha (f_i(x) - f_i(x_p)) - beta (f_i(x) - f_i*).
(The beta term relaxes the condition: v_k >= 0, so a larger beta never hurts, and since
v_k - u_k = f_{i_k}(x_K) - f_i* >= 0, if (alpha, beta) works so does (alpha + d, beta + d).)
T is affine in (alpha, beta), so min_k T_k = -max_k (alpha, beta, 1) . p_k with p_k = (u_k, -v_k, -a_k):
a maximum of a linear function over points, attained at a vertex of their convex hull. Reducing the
K points to the hull's H vertices makes every grid and region query O(H) instead of O(K).
The feasible set {T_k >= 0 for all k, beta >= 0, alpha >= beta + margin} is an intersection of
half-planes (alpha u_k - beta v_k <= a_k): a convex polygon, unbounded along (1, 1). Its verdict and
constants (smallest alpha, smallest beta, the minimum of the non-vanishing term) come from linear
programs over every hull row, never from a box; the box (`alpha_max`) only frames what is drawn: the
polygon clipped to it, the frontier and the heatmap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, QhullError

from landscope import store
from landscope.measures import classical


# ----------------------------------------------------------------------------------- geometry
def hull_reduce(u: np.ndarray, v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Indices of the points (u, -v, -a) that can maximize a linear function: the hull vertices.

    Falls back to every point when the set is too small or degenerate for Qhull.
    """
    pts = np.column_stack([u, -v, -a]).astype(np.float64)
    every = np.arange(len(pts))
    if len(pts) <= 64:
        return every
    scale = np.abs(pts).max(axis=0)
    scale[scale == 0] = 1.0
    pts = pts / scale
    try:
        return np.sort(ConvexHull(pts).vertices)
    except QhullError:
        # flat (e.g. constant v): the points span a plane or a line; joggling keeps every
        # extreme point of the flat set extreme
        try:
            return np.sort(ConvexHull(pts, qhull_options="QJ").vertices)
        except QhullError:
            return every


def min_t(alpha: np.ndarray, beta: np.ndarray, u, v, a) -> np.ndarray:
    """min_k T_k(alpha, beta) for arrays of pairs (broadcast over the points, chunked)."""
    alpha, beta = np.asarray(alpha, float).ravel(), np.asarray(beta, float).ravel()
    out = np.empty_like(alpha)
    chunk = max(1, 2_000_000 // max(len(u), 1))
    for s in range(0, len(alpha), chunk):
        al, be = alpha[s:s + chunk, None], beta[s:s + chunk, None]
        out[s:s + chunk] = (a[None, :] - al * u[None, :] + be * v[None, :]).min(axis=1)
    return out


def clip_polygon(poly: list[tuple[float, float]], c1: float, c2: float, c3: float,
                 eps: float = 0.0) -> list[tuple[float, float]]:
    """Keep the part of a convex polygon with c1*alpha + c2*beta <= c3 (Sutherland-Hodgman)."""
    out: list[tuple[float, float]] = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        fp = c1 * p[0] + c2 * p[1] - c3
        fq = c1 * q[0] + c2 * q[1] - c3
        if fp <= eps:
            out.append(p)
        if (fp < -eps and fq > eps) or (fp > eps and fq < -eps):
            t = fp / (fp - fq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    # drop consecutive duplicates
    clean: list[tuple[float, float]] = []
    for pt in out:
        if not clean or abs(pt[0] - clean[-1][0]) + abs(pt[1] - clean[-1][1]) > 1e-12 * (1 + abs(pt[0])):
            clean.append(pt)
    if len(clean) > 1 and abs(clean[0][0] - clean[-1][0]) + abs(clean[0][1] - clean[-1][1]) <= 1e-12:
        clean.pop()
    return clean


def feasible_polygon(u, v, a, margin: float, alpha_box: float, beta_box: float) -> list[tuple[float, float]]:
    """Exact feasible polygon inside [0, alpha_box] x [0, beta_box] (vertices counter-clockwise)."""
    poly = [(0.0, 0.0), (alpha_box, 0.0), (alpha_box, beta_box), (0.0, beta_box)]
    poly = clip_polygon(poly, -1.0, 1.0, -margin)  # alpha >= beta + margin
    scale = max(1.0, alpha_box)
    for uk, vk, ak in zip(u, v, a):
        if not poly:
            break
        # tolerance relative to the constraint's magnitude, so that rounding cannot cut a vertex
        eps = 1e-12 * (abs(uk) * scale + abs(vk) * scale + abs(ak) + 1e-300)
        poly = clip_polygon(poly, float(uk), -float(vk), float(ak), eps)
    return poly


def scaled_rows(u, v, a, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The constraints alpha u_k - beta v_k <= a_k and beta - alpha <= -margin as (A, b), each data row scaled
    to unit size (the same half-plane; the LP's absolute tolerances then mean the same for every row)."""
    A = np.column_stack([u, -np.asarray(v, float)])
    b = np.asarray(a, float)
    norm = np.maximum(np.abs(A).max(axis=1), np.abs(b)) if len(b) else b
    norm = np.where(norm > 0, norm, 1.0)
    return np.vstack([A / norm[:, None], [-1.0, 1.0]]), np.append(b / norm, -margin)


def lp_min(u, v, a, margin: float, objective: tuple[float, float],
           bounds: tuple = ((0.0, None), (0.0, None))) -> tuple[float, float] | None:
    """Minimize objective . (alpha, beta) over the whole feasible set (no box); None when it is empty."""
    A, b = scaled_rows(u, v, a, margin)
    res = linprog(c=list(objective), A_ub=A, b_ub=b, bounds=list(bounds), method="highs-ds")
    if res.status != 0:
        return None
    return float(res.x[0]), float(res.x[1])


def lex_min(u, v, a, margin: float, first: int) -> tuple[float, float] | None:
    """The feasible pair with the smallest coordinate ``first`` (0: alpha, 1: beta) and, among those, the smallest
    other one: two LPs, the second with the first coordinate fixed at its minimum (a vertex of the region)."""
    obj = [0.0, 0.0]
    obj[first] = 1.0
    best = lp_min(u, v, a, margin, tuple(obj))
    if best is None:
        return None
    fixed = [(0.0, None), (0.0, None)]
    fixed[first] = (best[first], best[first])
    second = lp_min(u, v, a, margin, tuple(obj[::-1]), tuple(fixed))
    if second is None:  # the fixed coordinate rounded just outside: allow the LP's own tolerance
        fixed[first] = (best[first], best[first] + 1e-9 * max(1.0, abs(best[first])))
        second = lp_min(u, v, a, margin, tuple(obj[::-1]), tuple(fixed))
    return second if second is not None else best


def ratio_min(u, v, a, margin: float) -> tuple[float, float, float, bool] | None:
    """The infimum of beta / (alpha - beta) over the feasible set, and where it is attained.

    The ratio is linear-fractional; with t = 1 / (alpha - beta) and y = t (alpha, beta) (Charnes-Cooper) it is
    the LP  min y_beta  s.t.  u_k y_alpha - v_k y_beta <= a_k t,  y_alpha - y_beta = 1,  margin t <= 1,  y, t >= 0,
    whose points with t > 0 are the region's pairs and those with t = 0 its recession directions (the ratio's
    limit along them). A second LP takes, among the optimal points, the largest t, i.e. the smallest alpha.
    Returns (ratio, alpha, beta, at_infinity); at_infinity when only a direction attains it (t = 0).
    """
    A, b = scaled_rows(u, v, a, margin)
    A_cc = np.column_stack([A[:-1], -b[:-1]])  # data rows: [u, -v] . y - a t <= 0 (scaled)
    eq = np.array([[1.0, -1.0, 0.0]])
    t_bound = (0.0, 1.0 / margin if margin > 0 else 1e12)
    bounds = [(0.0, None), (0.0, None), t_bound]
    res = linprog(c=[0.0, 1.0, 0.0], A_ub=A_cc if len(A_cc) else None, b_ub=np.zeros(len(A_cc)) if len(A_cc) else None,
                  A_eq=eq, b_eq=[1.0], bounds=bounds, method="highs-ds")
    if res.status != 0:
        return None
    r = max(float(res.x[1]), 0.0)
    cap = r * (1 + 1e-12) + 1e-300  # the optimum only (a larger cap would trade ratio for a smaller alpha)
    res2 = linprog(c=[0.0, 0.0, -1.0], A_ub=A_cc if len(A_cc) else None,
                   b_ub=np.zeros(len(A_cc)) if len(A_cc) else None, A_eq=eq, b_eq=[1.0],
                   bounds=[(0.0, None), (0.0, cap), t_bound], method="highs-ds")
    y = res2.x if res2.status == 0 else res.x
    t = float(y[2])
    if t <= 1e-9:
        return r, math.inf, math.inf, True
    return r, float(y[0]) / t, float(y[1]) / t, False


def binding_of(alpha: float, beta: float, margin: float, rtol: float = 1e-7) -> str:
    """Which constraint holds the smallest pair (alpha, beta), a vertex of the region: 'corner' (alpha = margin
    and beta = 0: both conventions, whatever the data), 'margin' (on alpha - beta = margin, beta > 0),
    'beta_nonneg' (beta = 0 off the margin line), 'data' (neither convention: only step rows hold the vertex),
    '' for no pair. A constraint is active within rtol of the pair's scale alpha + beta + margin."""
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        return ""
    scale = abs(alpha) + abs(beta) + abs(margin)
    on_margin = abs(alpha - beta - margin) <= rtol * scale
    on_zero = abs(beta) <= rtol * scale
    if on_margin and on_zero:
        return "corner"
    if on_margin:
        return "margin"
    if on_zero:
        return "beta_nonneg"
    return "data"


def nice_ceil(x: float) -> float:
    """Round up to 1, 2, 2.5 or 5 times a power of ten."""
    if x <= 0 or not math.isfinite(x):
        return 1.0
    e = math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10**e >= x * (1 - 1e-12):
            return m * 10**e
    return 10 ** (e + 1)


NAN = math.nan


@dataclass
class Constants:
    """The region's constants, from LPs over every (hull) row and never from a drawing box.

    ``ratio`` is the infimum of beta / (alpha - beta), attained at (ratio_alpha, ratio_beta); when it is only
    approached along an unbounded direction (at_infinity) that pair is (inf, beta_min) for a horizontal
    direction (beta stays at beta_min while alpha grows: the ratio tends to 0) and (inf, inf) otherwise.
    """
    feasible: bool
    alpha_min: float
    beta_at_alpha_min: float
    beta_min: float
    alpha_at_beta_min: float
    ratio: float
    ratio_alpha: float
    ratio_beta: float
    at_infinity: bool
    binding: str
    margin: float = NAN  # the margin these constants hold for

    @property
    def ratio_binding(self) -> str:
        """binding_of the pair that attains the term's minimum ("" when only approached at infinity)."""
        return "" if self.at_infinity else binding_of(self.ratio_alpha, self.ratio_beta, self.margin)

    def term(self, sigma_sq: float) -> float:
        """The non-vanishing term's minimum 2 beta sigma^2 / (alpha - beta) over the region; NaN when sigma^2
        is NaN or negative (impossible for the true sigma_int^2 = E_i[f* - f_i*] >= 0: an estimate below 0
        means f* or f_i* is misestimated, and would send the term to -inf along (1, 1))."""
        if not self.feasible or not math.isfinite(sigma_sq) or sigma_sq < 0:
            return math.nan
        return 2.0 * sigma_sq * self.ratio


INFEASIBLE = Constants(False, NAN, NAN, NAN, NAN, NAN, NAN, NAN, False, "")


def region_constants(u, v, a, margin: float) -> Constants:
    """Verdict and constants of the points (u, v, a) (all finite; pass the hull rows for speed: same answer).

    The LPs find the optimal pairs to the solver's tolerance (~1e-7 relative); each is then made exact
    as a vertex of the exact region, clipped (:func:`feasible_polygon`) to a box twice as large as
    every pair the LPs found, so that box never touches them: the constants keep full float64 precision."""
    lo_a = lex_min(u, v, a, margin, 0)
    if lo_a is None:
        return INFEASIBLE
    lo_b = lex_min(u, v, a, margin, 1) or (NAN, NAN)
    ratio = ratio_min(u, v, a, margin)
    r, ra, rb, inf = ratio if ratio is not None else (NAN, NAN, NAN, False)
    found = [x for x in (*lo_a, *lo_b, ra, rb) if math.isfinite(x)]
    box = nice_ceil(2.0 * max(found) + 1.0)
    poly = np.array(feasible_polygon(u, v, a, margin, box, box))
    if len(poly):
        amin = poly[:, 0].min()
        at = np.abs(poly[:, 0] - amin) <= 1e-9 * max(1.0, abs(amin))
        lo_a = (float(amin), float(poly[at, 1].min()))
        bmin_i = int(np.argmin(poly[:, 1] + 1e-12 * poly[:, 0]))
        lo_b = (float(poly[bmin_i, 0]), float(poly[bmin_i, 1]))
        if not inf:  # attained at a vertex of the region: the smallest ratio over the exact vertices
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(poly[:, 0] > poly[:, 1], poly[:, 1] / (poly[:, 0] - poly[:, 1]), np.inf)
            best = np.flatnonzero(ratios <= ratios.min() * (1 + 1e-12) + 1e-300)
            k = best[np.argmin(poly[best, 0])]  # among equal ratios, the smallest alpha
            r, ra, rb = float(ratios[k]), float(poly[k, 0]), float(poly[k, 1])
    if inf and r <= 1e-9:
        rb = lo_b[1]  # the horizontal direction: beta_min is kept all the way to alpha = inf
    return Constants(True, lo_a[0], lo_a[1], lo_b[1], lo_b[0], r, ra, rb, inf,
                     binding_of(lo_a[0], lo_a[1], margin), margin)


def constants_of(u, v, a, margin: float) -> Constants:
    """region_constants of the finite rows among (u, v, a), through their hull (no polygon, no box)."""
    u, v, a = (np.asarray(x, dtype=np.float64) for x in (u, v, a))
    keep = np.isfinite(u) & np.isfinite(v) & np.isfinite(a)
    if not keep.any():
        return INFEASIBLE
    idx = hull_reduce(u[keep], v[keep], a[keep])
    return region_constants(u[keep][idx], v[keep][idx], a[keep][idx], margin)


@dataclass
class Region(Constants):
    """The constants plus what the page draws: the exact region clipped to [0, alpha_box] x [0, beta_box]
    (empty when a numeric alpha_max lies left of alpha_min: the point stays feasible)."""
    polygon: list[tuple[float, float]] = None
    alpha_box: float = NAN
    beta_box: float = NAN
    hull_points: int = 0
    hull_index: np.ndarray = None  # the hull's rows, as positions in the arrays given to analyze_region


def analyze_region(u, v, a, margin: float = 0.1, alpha_max: float | str = "auto") -> Region:
    """The alpha-beta-condition's feasible region for the points (u, v, a): exact constants and the drawn box."""
    u, v, a = (np.asarray(x, dtype=np.float64) for x in (u, v, a))
    keep = np.isfinite(u) & np.isfinite(v) & np.isfinite(a)
    rows = np.flatnonzero(keep)  # positions in the caller's arrays (hull_index refers to these)
    u, v, a = u[keep], v[keep], a[keep]
    if len(u) == 0:  # nothing measured (e.g. every run diverged): no verdict, not "feasible"
        box = 10.0 if alpha_max == "auto" else float(alpha_max)
        return Region(**vars(INFEASIBLE), polygon=[], alpha_box=box, beta_box=box, hull_points=0,
                      hull_index=np.array([], dtype=int))
    idx = hull_reduce(u, v, a)
    hu, hv, ha = u[idx], v[idx], a[idx]
    const = region_constants(hu, hv, ha, margin)
    if alpha_max == "auto":
        alpha_box = nice_ceil(max(2.0 * const.alpha_min, const.alpha_min + 1.0)) if const.feasible else 10.0
    else:
        alpha_box = float(alpha_max)
    poly = feasible_polygon(hu, hv, ha, margin, alpha_box, alpha_box) if const.feasible else []
    return Region(**vars(const), polygon=poly, alpha_box=alpha_box, beta_box=alpha_box, hull_points=len(idx),
                  hull_index=rows[idx])


def frontier(poly: list[tuple[float, float]], alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each alpha: the smallest and largest feasible beta (NaN where none)."""
    lo = np.full(len(alphas), np.nan)
    hi = np.full(len(alphas), np.nan)
    n = len(poly)
    for i, al in enumerate(alphas):
        ys = []
        for j in range(n):
            (x0, y0), (x1, y1) = poly[j], poly[(j + 1) % n]
            if min(x0, x1) - 1e-12 <= al <= max(x0, x1) + 1e-12:
                if abs(x1 - x0) < 1e-15:
                    ys += [y0, y1]
                else:
                    t = (al - x0) / (x1 - x0)
                    ys.append(y0 + t * (y1 - y0))
        if ys:
            lo[i], hi[i] = min(ys), max(ys)
    return lo, hi


def grid(u, v, a, region: Region, n: int, margin: float):
    """The min-T heatmap on an n x n grid over the region's box, from the hull points only."""
    alphas = np.linspace(0.0, region.alpha_box, n)
    betas = np.linspace(0.0, region.beta_box, n)
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    A, B = A.ravel(), B.ravel()
    idx = region.hull_index
    vals = min_t(A, B, np.asarray(u)[idx], np.asarray(v)[idx], np.asarray(a)[idx])
    valid = A >= B + margin - 1e-12
    return A, B, np.where(valid, vals, np.nan), valid


# ----------------------------------------------------------------------------------- the rule
SENSITIVITY_MARGINS = (0.01, 0.03, 0.1, 0.3, 1.0)  # margin_sensitivity's margins, besides the configured one
TABLES = ("ab_region", "ab_frontier", "ab_grid", "pl", "condition_summary", "seed_conditions", "margin_sensitivity",
          "condition_constants")


def _sql_list(paths) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def experiment_conditions(exp, results: str | Path, steps_files, directions_files, drift_files) -> dict:
    """Compute and write ab_region, ab_frontier, ab_grid, pl, condition_summary, seed_conditions,
    margin_sensitivity and condition_constants for one experiment.

    ``exp`` is an ExperimentSpec; the *_files are the exact part files of its runs (so that stale
    parts of an earlier configuration never leak in).
    """
    cfg = exp.conditions
    margin, delta, gsize = float(cfg["margin"]), float(cfg["pl_delta"]), int(cfg["grid_size"])
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE VIEW steps AS SELECT * FROM read_parquet({_sql_list(steps_files)})")
    con.execute(f"CREATE VIEW directions AS SELECT * FROM read_parquet({_sql_list(directions_files)})")
    con.execute(f"CREATE VIEW drift AS SELECT * FROM read_parquet({_sql_list(drift_files)})")
    points: dict[str, list] = {}
    for r in exp.runs:
        points.setdefault(r.point, []).append(r)
    out = {t: {c: [] for c in store.SCHEMAS[t]} for t in TABLES}

    def add(table, **row):
        for c in store.SCHEMAS[table]:
            out[table][c].append(row[c])

    summaries = []
    for point, runs in points.items():
        names = [r.run for r in runs]
        in_runs = "(" + ", ".join("'" + n.replace("'", "''") + "'" for n in names) + ")"
        # the point's step rows, read once: the region's u, v, a and the classical conditions' columns
        arr = con.sql(f"""SELECT run, step, batch_loss, batch_loss_at_min, batch_loss_star, grad_norm, grad_dot_dir,
                          dist_to_min FROM steps WHERE run IN {in_runs}""").fetchnumpy()
        u = arr["batch_loss"] - arr["batch_loss_at_min"]
        v = arr["batch_loss"] - arr["batch_loss_star"]
        a = arr["grad_dot_dir"]
        arr["s"] = arr["batch_loss_star"]
        reg = analyze_region(u, v, a, margin, cfg["alpha_max"])
        for i, (al, be) in enumerate(reg.polygon):
            add("ab_region", experiment=exp.name, point=point, vertex=i, alpha=al, beta=be,
                on_box_edge=bool(abs(al - reg.alpha_box) < 1e-9 * reg.alpha_box
                                 or abs(be - reg.beta_box) < 1e-9 * reg.beta_box))
        alphas = np.linspace(0, reg.alpha_box, 4 * gsize + 1)
        lo, hi = frontier(reg.polygon, alphas) if reg.polygon else (alphas * np.nan, alphas * np.nan)
        for al, bl, bh in zip(alphas, lo, hi):
            add("ab_frontier", experiment=exp.name, point=point, alpha=float(al),
                beta_min=float(bl), beta_max=float(bh))
        A, B, T, valid = grid(u, v, a, reg, gsize, margin) if len(u) else ([], [], [], [])
        for al, be, t, ok in zip(A, B, T, valid):
            add("ab_grid", experiment=exp.name, point=point, alpha=float(al), beta=float(be),
                min_t=None if not ok else float(t), feasible=bool(ok and t >= 0))

        d = con.sql(f"""SELECT run, step, full_loss, full_loss_at_min, full_grad_norm, full_grad_dot_dir,
                        dist_to_min, cos_angle FROM directions WHERE run IN {in_runs}
                        ORDER BY run, step""").fetchnumpy()
        # PL per full-batch row: the same ratio (and domain) as its condition_constants row
        mu, domain, _ = classical.ratios("pl", classical.scope_arrays("full_batch", d), delta)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mu = np.where(domain & (mu > 0), np.log10(mu), np.nan)
        for run, step, lm in zip(d["run"], d["step"], log_mu):
            add("pl", experiment=exp.name, run=str(run), point=point, step=int(step), pl_delta=delta,
                pl_log10_mu=None if not np.isfinite(lm) else float(lm))
        cos = np.where(d["dist_to_min"] > 0, d["cos_angle"], np.nan)
        f_run = dict(con.sql(f"""SELECT run, any_value(full_loss_at_min) FROM directions WHERE run IN {in_runs}
                                 GROUP BY run""").fetchall())
        f_star = _f(_scalar(con, f"""SELECT avg(fk) FROM (SELECT run, any_value(full_loss_at_min) AS fk
                                FROM directions WHERE run IN {in_runs} GROUP BY run)"""))
        f_star = math.nan if f_star is None else f_star
        fi_star_mean = float(np.mean(arr["s"])) if len(arr["s"]) else math.nan
        sigma = f_star - fi_star_mean

        # each run on its own: the seed spread of the constants (the region above is all seeds together)
        seeds = []
        for r in runs:
            mine = arr["run"] == r.run
            if not mine.any():
                continue  # no measured step (diverged before the first one): no row, as in n_runs
            rc = constants_of(u[mine], v[mine], a[mine], margin)
            fr = _f(f_run.get(r.run))
            s_run = (math.nan if fr is None else fr) - float(np.mean(arr["s"][mine]))
            seeds.append((rc.alpha_min, rc.term(s_run)))
            add("seed_conditions", experiment=exp.name, point=point, run=r.run, seed=r.seed, n_steps=int(mine.sum()),
                feasible=rc.feasible, alpha_min=rc.alpha_min, beta_at_alpha_min=rc.beta_at_alpha_min,
                beta_min=rc.beta_min, nonvanishing_term=rc.term(s_run), nonvanishing_alpha=rc.ratio_alpha,
                nonvanishing_beta=rc.ratio_beta, binding=rc.binding)
        # how the smallest pair and the term move with the margin
        hull = reg.hull_index
        for m in sorted(set(SENSITIVITY_MARGINS) | {margin}):
            mc = reg if m == margin else (region_constants(u[hull], v[hull], a[hull], m) if len(hull) else INFEASIBLE)
            add("margin_sensitivity", experiment=exp.name, point=point, margin=m, is_configured=m == margin,
                feasible=mc.feasible, alpha_min=mc.alpha_min, beta_at_alpha_min=mc.beta_at_alpha_min,
                nonvanishing_term=mc.term(sigma), binding=mc.binding, nonvanishing_binding=mc.ratio_binding)

        # every classical condition's best constant, both scopes, each run and all together
        by_step = np.lexsort((arr["step"], arr["run"]))  # ORDER BY run, step
        tables = {"full_batch": d, "mini_batch": {k: col[by_step] for k, col in arr.items()}}
        crows = classical.condition_constants(exp.name, point, names, tables, delta, margin, constants_of)
        for crow in crows:
            add("condition_constants", **crow)
        # the summary's PL, Aiming and QCvx columns are those rows' all-seeds full-batch constants
        full = {c["condition"]: c for c in crows if c["run"] == "all" and c["scope"] == "full_batch"}
        pl_mu = full["pl"]["constant"]

        last = _scalar(con, f"""SELECT avg(full_loss) FROM directions d WHERE run IN {in_runs}
                           AND step = (SELECT max(step) FROM directions e WHERE e.run = d.run)""")
        drift = _scalar(con, f"SELECT max(max_abs_drift) FROM drift WHERE run IN {in_runs}")
        n_dir, spacing = _sampling(d["run"], d["step"])
        row = dict(
            experiment=exp.name, point=point, sweep_json=json.dumps(runs[0].sweep, sort_keys=True),
            n_runs=len(np.unique(arr["run"])), n_steps=int(len(u)),
            feasible=reg.feasible, alpha_min=reg.alpha_min,
            beta_at_alpha_min=reg.beta_at_alpha_min, beta_min=reg.beta_min,
            alpha_at_beta_min=reg.alpha_at_beta_min, margin=margin, alpha_box=reg.alpha_box,
            beta_box=reg.beta_box, hull_points=reg.hull_points, f_star_est=f_star,
            f_i_star_mean=fi_star_mean, sigma_int_sq=sigma,
            sigma_int_sq_method=("f* = full-batch f(x_K) (mean over seeds); E_i f_i* = mean of the "
                                 "per-batch f_i* over replayed steps"),
            nonvanishing_term=reg.term(sigma), nonvanishing_alpha=reg.ratio_alpha, nonvanishing_beta=reg.ratio_beta,
            binding=reg.binding, nonvanishing_binding=reg.ratio_binding, n_seeds=len(seeds),
            alpha_min_seed_lo=_nanmin([s[0] for s in seeds]), alpha_min_seed_hi=_nanmax([s[0] for s in seeds]),
            nonvanishing_term_seed_lo=_nanmin([s[1] for s in seeds]),
            nonvanishing_term_seed_hi=_nanmax([s[1] for s in seeds]),
            pl_delta=delta, pl_log10_mu_min=math.log10(pl_mu) if pl_mu is not None and pl_mu > 0 else None,
            aiming_min=full["aiming"]["constant"], aiming_min_step=full["aiming"]["constant_step"],
            qcvx_theta_min=full["qcvx"]["constant"], cos_angle_min=_nanmin(cos), cos_angle_mean=_nanmean(cos),
            directions_points=n_dir, directions_spacing=spacing,
            final_full_loss_mean=_f(last), max_abs_drift=_f(drift),
            final_batch_loss_mean=_tail_mean(arr["run"], arr["step"], arr["batch_loss"]))
        add("condition_summary", **row)
        summaries.append(row)
    meta = {"experiment": exp.name, "conditions": cfg, **store.provenance()}
    for table, cols in out.items():
        store.write_table(store.part_path(results, table, exp.name), table, cols, meta)
    return {"experiment": exp.name, "points": summaries}


def _tail_mean(runs: np.ndarray, steps: np.ndarray, values: np.ndarray, tail: float = 0.95) -> float | None:
    """The mean of ``values`` over each run's last steps (step >= tail * that run's last step), correctly
    rounded (math.fsum: the same digits whatever the row order, unlike a parallel SQL avg); None without rows."""
    if not len(steps):
        return None
    codes = np.unique(runs, return_inverse=True)[1]
    last = np.full(codes.max() + 1, -1, dtype=np.int64)
    np.maximum.at(last, codes, steps)
    chosen = values[steps >= tail * last[codes]]
    return math.fsum(chosen) / len(chosen)


def _sampling(runs: np.ndarray, steps: np.ndarray) -> tuple[int | None, int | None]:
    """How densely the full-batch rows (sorted by run, step) sample training: the fewest rows of a run and the
    largest step gap between a run's consecutive rows (None without rows, or without two rows in any run)."""
    counts = np.unique(runs, return_counts=True)[1]
    return (int(counts.min()) if len(counts) else None), classical.largest_gap(runs, steps)


def _scalar(con, query: str):
    return con.sql(query).fetchall()[0][0]


def _nanmin(x) -> float | None:
    x = np.asarray(x, float)
    return float(np.nanmin(x)) if np.isfinite(x).any() else None


def _nanmax(x) -> float | None:
    x = np.asarray(x, float)
    return float(np.nanmax(x)) if np.isfinite(x).any() else None


def _nanmean(x) -> float | None:
    x = np.asarray(x, float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def _f(x) -> float | None:
    return None if x is None else float(x)
