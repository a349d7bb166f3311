"""condition_constants against ground truth: quadratics with a known spectrum, and a known failing step."""

import glob

import numpy as np
import polars as pl
import pytest
from test_conditions import _synthetic_experiment  # the conditions job's synthetic three-seed experiment

from landscope import store
from landscope.measures import classical
from landscope.measures import conditions as C


def _rows(A, points, steps, run="r", x_star=None):
    """directions- and steps-shaped columns of f(x) = (1/2) (x - x*)^T A (x - x*) (minimum 0 at x* = x_K), with
    exact gradients; the mini-batch columns use the same f as every batch (f_i = f, f_i* = 0)."""
    x_star = np.zeros(A.shape[0]) if x_star is None else x_star
    dx = np.array(points, float) - x_star
    f = 0.5 * np.einsum("ki,ij,kj->k", dx, A, dx)
    g = dx @ A.T
    n = len(dx)
    common = dict(run=np.array([run] * n), step=np.array(steps), dist_to_min=np.linalg.norm(dx, axis=1))
    full = dict(common, full_loss=f, full_loss_at_min=np.zeros(n), full_grad_norm=np.linalg.norm(g, axis=1),
                full_grad_dot_dir=np.einsum("ki,ki->k", g, dx))
    mini = dict(common, batch_loss=f, batch_loss_at_min=np.zeros(n), batch_loss_star=np.zeros(n),
                grad_norm=full["full_grad_norm"], grad_dot_dir=full["full_grad_dot_dir"])
    return {"full_batch": full, "mini_batch": mini}


def _table(tables, runs=("r",), margin=0.1):
    rows = classical.condition_constants("e", "p", list(runs), tables, 2.0, margin, C.constants_of)
    return {(r["run"], r["scope"], r["condition"]): r for r in rows}


def test_quadratic_constants_are_its_smallest_eigenvalue():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    lam = np.array([0.3, 1.0, 2.5, 7.0])
    A = Q @ np.diag(lam) @ Q.T
    # random points, one along the smallest eigenvector (where RSI, EB, QG and PL are tight) and x_K itself
    pts = [rng.normal(size=4) for _ in range(5)] + [2.0 * Q[:, 0], np.zeros(4)]
    steps = [0, 10, 20, 30, 40, 50, 60]
    got = _table(_rows(A, pts, steps))
    for scope in classical.SCOPES:
        for cond in ("rsi", "eb", "qg", "pl"):
            row = got[("r", scope, cond)]
            assert row["constant"] == pytest.approx(lam[0], rel=1e-12), (scope, cond)
            assert row["constant_step"] == 50 and row["holds"] and row["first_fail_step"] is None
            assert row["fraction_positive"] == 1.0 and row["n_rows"] == 6 and row["spacing"] == 10
            assert "1 rows excluded: at x_K (distance 0)" in row["note"]
        # <A x, x> = 2 f: QCvx's and Aiming's theta are 2 everywhere; star-convexity holds with slack 1
        for cond, want in (("qcvx", 2.0), ("aiming", 2.0), ("star_convexity", 1.0)):
            row = got[("r", scope, cond)]
            assert row["constant"] == pytest.approx(want, rel=1e-12) and row["holds"], (scope, cond)
        # alpha-beta: u = v = f, a = 2 f, so alpha - beta <= 2 with alpha >= beta + margin: smallest alpha = margin
        ab = got[("r", scope, "alpha_beta")]
        assert ab["constant"] == pytest.approx(0.1, rel=1e-12) and ab["holds"] and ab["first_fail_step"] is None
    assert got[("r", "full_batch", "qg")]["f_star"] == "f(x_K)"
    assert got[("r", "mini_batch", "qg")]["f_star"] == "f_i(x_K)"
    assert got[("all", "full_batch", "rsi")]["constant"] == got[("r", "full_batch", "rsi")]["constant"]


def test_pl_with_delta_below_two():
    A = np.diag([0.5, 4.0])
    pts = [[1.0, 0.0], [0.0, 0.5], [0.3, -0.2]]
    tables = _rows(A, pts, [0, 1, 2])
    rows = classical.condition_constants("e", "p", ["r"], tables, 1.5, 0.1, C.constants_of)
    pl_row = next(r for r in rows if r["condition"] == "pl" and r["scope"] == "full_batch" and r["run"] == "r")
    f = np.array([0.5 * x @ A @ x for x in np.array(pts)])
    g = np.array([np.linalg.norm(A @ x) for x in np.array(pts)])
    assert pl_row["constant"] == pytest.approx(np.min(0.5 * g**2 / f ** (2 / 1.5)), rel=1e-12)
    assert pl_row["note"].startswith("delta = 1.5")


def test_indefinite_direction_fails_at_its_step():
    """f = (1/2) x^T diag(2, -1) x: at the point along e2 (step 20) <g, x> = -||x||^2 and f - f* < 0, so RSI and
    QG fail first there while EB (||g|| >= min |eigenvalue| ||x||) still holds; QCvx leaves that row out."""
    A = np.diag([2.0, -1.0])
    pts = [[1.0, 0.2], [0.5, 0.1], [0.0, 0.8], [0.3, 0.3], [-0.1, 2.0]]
    got = _table(_rows(A, pts, [0, 10, 20, 30, 40]))
    for scope in classical.SCOPES:
        rsi, qg, eb = (got[("r", scope, c)] for c in ("rsi", "qg", "eb"))
        assert rsi["first_fail_step"] == 20 and not rsi["holds"] and rsi["constant"] == pytest.approx(-1.0, rel=1e-12)
        assert qg["first_fail_step"] == 20 and qg["constant"] == pytest.approx(-1.0, rel=1e-12)
        assert rsi["fraction_positive"] == pytest.approx(3 / 5) and rsi["constant_step"] == 20
        assert eb["holds"] and eb["first_fail_step"] is None and eb["constant"] == pytest.approx(1.0, rel=1e-12)
        qc = got[("r", scope, "qcvx")]
        assert qc["n_rows"] == 3 and "2 rows excluded: f - f* <= 0" in qc["note"]
        assert qc["constant"] == pytest.approx(2.0, rel=1e-12)


def test_star_convexity_and_alpha_beta_fail_at_known_steps():
    """1-D rows built by hand: star-convexity's slack a/(f - f*) - 1 first drops below 0 at step 2; the
    alpha-beta region (margin 0.1) is empty from step 3 on, where a row needs <g, x - x_K> < 0 with u = v."""
    x = dict(run=np.array(["r"] * 4), step=np.arange(4), dist_to_min=np.ones(4),
             full_loss=np.array([1.0, 1.0, 1.0, 1.0]), full_loss_at_min=np.zeros(4), full_grad_norm=np.ones(4),
             full_grad_dot_dir=np.array([3.0, 1.0, 0.5, -0.2]))
    mini = dict(run=x["run"], step=x["step"], dist_to_min=x["dist_to_min"], batch_loss=x["full_loss"],
                batch_loss_at_min=x["full_loss_at_min"], batch_loss_star=x["full_loss_at_min"],
                grad_norm=x["full_grad_norm"], grad_dot_dir=x["full_grad_dot_dir"])
    got = _table({"full_batch": x, "mini_batch": mini})
    for scope in classical.SCOPES:
        star = got[("r", scope, "star_convexity")]
        assert star["first_fail_step"] == 2 and not star["holds"] and star["fraction_positive"] == 0.5
        assert star["constant"] == pytest.approx(-1.2, rel=1e-12)
        ab = got[("r", scope, "alpha_beta")]
        assert not ab["holds"] and ab["constant"] is None and ab["first_fail_step"] == 3
        assert ab["fraction_positive"] == 0.75


def test_written_by_the_conditions_job_and_agrees_with_condition_summary(tmp_path):
    exp, _ = _synthetic_experiment(tmp_path)
    files = {t: sorted(glob.glob(f"{tmp_path}/tables/{t}/experiment=t/*/*.parquet"))
             for t in ("steps", "directions", "drift")}
    out = C.experiment_conditions(exp, tmp_path, files["steps"], files["directions"], files["drift"])
    got = pl.read_parquet(f"{tmp_path}/tables/condition_constants/**/*.parquet", hive_partitioning=False)
    assert got.columns == list(store.SCHEMAS["condition_constants"])
    assert got.height == 2 * 4 * len(classical.CONDITIONS)  # 2 scopes x (3 runs + all) x conditions
    ab = got.filter((pl.col("condition") == "alpha_beta") & (pl.col("scope") == "mini_batch")
                    & (pl.col("run") == "all")).row(0, named=True)
    assert ab["constant"] == out["points"][0]["alpha_min"] and ab["n_rows"] == 120
    seeds = pl.read_parquet(f"{tmp_path}/tables/seed_conditions/**/*.parquet", hive_partitioning=False)
    for row in seeds.iter_rows(named=True):
        mine = got.filter((pl.col("condition") == "alpha_beta") & (pl.col("scope") == "mini_batch")
                          & (pl.col("run") == row["run"])).row(0, named=True)
        assert mine["constant"] == row["alpha_min"]
    # full batch: every directions row has a = 0.5, f - f* = 1 - f*_seed: QCvx theta = 0.5 / (1 - f*)
    qc = got.filter((pl.col("condition") == "qcvx") & (pl.col("scope") == "full_batch") & (pl.col("run") == "all"))
    assert qc["constant"][0] == pytest.approx(0.5 / (1 - 0.5), rel=1e-12)  # seed 0: f* = 0.5, the smallest theta
    assert qc["spacing"][0] == 30  # seed 1's rows at steps 0, 10, 40


def test_condition_steps_view_is_the_sql_twin_of_the_ratios(tmp_path):
    """The per-step view agrees row by row with classical.ratios, its minimum per run is the table's constant, and
    alpha-beta's slack at the smallest pair is >= 0 at every step (its LP makes that pair feasible)."""
    exp, _ = _synthetic_experiment(tmp_path)
    files = {t: sorted(glob.glob(f"{tmp_path}/tables/{t}/experiment=t/*/*.parquet"))
             for t in ("steps", "directions", "drift")}
    for spec in exp.runs:  # the view reads each run's sweep point from the runs table
        store.write_table(store.part_path(tmp_path, "runs", "t", spec.run, 0), "runs",
                          {c: [None] for c in store.SCHEMAS["runs"]} | {"experiment": ["t"], "run": [spec.run],
                                                                         "point": [spec.point], "seed": [spec.seed]})
    C.experiment_conditions(exp, tmp_path, files["steps"], files["directions"], files["drift"])
    con = store.connect(tmp_path)
    view = con.sql("SELECT * FROM condition_steps").pl()
    assert view.height == 8 * (3 * 40 + 13)  # 8 conditions x (3 runs x 40 steps + 5 + 3 + 5 directions rows)
    assert set(view["point"].unique()) == {exp.runs[0].point}
    for scope, table in (("mini_batch", "steps"), ("full_batch", "directions")):
        rows = con.sql(f"SELECT * FROM {table} ORDER BY run, step").fetchnumpy()
        x = classical.scope_arrays(scope, rows)
        for cond in classical.CONDITIONS[1:]:
            r, domain, _ = classical.ratios(cond, x, 2.0)
            want = np.where(domain & (x["d"] != 0), r, np.nan)
            got = view.filter((pl.col("scope") == scope) & (pl.col("condition") == cond)).sort("run", "step")
            np.testing.assert_allclose(got["value"].fill_null(np.nan).to_numpy(), want, rtol=1e-12)
    constants = con.sql("""SELECT c.run, c.scope, c.condition, c.constant, v.lo FROM condition_constants c
                           JOIN (SELECT run, scope, condition, min(value) AS lo FROM condition_steps GROUP BY ALL) v
                           USING (run, scope, condition) WHERE c.condition <> 'alpha_beta'""").fetchall()
    assert len(constants) == 3 * 2 * 7
    for run, scope, cond, constant, lo in constants:
        assert lo == pytest.approx(constant, rel=1e-12), (run, scope, cond)
    ab = view.filter((pl.col("condition") == "alpha_beta") & (pl.col("scope") == "mini_batch"))
    assert ab.height == 120 and ab["holds"].all() and ab["value"].min() > -1e-9
    full_ab = view.filter((pl.col("condition") == "alpha_beta") & (pl.col("scope") == "full_batch"))
    assert full_ab.height == 13 and full_ab["value"].null_count() == 13
