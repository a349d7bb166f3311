"""The alpha-beta region and heatmap against hand-computed answers and brute force."""

import glob

import numpy as np
import polars as pl
import pytest
from scipy.optimize import linprog

from landscope import store
from landscope.measures import conditions as C
from landscope.spec import ExperimentSpec


def brute_min_t(alpha, beta, u, v, a):
    """min_k T_k(alpha, beta) = min_k a_k - alpha u_k + beta v_k, by direct evaluation."""
    return np.array([np.min(a - al * u + be * v) for al, be in zip(alpha, beta)])


def test_hand_computed_region():
    # step 1: u=1, v=0, a=1          -> alpha <= 1 + 0*beta          (alpha <= 1)
    # step 2: u=2, v=1, a=1          -> 2 alpha - beta <= 1          (beta >= 2 alpha - 1)
    # with beta >= 0 and alpha >= beta + 0.1
    u, v, a = np.array([1.0, 2.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])
    reg = C.analyze_region(u, v, a, margin=0.1, alpha_max=2.0)
    assert reg.feasible
    # vertices: (0.1, 0), (0.5, 0), (1, 0.9)... check: alpha<=1, beta>=2a-1, beta<=a-0.1, beta>=0
    # corners: (0.1,0) [beta=0 & beta=a-0.1], (0.5,0) [beta=0 & beta=2a-1], (0.9,0.8) [2a-1=a-0.1]
    expected = {(0.1, 0.0), (0.5, 0.0), (0.9, 0.8)}
    got = {(round(x, 12), round(y, 12)) for x, y in reg.polygon}
    assert got == expected
    assert reg.alpha_min == pytest.approx(0.1)
    assert reg.beta_at_alpha_min == pytest.approx(0.0)
    lo, hi = C.frontier(reg.polygon, np.array([0.3, 0.7, 0.95]))
    # alpha=0.3: beta in [0, 0.2]; alpha=0.7: beta in [0.4, 0.6]; alpha=0.95: infeasible (> 0.9)
    np.testing.assert_allclose(lo[:2], [0.0, 0.4], atol=1e-12)
    np.testing.assert_allclose(hi[:2], [0.2, 0.6], atol=1e-12)
    assert np.isnan(lo[2]) and np.isnan(hi[2])


def test_quasar_convex_points_give_beta_zero():
    # T = a - alpha u with a = 2 u (u > 0): every alpha <= 2 works with beta = 0
    rng = np.random.default_rng(0)
    u = rng.uniform(0.1, 1, 200)
    v = u + rng.uniform(0, 1, 200)
    reg = C.analyze_region(u, v, 2 * u, margin=0.1, alpha_max=4.0)
    assert reg.alpha_min == pytest.approx(0.1)
    assert reg.beta_min == pytest.approx(0.0)


def test_infeasible_when_a_point_needs_negative_beta():
    # u <= 0 is fine for any alpha, but a < 0 with v = 0 cannot be fixed by beta: T = a - alpha u
    u, v, a = np.array([0.5, 0.0]), np.array([1.0, 0.0]), np.array([1.0, -1.0])
    reg = C.analyze_region(u, v, a, margin=0.1)
    assert not reg.feasible and np.isnan(reg.alpha_min)


def _random_points(k, seed, alpha0=3.0, beta0=2.0):
    rng = np.random.default_rng(seed)
    u = rng.normal(0.3, 1.0, k)
    v = np.abs(rng.normal(1.0, 0.5, k)) + np.maximum(u, 0)
    a = alpha0 * u - beta0 * v + rng.exponential(0.5, k)  # (alpha0, beta0) is feasible
    return u, v, a


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hull_grid_equals_brute_force(seed):
    u, v, a = _random_points(20000, seed)
    reg = C.analyze_region(u, v, a, margin=0.1, alpha_max=6.0)
    assert reg.hull_points < 2000  # the reduction is real
    A, B, T, valid = C.grid(u, v, a, reg, 25, 0.1)
    brute = brute_min_t(A[valid], B[valid], u, v, a)
    np.testing.assert_allclose(T[valid], brute, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_region_agrees_with_brute_force_grid(seed):
    u, v, a = _random_points(5000, seed)
    reg = C.analyze_region(u, v, a, margin=0.1, alpha_max=8.0)
    assert reg.feasible
    al, be = np.meshgrid(np.linspace(0, 8, 81), np.linspace(0, 8, 81), indexing="ij")
    al, be = al.ravel(), be.ravel()
    keep = al >= be + 0.1
    al, be = al[keep], be[keep]
    feasible = brute_min_t(al, be, u, v, a) >= 0
    depth = np.array([point_in_convex(reg.polygon, x, y) for x, y in zip(al, be)])
    clear = np.abs(depth) > 1e-7  # leave out grid points lying on the boundary
    assert clear.sum() > 0.9 * len(al)
    np.testing.assert_array_equal(depth[clear] > 0, feasible[clear])
    assert feasible.any() and not feasible.all()
    # the smallest alpha agrees with a linear program over all K points (no hull reduction)
    lp = C.lp_min(u, v, a, 0.1, (1.0, 0.0))
    assert reg.alpha_min == pytest.approx(lp[0], abs=1e-7)


def point_in_convex(poly, x, y):
    """Signed distance-like test: >= 0 inside a counter-clockwise convex polygon."""
    n = len(poly)
    worst = np.inf
    for i in range(n):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % n]
        ex, ey = x1 - x0, y1 - y0
        norm = np.hypot(ex, ey)
        if norm == 0:
            continue
        worst = min(worst, (ex * (y - y0) - ey * (x - x0)) / norm)
    return worst


def test_flat_point_sets_fall_back_correctly():
    # every v equal: the points (u, -v, -a) lie in a plane, which Qhull refuses without joggling
    rng = np.random.default_rng(5)
    u = rng.normal(0, 1, 3000)
    v = np.full(3000, 0.7)
    a = 1.5 * u + rng.exponential(1.0, 3000)
    reg = C.analyze_region(u, v, a, margin=0.1, alpha_max=4.0)
    A, B, T, valid = C.grid(u, v, a, reg, 20, 0.1)
    np.testing.assert_allclose(T[valid], brute_min_t(A[valid], B[valid], u, v, a), atol=1e-9)


def test_non_finite_rows_are_dropped_from_region_and_heatmap_alike():
    # a diverged step (NaN/inf) must not shift which rows the heatmap reads as the hull
    rng = np.random.default_rng(11)
    u = rng.uniform(0.1, 2.0, 2000)
    v = rng.uniform(0.0, 1.0, 2000)
    a = 1.2 * u - 0.3 * v + rng.exponential(0.5, 2000)
    bad = np.array([0, 7, 500, 1999])
    u2, v2, a2 = u.copy(), v.copy(), a.copy()
    u2[bad[0]], v2[bad[1]], a2[bad[2]], a2[bad[3]] = np.nan, np.inf, -np.inf, np.nan
    ok = np.ones(2000, bool)
    ok[bad] = False
    reg = C.analyze_region(u2, v2, a2, margin=0.1, alpha_max=4.0)
    ref = C.analyze_region(u[ok], v[ok], a[ok], margin=0.1, alpha_max=4.0)
    assert reg.alpha_min == ref.alpha_min and reg.hull_points == ref.hull_points
    assert np.isfinite(u2[reg.hull_index]).all() and np.isfinite(a2[reg.hull_index]).all()
    A, B, T, valid = C.grid(u2, v2, a2, reg, 25, 0.1)
    np.testing.assert_allclose(T[valid], brute_min_t(A[valid], B[valid], u[ok], v[ok], a[ok]), atol=1e-9)


# ----------------------------------------------------------------------------------- constants from LPs (issue 13)
def own_lex_min(u, v, a, margin, first):
    """The test's own lexicographic LP over every row (unscaled): smallest coordinate ``first``, then the other."""
    A = np.vstack([np.column_stack([u, -v]), [-1.0, 1.0]])
    b = np.append(a, -margin)
    c = [0.0, 0.0]
    c[first] = 1.0
    x = linprog(c, A_ub=A, b_ub=b, bounds=[(0, None), (0, None)], method="highs").x
    fixed = [(0, None), (0, None)]
    fixed[first] = (x[first], x[first])
    return linprog(c[::-1], A_ub=A, b_ub=b, bounds=fixed, method="highs").x


def own_ratio_inf(u, v, a, margin):
    """inf beta / (alpha - beta) over the region by brute force: every intersection of two constraint lines that
    is feasible, and the flattest recession direction (slope max(0, max_k u_k / v_k) when every v_k > 0)."""
    lines = [(uk, -vk, ak) for uk, vk, ak in zip(u, v, a)] + [(-1.0, 1.0, -margin), (0.0, -1.0, 0.0)]
    best = np.inf
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            M = np.array([lines[i][:2], lines[j][:2]])
            if abs(np.linalg.det(M)) < 1e-12:
                continue
            al, be = np.linalg.solve(M, [lines[i][2], lines[j][2]])
            if all(c1 * al + c2 * be <= c3 + 1e-9 * (1 + abs(c3)) for c1, c2, c3 in lines) and al - be > 0:
                best = min(best, be / (al - be))
    assert (v > 0).all()
    s = max(0.0, float(np.max(u / v)))
    return min(best, s / (1 - s)) if s < 1 else best


def test_smallest_alpha_beyond_a_numeric_alpha_max_is_feasible_with_exact_constants():
    # alpha + beta >= 4 (u=-1, v=1, a=-4): by hand alpha_min = 2.05 at beta = 1.95 (on alpha - beta = 0.1),
    # beta_min = 0 at alpha = 4, and the term's ratio beta / (alpha - beta) is 0 at (4, 0)
    u, v, a = np.array([-1.0]), np.array([1.0]), np.array([-4.0])
    reg = C.analyze_region(u, v, a, margin=0.1, alpha_max=1.0)
    assert reg.feasible and reg.polygon == []  # nothing to draw inside [0, 1]^2, and still a verdict
    assert (reg.alpha_min, reg.beta_at_alpha_min) == pytest.approx((2.05, 1.95), abs=1e-12)
    assert (reg.beta_min, reg.alpha_at_beta_min) == pytest.approx((0.0, 4.0), abs=1e-12)
    assert reg.binding == "margin" and reg.ratio == 0.0 and (reg.ratio_alpha, reg.ratio_beta) == pytest.approx((4, 0))
    # many rows, a box far left of the region: every constant equals the test's own LP over all rows
    u, v, a = _random_points(3000, 7)
    small = C.analyze_region(u, v, a, margin=0.1, alpha_max=0.05)
    auto = C.analyze_region(u, v, a, margin=0.1)
    assert small.feasible and small.alpha_min > 0.05 and small.polygon == []
    for first, (x, y) in ((0, ("alpha_min", "beta_at_alpha_min")), (1, ("alpha_at_beta_min", "beta_min"))):
        want = own_lex_min(u, v, a, 0.1, first)
        for reg in (small, auto):
            assert (getattr(reg, x), getattr(reg, y)) == pytest.approx(tuple(want), rel=1e-9, abs=1e-9)
    assert small.ratio == pytest.approx(own_ratio_inf(u[small.hull_index], v[small.hull_index],
                                                      a[small.hull_index], 0.1), rel=1e-9)


@pytest.mark.parametrize("margin", [0.01, 0.1, 1.0])
def test_term_minimum_at_an_interior_vertex_does_not_move_with_the_margin(margin):
    # beta >= 2 - alpha/4 (u=-1/4, v=1, a=-2) and beta >= alpha/2 - 1 (u=1/2, v=1, a=1) meet at (4, 1): there
    # beta/alpha = 1/4 is smallest (it falls along the first line, rises along the second; recession directions
    # have slope >= 1/2), so min beta/(alpha - beta) = 1/3, far from alpha - beta = margin
    u, v, a = np.array([-0.25, 0.5]), np.array([1.0, 1.0]), np.array([-2.0, 1.0])
    reg = C.analyze_region(u, v, a, margin=margin)
    assert reg.feasible and not reg.at_infinity
    assert (reg.ratio_alpha, reg.ratio_beta) == pytest.approx((4.0, 1.0), rel=1e-12)
    assert reg.term(0.5) == pytest.approx(2 * 0.5 / 3, rel=1e-12)
    # while the smallest alpha sits on the margin line and moves with it: alpha = (2 + margin) 4/5
    assert reg.alpha_min == pytest.approx((2 + margin) * 0.8, rel=1e-12) and reg.binding == "margin"
    assert reg.ratio == pytest.approx(own_ratio_inf(u, v, a, margin), rel=1e-12)
    assert reg.ratio_binding == "data"  # the term's vertex is held by the two data rows alone


def test_term_held_by_the_margin_line_is_named_so():
    # alpha <= 2.05 (u = 1, v = 0, a = 2.05) and alpha + beta >= 4 leave, with alpha - beta >= 0.1, the single
    # pair (2.05, 1.95): the term's pair lies on the margin line (a wider margin would leave no pair at all)
    u, v, a = np.array([1.0, -1.0]), np.array([0.0, 1.0]), np.array([2.05, -4.0])
    reg = C.analyze_region(u, v, a, margin=0.1)
    assert reg.feasible and not reg.at_infinity
    assert (reg.ratio_alpha, reg.ratio_beta) == pytest.approx((2.05, 1.95), rel=1e-9)
    assert reg.ratio == pytest.approx(19.5, rel=1e-9) and reg.ratio_binding == "margin"
    # with a narrower margin the pair leaves the line: (2.05, 1.95) is then held by the two data rows
    assert C.analyze_region(u, v, a, margin=0.05).ratio_binding == "data"


def test_term_infimum_along_unbounded_directions():
    # beta >= 1 (u=0, v=1, a=-1) and alpha + beta >= 4: (alpha, 1) is feasible for every alpha >= 3, so the
    # ratio 1/(alpha - 1) tends to 0 and is never attained (beta = 0 is infeasible)
    reg = C.analyze_region(np.array([0.0, -1.0]), np.array([1.0, 1.0]), np.array([-1.0, -4.0]), margin=0.1)
    assert reg.feasible and reg.at_infinity and reg.term(0.7) == 0.0
    assert reg.ratio_alpha == np.inf and reg.ratio_beta == pytest.approx(1.0) == reg.beta_min
    # alpha - 2 beta <= -1: beta >= alpha/2 + 1/2, so beta/alpha falls to 1/2 and the ratio to 1 at infinity only
    reg = C.analyze_region(np.array([1.0]), np.array([2.0]), np.array([-1.0]), margin=0.1)
    assert reg.at_infinity and reg.ratio == pytest.approx(1.0, abs=1e-9) and reg.term(0.5) == pytest.approx(1.0)
    assert (reg.ratio_alpha, reg.ratio_beta) == (np.inf, np.inf)
    # a negative or unknown sigma_int^2 gives no term (it would send the minimum to -inf along (1, 1))
    assert np.isnan(reg.term(-0.1)) and np.isnan(reg.term(float("nan")))


@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_binding_names_the_constraint_that_holds_the_smallest_pair(scale):
    m = 0.1 * scale
    cases = {  # (u, v, a) rows, with a and the margin scaled: the same geometry at another size
        "corner": ([0.5, 1.0], [1.0, 2.0], [1.0, 2.0]),  # a = 2u, u > 0: alpha <= 2 with beta = 0, down to (m, 0)
        "margin": ([-1.0], [1.0], [-4.0]),  # alpha + beta >= 4: (2.05, 1.95) on alpha - beta = margin
        "beta_nonneg": ([-1.0], [0.0], [-2.0]),  # alpha >= 2 for every beta: (2, 0), off the margin line
        "data": ([-1.0, 0.0], [0.0, 1.0], [-2.0, -1.0]),  # alpha >= 2 and beta >= 1: (2, 1), held by data alone
    }
    pairs = {"corner": (m, 0.0), "margin": (2.05 * scale, 1.95 * scale), "beta_nonneg": (2 * scale, 0.0),
             "data": (2 * scale, scale)}
    for name, (u, v, a) in cases.items():
        reg = C.analyze_region(np.array(u), np.array(v), np.array(a) * scale, margin=m)
        assert reg.binding == name
        assert (reg.alpha_min, reg.beta_at_alpha_min) == pytest.approx(pairs[name], rel=1e-9, abs=1e-15 * scale)
    assert C.analyze_region(np.array([0.0]), np.array([0.0]), np.array([-1.0]), margin=m).binding == ""


def test_seed_conditions_and_spread_against_the_tests_own_lps(tmp_path):
    exp, truth = _synthetic_experiment(tmp_path)
    files = {t: sorted(glob.glob(f"{tmp_path}/tables/{t}/experiment=t/*/*.parquet"))
             for t in ("steps", "directions", "drift")}
    out = C.experiment_conditions(exp, tmp_path, files["steps"], files["directions"], files["drift"])
    seeds = pl.read_parquet(f"{tmp_path}/tables/seed_conditions/**/*.parquet").sort("seed")
    assert seeds["run"].to_list() == ["seed-0", "seed-1", "seed-2"] and seeds["n_steps"].to_list() == [40] * 3
    rows = {}
    for s, row in zip((0, 1, 2), seeds.iter_rows(named=True)):
        u, v, a, sigma = truth[s]
        rows[s] = (u, v, a)
        want = own_lex_min(u, v, a, 0.1, 0)
        assert row["feasible"] and (row["alpha_min"], row["beta_at_alpha_min"]) == pytest.approx(tuple(want), rel=1e-9)
        assert row["beta_min"] == pytest.approx(own_lex_min(u, v, a, 0.1, 1)[1], abs=1e-9)
        assert row["nonvanishing_term"] == pytest.approx(2 * sigma * own_ratio_inf(u, v, a, 0.1), rel=1e-9)
    summary = out["points"][0]
    allu, allv, alla = (np.concatenate([rows[s][i] for s in rows]) for i in range(3))
    assert summary["alpha_min"] == pytest.approx(own_lex_min(allu, allv, alla, 0.1, 0)[0], rel=1e-9)
    assert summary["n_seeds"] == 3
    assert summary["alpha_min_seed_lo"] == pytest.approx(seeds["alpha_min"].min(), rel=0)
    assert summary["alpha_min_seed_hi"] == pytest.approx(seeds["alpha_min"].max(), rel=0)
    assert summary["nonvanishing_term_seed_lo"] == seeds["nonvanishing_term"].min()
    assert summary["nonvanishing_term_seed_hi"] == seeds["nonvanishing_term"].max()
    assert summary["alpha_min"] >= summary["alpha_min_seed_hi"] - 1e-12  # all seeds together: a smaller region
    assert (summary["directions_points"], summary["directions_spacing"]) == (3, 30)  # steps 0, 10, 40 (fewest)
    sens = pl.read_parquet(f"{tmp_path}/tables/margin_sensitivity/**/*.parquet").sort("margin")
    assert sens["margin"].to_list() == [0.01, 0.03, 0.1, 0.3, 1.0]
    assert sens["is_configured"].to_list() == [False, False, True, False, False]
    for row in sens.iter_rows(named=True):
        want = own_lex_min(allu, allv, alla, row["margin"], 0)
        assert (row["alpha_min"], row["beta_at_alpha_min"]) == pytest.approx(tuple(want), rel=1e-9, abs=1e-12)
    configured = sens.filter(pl.col("is_configured")).row(0, named=True)
    assert configured["nonvanishing_term"] == summary["nonvanishing_term"]
    assert configured["binding"] == summary["binding"]



def _synthetic_experiment(results) -> tuple[ExperimentSpec, dict]:
    """Three seeds of one point, 40 step rows each (random points with a known feasible pair) and a
    per-seed f* and f_i*, written as the steps/directions/drift parts the conditions job reads; returns the
    experiment and, per seed, its (u, v, a, sigma_int^2)."""
    from landscope.config import load_study

    exp = load_study({"device": "cpu", "experiments": {"t": {
        "model": {"name": "mlp"}, "dataset": {"name": "digits", "n_train": 200}, "steps": 40,
        "snapshot_every": 40, "seeds": [0, 1, 2], "conditions": {"margin": 0.1, "grid_size": 5}}}}).experiments["t"]
    truth = {}
    for spec in exp.runs:
        s = spec.seed
        u, v, a = _random_points(40, 100 + s, alpha0=2.0 + s, beta0=1.0)
        fi_star = 0.1 * (s + 1)
        f_star = 0.5 + 0.2 * s
        truth[s] = (u, v, a, f_star - fi_star)
        loss = v + fi_star
        n = len(u)
        store.write_table(store.part_path(results, "steps", "t", spec.run, 0), "steps", {
            "experiment": ["t"] * n, "run": [spec.run] * n, "step": np.arange(n), "lr": np.full(n, 0.1),
            "batch_loss": loss, "batch_loss_at_min": loss - u, "batch_loss_star": np.full(n, fi_star),
            "grad_dot_dir": a, "grad_norm": np.ones(n), "dist_to_min": np.ones(n)})
        d_steps = [0, 10, 40] if s == 1 else [0, 10, 20, 30, 40]
        k = len(d_steps)
        store.write_table(store.part_path(results, "directions", "t", spec.run, 0), "directions", {
            "experiment": ["t"] * k, "run": [spec.run] * k, "step": d_steps, "full_loss": [1.0] * k,
            "full_loss_at_min": [f_star] * k, "full_grad_norm": [1.0] * k, "full_grad_dot_dir": [0.5] * k,
            "dist_to_min": [1.0] * k, "cos_angle": [0.5] * k, "aiming_coef": [0.5] * k})
        store.write_table(store.part_path(results, "drift", "t", spec.run, 0), "drift", {
            "experiment": ["t"], "run": [spec.run], "segment": [0], "step": [40], "max_abs_drift": [0.0],
            "tolerance": [0.0], "replay_wall_s": [0.0]})
    return exp, truth
