"""condition_bounds against hand-computed numbers: each theorem's bound on a small case, every reason a theorem does
not apply, the alpha-beta pair against a brute-force grid, and the tables written from hand-made inputs."""

import math

import duckdb
import numpy as np
import pytest
import yaml
from conftest import ROOT, run_snakemake

from landscope import store
from landscope.measures import bounds as B
from landscope.measures import conditions as C
from landscope.spec import ExperimentSpec, RunSpec

# the small case: L = 2, gamma = 0.1, mu = 0.5, D0 = 3, sigma^2 = 0.04, K = 10, Delta_0 = 1.5
L, LR, MU, D0, NOISE, K, GAP0 = 2.0, 0.1, 0.5, 3.0, 0.04, 10, 1.5


def test_pl_bound_by_hand():
    # q = 1 - 0.1 * 0.5 = 0.95, q^10 = 0.5987369392383789; noise floor gamma L sigma^2 / (2 mu) = 0.008
    # 0.5987369392383789 * 1.5 + (1 - 0.5987369392383789) * 0.008 = 0.8981054088575684 + 0.0032101044860930
    assert B.pl_bound(K, LR, L, MU, NOISE, GAP0) == pytest.approx(0.9013155133436614, rel=1e-14)
    assert B.pl_bound(0, LR, L, MU, NOISE, GAP0) == GAP0  # k = 0: the initial gap itself, exactly
    assert B.pl_bound(10**6, LR, L, MU, NOISE, GAP0) == pytest.approx(0.008, rel=1e-12)  # the noise floor


def test_eb_is_the_pl_bound_with_mu_squared_over_l():
    # EB mu = 1 with L = 2: PL with mu = 1^2 / 2 = 0.5, the same number as above
    st = setting()
    assert B.bound_at("eb", K, st, 1.0, ()) == pytest.approx(0.9013155133436614, rel=1e-14)


def test_qcvx_star_and_aiming_bounds_by_hand():
    # theta = 0.5: c = 0.5 - 2 * 0.1 = 0.3; 9 / (2 * 0.1 * 0.3 * 10) + 0.1 * 0.04 / (2 * 0.3) = 15 + 0.00666...
    assert B.qcvx_bound(K, LR, L, 0.5, NOISE, D0) == pytest.approx(15.006666666666666, rel=1e-14)
    st = setting()
    assert B.bound_at("aiming", K, st, 0.5, ()) == pytest.approx(15.006666666666666, rel=1e-14)
    # star-convexity: theta = 1 whatever the measured constant, c = 0.8: 9 / 1.6 + 0.004 / 1.6 = 5.625 + 0.0025
    assert B.bound_at("star_convexity", K, st, 0.0, ()) == pytest.approx(5.6275, rel=1e-14)


def test_rsi_bound_by_hand():
    # rho = 1 - 2 * 0.1 * 0.5 + 0.01 * 4 = 0.94; (2/2) (0.94^10 * 9 + 0.01 * 0.04 / 0.06)
    # 0.94^10 = 0.5386151140948998: 4.847536026854098 + 0.006666666666666667
    assert B.rsi_bound(K, LR, L, MU, NOISE, D0) == pytest.approx(4.854202693520765, rel=1e-13)


def test_alpha_beta_bound_by_hand():
    # 9 / (10 * 0.1 * 0.5) + 2 * 2 * 0.1 * 0.2 / 0.5 + 2 * 0.2 * 0.2 / 0.5 = 18 + 0.16 + 0.16
    assert B.ab_bound(K, LR, L, 0.7, 0.2, 0.2, D0) == pytest.approx(18.32, rel=1e-14)


# ----------------------------------------------------------------------------------- the alpha-beta pair
# the region: alpha - beta <= 0.5 (u=1, v=1, a=0.5), alpha - 2 beta <= 0.3 (u=1, v=2, a=0.3), and a row that
# never binds (u=-0.5, v=0.5, a=0.1); with alpha - beta = w, beta >= max(0, w - 0.3)
U, V, A = np.array([1.0, 1.0, -0.5]), np.array([1.0, 2.0, 0.5]), np.array([0.5, 0.3, 0.1])


def brute_force(u, v, a, margin, lr, smooth, s, d0, k, step=0.005, top=2.0):
    """The bound's minimum over a grid of the region with alpha - beta >= max(margin, 2 L gamma)."""
    al, be = np.meshgrid(np.arange(0, top + step / 2, step), np.arange(0, top + step / 2, step), indexing="ij")
    al, be = al.ravel(), be.ravel()
    ok = (C.min_t(al, be, u, v, a) >= -1e-12) & (al - be >= max(margin, 2 * smooth * lr) - 1e-12)
    vals = B.ab_bound(k, lr, smooth, al[ok], be[ok], s, d0)
    i = int(np.argmin(vals))
    return float(vals[i]), float(al[ok][i]), float(be[ok][i])


@pytest.mark.parametrize("s, k, pair, value", [
    # c0 = 1/(100 * 0.1) + 2 * 0.1 * 0.05 = 0.11 > 0.3 c1 = 0.03: w = 0.5, beta = 0.2; (0.11 + 0.1 * 0.2) / 0.5
    (0.05, 100, (0.7, 0.2), 0.26),
    # s = 1: c0 = 0.1 + 0.2 = 0.3 < 0.3 c1 = 0.6: w = 0.3, beta = 0; 0.3 / 0.3
    (1.0, 100, (0.3, 0.0), 1.0),
])
def test_alpha_beta_pair_is_the_minimum_over_the_region(s, k, pair, value):
    alpha, beta, bound, at_inf = B.ab_pair(U, V, A, 0.1, 0.1, 1.0, s, 1.0, k)
    assert not at_inf and (alpha, beta) == pytest.approx(pair, abs=1e-9) and bound == pytest.approx(value, rel=1e-9)
    grid_value, grid_alpha, grid_beta = brute_force(U, V, A, 0.1, 0.1, 1.0, s, 1.0, k)
    assert grid_value == pytest.approx(value, rel=1e-9) and (grid_alpha, grid_beta) == pytest.approx(pair, abs=1e-9)


def test_alpha_beta_pair_at_infinity_and_above_the_range():
    # alpha - 2 beta <= 0.3 alone: along (2, 1) alpha - beta grows without bound and beta / (alpha - beta) -> 1;
    # the bound (c0 + c1 beta) / (alpha - beta) falls from c0 / 0.3 = 0.367 towards c1 = 2 * 0.05 = 0.1
    alpha, _beta, bound, at_inf = B.ab_pair(U[1:2], V[1:2], A[1:2], 0.1, 0.1, 1.0, 0.05, 1.0, 100)
    assert at_inf and math.isinf(alpha) and bound == pytest.approx(0.1, rel=1e-7)
    grid = [brute_force(U[1:2], V[1:2], A[1:2], 0.1, 0.1, 1.0, 0.05, 1.0, 100, step=0.05, top=t)[0] for t in (5, 50)]
    assert grid[0] > grid[1] > bound  # the grid's minimum falls towards it as the box grows
    # 2 L gamma = 0.6 > the widest alpha - beta = 0.5: no pair; its largest (alpha - beta) / (2L) = 0.5 / 6
    alpha, widest, bound, at_inf = B.ab_pair(U, V, A, 0.1, 0.1, 3.0, 0.05, 1.0, 100)
    assert math.isnan(alpha) and widest == pytest.approx(0.5, rel=1e-9)
    st = setting(smoothness=3.0, uva=(U, V, A))
    why, _ = B.verdict("alpha_beta", st, held(0.7), 2.0, 0.1)
    assert why == [("step size gamma=0.1 above the theorem's range: (alpha-beta)/(2L) <= 0.08333 for every "
                   "feasible pair")]


# ----------------------------------------------------------------------------------- why not
def setting(**kw):
    base = {"run": "r", "lr": LR, "reasons": [], "steps": K, "smoothness": L, "smoothness_source": "s",
            "noise": NOISE, "noise_source": "n", "sigma_int": 0.2, "d0": D0, "gap0": GAP0, "uva": (U, V, A)}
    return B.Setting(**{**base, **kw})


def held(constant, holds=True, fail=None):
    return {"constant": constant, "holds": holds, "first_fail_step": fail}


def test_each_reason_a_theorem_does_not_apply():
    sgd, const = {"name": "sgd", "lr": 0.1, "momentum": 0.0}, {"name": "constant"}
    assert B.assumption_reasons(sgd, const) == []
    assert B.assumption_reasons({**sgd, "momentum": 0.9}, const) == [
        "theorem for plain SGD; this run uses sgd (momentum 0.9)"]
    assert B.assumption_reasons({**sgd, "momentum": 0.9, "nesterov": True}, const) == [
        "theorem for plain SGD; this run uses sgd (momentum 0.9, nesterov)"]
    assert B.assumption_reasons({"name": "adam", "lr": 1e-3}, const) == ["theorem for plain SGD; this run uses adam"]
    assert B.assumption_reasons({"name": "nsgdm", "momentum": 0.9}, const) == [
        "theorem for plain SGD; this run uses nsgdm (momentum 0.9)"]
    assert B.assumption_reasons(sgd, {"name": "cosine"}) == [
        "theorem for a constant step; this run's schedule is cosine"]
    assert B.assumption_reasons({**sgd, "weight_decay": 5e-4}, const) == [
        "theorem for SGD on f; this run adds weight decay 0.0005 (it descends f + wd/2 ||x||^2)"]
    # the step size above the range, with the numbers (1/L = 0.5; theta/L = 0.1; 2 mu/L^2 = 0.25)
    above = "step size gamma={} above the theorem's range gamma {}"
    assert B.range_reason("pl", 0.6, 2.0, 0.5) == above.format(0.6, "<= 1/L = 0.5")
    assert B.range_reason("qcvx", 0.1, 2.0, 0.2) == above.format(0.1, "< theta/L = 0.1")
    assert B.range_reason("rsi", 0.3, 2.0, 0.5) == above.format(0.3, "< 2 mu/L^2 = 0.25")
    assert B.range_reason("star_convexity", 0.4, 2.0, 0.0) == ""
    assert B.range_reason("eb", 0.1, 2.0, 3.0).startswith("measured mu=3 above L=2, impossible for true constants")
    # the condition failed, or was never measured
    assert B.condition_reason("pl", held(-0.1, False, 7)) == "condition fails at step 7"
    assert B.condition_reason("star_convexity", held(0.0)) == ""  # theta - 1 = 0: star-convex, just
    assert B.condition_reason("qcvx", None) == "condition not measured (no usable rows)"
    st = setting()
    assert B.verdict("pl", st, held(MU), 2.0, 0.1)[0] == []
    assert B.verdict("pl", setting(smoothness=math.nan), held(MU), 2.0, 0.1)[0] == [B.SMOOTHNESS_UNKNOWN]
    assert B.verdict("pl", st, held(MU), 1.5, 0.1)[0] == [
        "PL measured with pl_delta = 1.5; the theorem is for plain PL (pl_delta = 2: exponent 2/delta = 1)"]
    assert B.verdict("eb", st, held(MU), 1.5, 0.1)[0] == []  # EB's conversion to PL does not read pl_delta
    assert B.verdict("qg", st, held(0.3), 2.0, 0.1)[0] == [B.QG_WHY]
    assert B.verdict("alpha_beta", setting(sigma_int=-0.01), held(0.7), 2.0, 0.1)[0] == [
        "sigma_int^2 estimate -0.01 < 0 or unknown: f* or f_i* misestimated"]
    # several reasons, joined with "; " in the table
    st = setting(reasons=["theorem for plain SGD; this run uses adam"], smoothness=math.nan)
    rows, curve = B.bound_rows("e", "p", st, {c: (np.array([5]), np.array([0.1])) for c in B.THEOREMS},
                               {("qcvx", "full_batch"): held(-0.2, False, 3)}, 2.0, 0.1)
    qcvx = next(r for r in rows if r["condition"] == "qcvx")
    assert qcvx["why_not"] == ("theorem for plain SGD; this run uses adam; condition fails at step 3; "
                               + B.SMOOTHNESS_UNKNOWN)
    assert not qcvx["applicable"] and qcvx["bound"] is None and qcvx["violated_steps"] is None
    assert all(r["bound"] is None and r["achieved"] == 0.1 for r in curve)


def test_estimates():
    lam, source = B.smoothness_estimate([0.5, np.nan, 2.0], [256, 256, 256], n_runs=2)
    assert lam == 2.0 and source.startswith("max lambda_max over 2 curvature checkpoints of 2 runs")
    assert math.isnan(B.smoothness_estimate([], [])[0])
    # rows at steps 0, 5, 10 (full) and 0..9 (batches): k = 0: 0.5^2 - 0.3^2 = 0.16, k = 5: max(0, 0.09 - 0.16) = 0
    noise = B.gradient_noise([0, 5, 10], [0.3, 0.4, 0.1], np.arange(10), [0.5, 0, 0, 0, 0, 0.3, 0, 0, 0, 0])
    assert noise == pytest.approx(0.08, rel=1e-14)


def test_achieved_curves():
    step, gap, loss = np.array([0, 5, 10]), np.array([1.5, 0.4, 0.0]), np.array([1.7, 0.6, 0.2])
    at, val = B.achieved_curve("last", step, gap, loss, 10)
    assert at.tolist() == [0, 5] and val.tolist() == [1.5, 0.4]
    at, val = B.achieved_curve("min", step, gap, loss, 10)  # after each row k < K, and at K
    assert at.tolist() == [1, 6, 10] and val.tolist() == [1.5, 0.4, 0.4]
    assert B.achieved_curve("min_f", step, gap, loss, 10)[1].tolist() == [1.7, 0.6, 0.6]
    at, val = B.worst_curve([(np.array([1, 6, 10]), np.array([1.5, 0.4, 0.4])),
                             (np.array([1, 10]), np.array([2.0, 0.1]))])
    assert at.tolist() == [1, 10] and val.tolist() == [2.0, 0.4]
    steps = np.arange(0, 10**5, 7)
    kept = steps[B.thin(steps)]
    assert len(kept) <= B.CURVE_POINTS and kept[0] == 0 and kept[-1] == steps[-1]


# ----------------------------------------------------------------------------------- the tables
def run_spec(run, **kw):
    base = {"experiment": "e", "run": run, "point": "p", "sweep": {}, "seed": 0, "model": {"name": "m"},
            "dataset": {"name": "d"}, "loss": None, "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.0},
            "schedule": {"name": "constant"}, "batch_size": 1, "steps": K, "snapshot_every": 5, "f_i_star": 0.0,
            "minimizer": "last", "drift_tolerance": "auto", "eval_batch_size": 4}
    return RunSpec(**{**base, **kw})


def write(path, table, rows):
    store.write_table(path, table, {c: [r.get(c) for r in rows] for c in store.SCHEMAS[table]})
    return str(path)


def hand_tables(tmp_path):
    """Two runs of one point. r0: Delta = 1.5, 0.4, 0 at steps 0, 5, 10 (f(x_K) = 0.2), D0 = 3, noise 0.08,
    L = 2; its batches make the alpha-beta region above (sigma_int^2 = 0.2). r1: the same with D0 = 4, Delta_5 = 0.5."""
    t = tmp_path / "in"
    files = {"runs": [], "steps": [], "directions": [], "curvature": []}
    uva = {0: (1.0, 1.0, 0.5), 1: (1.0, 2.0, 0.3), 2: (-0.5, 0.5, 0.1)}  # (u, v, a) of steps 0-2, then 0
    for run, d0, gap5 in (("r0", 3.0, 0.4), ("r1", 4.0, 0.5)):
        e = {"experiment": "e", "run": run}
        files["runs"].append(write(t / f"runs-{run}.parquet", "runs", [{**e, "n_train": 4}]))
        files["directions"].append(write(t / f"dir-{run}.parquet", "directions", [
            {**e, "step": s, "full_loss": 0.2 + g, "full_loss_at_min": 0.2, "full_grad_norm": gn, "dist_to_min": d}
            for s, g, gn, d in ((0, 1.5, 0.3, d0), (5, gap5, 0.4, 1.0), (10, 0.0, 0.1, 0.0))]))
        steps = []
        for k in range(K):
            u, v, a = uva.get(k, (0.0, 0.0, 0.0))
            steps.append({**e, "step": k, "batch_loss": v, "batch_loss_at_min": v - u, "batch_loss_star": 0.0,
                          "grad_dot_dir": a, "grad_norm": {0: 0.5, 5: 0.3}.get(k, 0.0), "dist_to_min": 1.0})
        files["steps"].append(write(t / f"steps-{run}.parquet", "steps", steps))
        files["curvature"].append(write(t / f"curv-{run}.parquet", "curvature", [
            {**e, "step": s, "lambda_max": lam, "eval_samples": 4} for s, lam in ((0, 1.0), (10, 2.0))]))
    consts = {"pl": MU, "eb": 1.0, "qcvx": 0.5, "star_convexity": 0.0, "aiming": 0.5, "rsi": MU, "qg": 0.3}
    rows = [{"experiment": "e", "point": "p", "run": r, "condition": c, "scope": "full_batch", "constant": v,
             "holds": True} for r in ("r0", "r1", "all") for c, v in consts.items()]
    rows += [{"experiment": "e", "point": "p", "run": r, "condition": "alpha_beta", "scope": "mini_batch",
              "constant": 0.7, "holds": True} for r in ("r0", "r1", "all")]
    return write(t / "constants.parquet", "condition_constants", rows), files


def test_experiment_bounds_writes_the_tables_from_hand_made_inputs(tmp_path):
    constants, f = hand_tables(tmp_path)
    exp = ExperimentSpec(name="e", title="t", runs=[run_spec("r0"), run_spec("r1", seed=1)],
                         conditions={"margin": 0.1, "pl_delta": 2.0})
    B.experiment_bounds(exp, tmp_path, constants, f["runs"], f["steps"], f["directions"], f["curvature"])
    con = duckdb.connect()
    got = {(r[0], r[1]): r[2:] for r in con.sql(f"""
        SELECT run, condition, applicable, bound, achieved, steps, smoothness, noise, d0, pair_alpha, pair_beta,
               violated_steps FROM read_parquet('{tmp_path}/tables/condition_bounds/**/*.parquet')""").fetchall()}
    assert len(got) == 3 * 8
    # PL at the last row before K (step 5): 0.95^5 * 1.5 + (1 - 0.95^5) * 0.1 * 2 * 0.08 / 1
    # = 0.7737809375 * 1.5 + 0.2262190625 * 0.016 = 1.16067140625 + 0.003619505
    app, bound, ach, steps, smooth, noise, d0, *_ = got[("r0", "pl")]
    assert app and bound == pytest.approx(1.16429091125, rel=1e-12) and ach == pytest.approx(0.4) and steps == 5
    assert smooth == 2.0 and noise == pytest.approx(0.08, rel=1e-12) and d0 == 3.0
    # QCvx at K = 10 (theta = 0.5, c = 0.3): 9 / 0.6 + 0.1 * 0.08 / 0.6 = 15 + 0.013333...; min over k < 10: 0.4
    assert got[("r0", "qcvx")][1:4] == (pytest.approx(15.013333333333334, rel=1e-12), pytest.approx(0.4), K)
    # alpha-beta: the pair (0.7, 0.2) of the hand region (2 L gamma = 0.4), 18.32 as computed above
    row = got[("r0", "alpha_beta")]
    assert row[0] and row[1] == pytest.approx(18.32, rel=1e-9) and row[-3:-1] == pytest.approx((0.7, 0.2), abs=1e-9)
    # run "all": the largest D0 (4) and achieved value (0.5); QCvx 16/0.6 + 0.008/0.6
    assert got[("all", "qcvx")][1:3] == (pytest.approx(26.68, rel=1e-12), pytest.approx(0.5))
    assert got[("all", "qg")][0] is False and all(got[(r, c)][-1] == 0 for r in ("r0", "all")
                                                 for c in ("pl", "qcvx", "alpha_beta"))
    curve = con.sql(f"""SELECT step, bound, achieved
                        FROM read_parquet('{tmp_path}/tables/condition_bound_curve/**/*.parquet')
                        WHERE run = 'all' AND condition = 'qcvx' ORDER BY step""").fetchall()
    # at K' = 1, 6, 10: the largest achieved value over the runs; the bound 16 / (2 * 0.1 * 0.3 K') + 0.008 / 0.6
    assert [s for s, _, _ in curve] == [1, 6, 10]
    assert [a for _, _, a in curve] == pytest.approx([1.5, 0.5, 0.5])
    assert curve[0][1] == pytest.approx(16 / 0.06 + 0.008 / 0.6, rel=1e-12)
    # without curvature: L unknown, no bound anywhere
    out = tmp_path / "nocurv"
    B.experiment_bounds(exp, out, constants, f["runs"], f["steps"], f["directions"], [])
    why = con.sql(f"""SELECT DISTINCT why_not FROM read_parquet('{out}/tables/condition_bounds/**/*.parquet')
                      WHERE condition <> 'qg'""").fetchall()
    assert why == [(B.SMOOTHNESS_UNKNOWN,)]


@pytest.mark.slow  # the half-space experiment of the smoke study up to its bounds: ~2 min on the shared 2 cores
def test_smoke_halfspace_has_a_bound_row_for_every_condition(tmp_path):
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump({**smoke, "experiments": {
        "halfspace": smoke["experiments"]["halfspace"]}}))
    run_snakemake(tmp_path, tmp_path / "smoke.yaml", "--until", "bounds")  # its jobs and those it needs only
    rows = duckdb.connect().sql(f"""
        SELECT run, condition, applicable, bound, smoothness FROM read_parquet(
        '{tmp_path}/results/tables/condition_bounds/**/*.parquet')""").fetchall()
    assert {(r[0], r[1]) for r in rows} == {(run, c) for run in ("seed-0", "seed-1", "all") for c in B.THEOREMS}
    assert all(r[4] > 0 for r in rows)  # curvature is on: L measured
    assert all((r[3] is not None) == r[2] for r in rows)  # a number exactly where the theorem applies
