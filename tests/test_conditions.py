"""The alpha-beta region and heatmap against hand-computed answers and brute force."""

import numpy as np
import pytest

from landscope.measures import conditions as C


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
    lp = C.lp_min(u, v, a, 0.1, (1.0, 1e-9))
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
