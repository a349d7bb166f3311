"""Kendall tau, its granulated form, its bootstrap interval and the per-measure table, against hand counts."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.stats

from landscope.measures.generalization import (
    TABLE_SCHEMA,
    bootstrap_tau,
    generalization_table,
    granulated_kendall,
    kendall_tau,
)


def test_kendall_tau_hand_count_with_ties():
    x = [1, 2, 2, 3]
    y = [1, 3, 2, 2]
    # The 6 pairs (i, j):     x      y
    #   (0,1): 1<2, 1<3  concordant
    #   (0,2): 1<2, 1<2  concordant
    #   (0,3): 1<3, 1<2  concordant
    #   (1,2): 2=2        tied in x
    #   (1,3): 2<3, 3>2  discordant
    #   (2,3): 2<3, 2=2  tied in y
    # C = 3, D = 1, n0 = 6, n1 = 1 (ties in x), n2 = 1 (ties in y):
    # tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)) = 2 / sqrt(5 * 5) = 0.4 (tau-a would be 2/6).
    assert kendall_tau(x, y) == pytest.approx(0.4, abs=1e-15)
    assert kendall_tau(y, x) == pytest.approx(0.4, abs=1e-15)


def test_kendall_tau_tie_in_both_on_one_pair():
    x = [1, 1, 2, 3]
    y = [5, 5, 4, 6]
    # Pairs: (0,1) tied in both; (0,2) 1<2, 5>4 D; (0,3) 1<3, 5<6 C; (1,2) D; (1,3) C; (2,3) 2<3, 4<6 C.
    # C = 3, D = 2, n0 = 6, n1 = 1, n2 = 1: tau_b = 1 / 5.
    assert kendall_tau(x, y) == pytest.approx(0.2, abs=1e-15)


def test_kendall_tau_order_and_undefined_cases():
    x = np.arange(7.0)
    assert kendall_tau(x, x**3) == 1.0
    assert kendall_tau(x, -np.exp(x)) == -1.0
    assert math.isnan(kendall_tau(x, np.ones(7)))  # constant side: undefined, not 0
    assert math.isnan(kendall_tau([1.0], [2.0]))
    # non-finite pairs are dropped: the reversed pair (nan) would otherwise break the perfect order
    assert kendall_tau([1, 2, 3, 4], [1, 2, float("nan"), 4]) == 1.0
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])


def test_kendall_tau_agrees_with_scipy_tau_b_with_many_ties():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, 40), rng.integers(0, 5, 40)
    assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)


def test_granulated_two_axis_toy():
    # Axes A, B in {0, 1, 2}; gap = a + b, measure = a - b. With B fixed the measure rises with the gap
    # (tau = +1 in each group), with A fixed it falls while the gap rises (tau = -1): psi_A = 1, psi_B = -1,
    # Psi = 0. Runs (1,2) and (2,2) are left out, so the B = 2 group has A = 0 only and is skipped:
    # A rests on 2 groups (B = 0, 1), B on 3 (A = 0: b in 0..2; A = 1, 2: b in 0, 1).
    # A third axis C is constant: it never varies alone, so it has no groups and stays out of Psi.
    grid = [(a, b) for a in range(3) for b in range(3) if (a, b) not in {(1, 2), (2, 2)}]
    a = np.array([p[0] for p in grid], dtype=float)
    b = np.array([p[1] for p in grid], dtype=float)
    g = granulated_kendall(a - b, a + b, {"A": a.tolist(), "B": b.tolist(), "C": ["x"] * len(grid)})
    assert g.psi["A"] == 1.0 and g.psi["B"] == -1.0 and math.isnan(g.psi["C"])
    assert g.n_groups == {"A": 2, "B": 3, "C": 0}
    assert g.psi_mean == 0.0 and g.n_axes == 2 and g.n_groups_used == 5
    # Over all 7 runs, by contrast, the sign of a pair is sign(da^2 - db^2). Listing the 21 pairs of
    # (0,0) (0,1) (0,2) (1,0) (1,1) (2,0) (2,1): concordant (|da| > |db|) 00-10 00-20 00-21 01-11 01-20
    # 01-21 02-21 10-20 11-21: C = 9; discordant 00-01 00-02 01-02 02-10 10-11 20-21: D = 6; measure tied
    # (da = db) 00-11 10-21: n1 = 2; gap tied (da = -db) 01-10 02-11 02-20 11-20: n2 = 4.
    # tau_b = 3 / sqrt(19 * 17) = 0.1669: the plain tau hides the disagreement along B.
    assert kendall_tau(a - b, a + b) == pytest.approx(3 / math.sqrt(19 * 17), abs=1e-15)


def test_granulated_skips_groups_where_tau_is_undefined():
    # Axis A varies in two groups (B = 0, B = 1); in the B = 1 group the measure is constant, so tau is
    # undefined there and psi_A rests on the B = 0 group alone (tau = +1).
    a = [0, 1, 2, 0, 1, 2]
    b = [0, 0, 0, 1, 1, 1]
    measure = [1.0, 2.0, 3.0, 5.0, 5.0, 5.0]
    gap = [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]
    g = granulated_kendall(measure, gap, {"A": a, "B": b})
    assert g.psi["A"] == 1.0 and g.n_groups["A"] == 1 and g.n_undefined["A"] == 1
    # B: three groups (A = 0, 1, 2) of two runs each; measure rises with B (1 -> 5, 2 -> 5, 3 -> 5) and the
    # gap is equal inside each group: tau undefined in all three, so psi_B is NaN and Psi = psi_A.
    assert math.isnan(g.psi["B"]) and g.n_groups["B"] == 0 and g.n_undefined["B"] == 3
    assert g.psi_mean == 1.0 and g.n_axes == 1


def test_bootstrap_interval_matches_direct_resampling():
    # The count-matrix shortcut must give, resample by resample, tau-b of the resampled runs.
    rng = np.random.default_rng(5)
    x = rng.normal(size=15)
    y = x + rng.normal(size=15)
    ci = bootstrap_tau(x, y, n_boot=200, seed=11, level=0.8)
    draw = np.random.default_rng(11)
    direct = [kendall_tau(x[i], y[i]) for i in (draw.integers(0, 15, 15) for _ in range(200))]
    direct = np.array([t for t in direct if not math.isnan(t)])
    assert ci.n_defined == direct.size
    assert (ci.lo, ci.hi) == pytest.approx(tuple(np.quantile(direct, [0.1, 0.9])), abs=1e-12)
    assert ci.tau == kendall_tau(x, y) and ci.n == 15


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n():
    widths = []
    for n in (20, 80, 320):
        rng = np.random.default_rng(0)
        x = rng.normal(size=n)
        y = x + 0.8 * rng.normal(size=n)
        ci = bootstrap_tau(x, y, n_boot=400, seed=1)
        assert ci.lo <= ci.tau <= ci.hi and ci.n == n and ci.n_defined == 400
        widths.append(ci.hi - ci.lo)
    # The width of a tau interval scales like 1/sqrt(n): each fourfold n should roughly halve it.
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.7 * widths[0] / 2


def test_bootstrap_perfect_order_and_constant():
    ci = bootstrap_tau([1, 2, 3], [10, 20, 30], n_boot=200)
    assert (ci.tau, ci.lo, ci.hi) == (1.0, 1.0, 1.0)  # resamples only add ties, never a discordant pair
    # A resample that draws one run three times (probability 3/27) is constant: undefined and skipped
    # (expected 22 of 200; none at all has probability (8/9)^200 ~ 6e-11).
    assert 0 < 200 - ci.n_defined < 60
    ci = bootstrap_tau([1, 2, 3], [5, 5, 5])
    assert math.isnan(ci.tau) and math.isnan(ci.lo) and ci.n == 3


def test_generalization_table_scopes_and_numbers():
    # Experiment a: measure follows the gap (tau = 1). Experiment b: reversed (tau = -1), plus one run whose
    # measure is missing (dropped). Over the 6 runs, ordered by gap 1..6, the measure is 1,2,3,6,5,4:
    # pairs within a: 3 concordant, a-b: 9 concordant, within b: 3 discordant -> tau = (12 - 3) / 15 = 0.6.
    runs = pl.DataFrame({
        "experiment": ["a"] * 3 + ["b"] * 4,
        "width": [1, 2, 3, 1, 2, 3, 4],
        "lr": [0.1] * 3 + [0.01] * 4,
        "generalization_gap": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "lambda_max": [1.0, 2.0, 3.0, 6.0, 5.0, 4.0, None],
        "param_norm": [2.0] * 7,
    })
    t = generalization_table(runs, ["lambda_max", "param_norm"], hparams=["width", "lr"], n_boot=200)
    assert t.schema == pl.Schema(TABLE_SCHEMA)
    lam = {r["scope"]: r for r in t.filter(pl.col("measure") == "lambda_max").iter_rows(named=True)}
    assert list(lam) == ["study", "experiment=a", "experiment=b"]
    assert [lam[s]["n_runs"] for s in lam] == [6, 3, 3]
    assert lam["study"]["tau"] == pytest.approx(0.6, abs=1e-15)
    assert lam["experiment=a"]["tau"] == 1.0 and lam["experiment=b"]["tau"] == -1.0
    assert lam["study"]["tau_lo"] <= 0.6 <= lam["study"]["tau_hi"]
    assert (lam["experiment=a"]["tau_lo"], lam["experiment=a"]["tau_hi"]) == (1.0, 1.0)
    # Study scope: axis width groups by lr -> a (tau 1) and b (tau -1): psi_width = 0; axis lr groups by
    # width -> width 1, 2, 3 each pair one a run with one b run, measure and gap both larger in b: tau 1,
    # psi_lr = 1. Psi = 0.5 over 2 axes and 5 groups. Within a, lr is constant: Psi = psi_width = 1.
    assert lam["study"]["granulated_psi"] == 0.5
    assert (lam["study"]["granulated_axes"], lam["study"]["granulated_groups"]) == (2, 5)
    assert lam["experiment=a"]["granulated_psi"] == 1.0 and lam["experiment=b"]["granulated_psi"] == -1.0
    # A constant measure has no rank correlation: every number is null, the run count is not.
    norm = t.filter(pl.col("measure") == "param_norm", pl.col("scope") == "study").row(0, named=True)
    assert norm["n_runs"] == 7 and norm["tau"] is None and norm["tau_lo"] is None
    assert norm["granulated_psi"] is None and norm["granulated_axes"] == 0
    with pytest.raises(ValueError, match="not in the run table"):
        generalization_table(runs, ["trace"])


def test_generalization_table_without_hparams_or_scopes():
    runs = pl.DataFrame({"generalization_gap": [3.0, 1.0, 2.0], "llc": [30.0, 10.0, 20.0]})
    t = generalization_table(runs, ["llc"], by=None, n_boot=20)
    assert t["scope"].to_list() == ["study"] and t["tau"].to_list() == [1.0]
    assert t["granulated_psi"].to_list() == [None] and t["granulated_axes"].to_list() == [0]
