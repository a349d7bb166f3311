"""The study's per-run generalization frame, its tau table and reports/generalization.html, on a synthetic
results folder whose numbers are chosen by hand.

Experiment ``grid`` (curvature on): four runs over optimizer.lr in {0.1, 0.2} x model.width in {8, 16}:

    run  lr   width  gap at x_K  lambda_max  radius_median  param_norm
    a1   0.1  8      0.1         1           0.9            5
    a2   0.2  8      0.2         2           0.8            4
    a3   0.1  16     0.3         4           0.7            3
    a4   0.2  16     0.4         3           0.6            2

Experiment ``plain`` (no curvature, no sweep): b0 (gap 0.05, norm 1), b1 (gap 0.5, norm 6; x_K at step 95, which
is no checkpoint: the gap comes from the step-100 row), b2 (no held-out loss: left out of every tau); b0's
minimizer is tail_average, whose x_K is no checkpoint.

Every decoy (the step-0 and step-50 snapshot rows, the step-0 curvature row, the step-50 directions row, grid's
directions distance beside stationarity's) holds a value that would change the answers if it were read instead.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from conftest import landscope_sql

from landscope import store
from landscope.measures import generalization as gen
from landscope.report import generalization as page
from landscope.report import index as index_page

GRID = {"a1": (0.1, 8, 0.1, 1.0, 0.9, 5.0), "a2": (0.2, 8, 0.2, 2.0, 0.8, 4.0),
        "a3": (0.1, 16, 0.3, 4.0, 0.7, 3.0), "a4": (0.2, 16, 0.4, 3.0, 0.6, 2.0)}
PLAIN = {"b0": (0.05, 1.0, 100), "b1": (0.5, 6.0, 95), "b2": (None, 7.0, 100)}  # gap, param_norm, x_K step
TRAIN_LOSS = 0.25


def _write(results, table, experiment, run, **columns):
    """One part with the given columns; every other column of the schema null."""
    n = len(next(iter(columns.values())))
    cols = {c: columns.get(c, [None] * n) for c in store.SCHEMAS[table]}
    cols["experiment"] = [experiment] * n
    if "run" in cols and run is not None:
        cols["run"] = [run] * n
    store.write_table(store.part_path(results, table, experiment, run), table, cols)


def _write_run(results, exp, run, seed, sweep, dataset, gap, norm, xk_step, dist, method="last"):
    _write(results, "runs", exp, run, point=[json.dumps(sweep)], seed=[seed], sweep_json=[json.dumps(sweep)],
           dataset=[dataset], status=["completed"])
    test = None if gap is None else TRAIN_LOSS + gap
    _write(results, "snapshots", exp, run, step=[0, 50, 100], full_loss=[2.0, 1.0, TRAIN_LOSS],
           param_norm=[0.0, 100.0, norm], test_loss=[None, 9.0, test], test_accuracy=[None, 0.1, 0.9],
           generalization_gap=[None, 8.0, gap])
    _write(results, "minimizers", exp, run, method=[method], step=[xk_step], full_loss=[TRAIN_LOSS])
    _write(results, "directions", exp, run, step=[0, 50], dist_to_min=[dist, 99.0])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    results = tmp_path_factory.mktemp("gen") / "results"
    for i, (run, (lr, width, gap, lam, radius, norm)) in enumerate(GRID.items()):
        _write_run(results, "grid", run, 0, {"model.width": width, "optimizer.lr": lr}, "digits", gap, norm, 100,
                   dist=i + 0.5)  # stationarity's distance (i) comes first
        flagged = [False, run != "a4"]  # a4: no row flagged is_minimizer, its last row is x_K's
        _write(results, "curvature", "grid", run, step=[0, 100], is_minimizer=flagged, lambda_max=[99.0, lam],
               trace=[99.0, 10 * lam], trace_hutchpp=[99.0, 10 * lam])
        _write(results, "flatness", "grid", run, step=[100], radius_median=[radius], log_volume_proxy=[-lam],
               llc_mean=[lam / 2])
        _write(results, "stationarity", "grid", run, step=[0], dist_xk_x0=[float(i)], path_length=[2.0 + i])
    seeds = {c: [] for c in store.SCHEMAS["seed_conditions"]}
    for run, (lr, width, *_) in GRID.items():
        row = dict.fromkeys(seeds) | {"experiment": "grid", "point": json.dumps({"model.width": width,
                                                                                  "optimizer.lr": lr}),
                                      "run": run, "seed": 0, "alpha_min": lr, "beta_at_alpha_min": 0.0,
                                      "nonvanishing_term": width / 100}
        for c in seeds:
            seeds[c].append(row[c])
    store.write_table(store.part_path(results, "seed_conditions", "grid"), "seed_conditions", seeds)
    for i, (run, (gap, norm, xk)) in enumerate(PLAIN.items()):
        _write_run(results, "plain", run, i, {}, "halfspace", gap, norm, xk, dist=10.0 + i,
                   method="tail_average" if run == "b0" else "last")
    _write(results, "condition_summary", "plain", None, point=["{}"], sweep_json=["{}"], alpha_min=[0.7],
           beta_at_alpha_min=[0.6], nonvanishing_term=[0.05])
    return results


@pytest.fixture(scope="module")
def study(results):
    return gen.study_generalization(results, ["grid", "plain"], n_boot=200)


def _row(df: pl.DataFrame, **where) -> dict:
    for k, v in where.items():
        df = df.filter(pl.col(k) == v)
    assert df.height == 1, where
    return df.row(0, named=True)


def test_runs_frame_joins_each_measure_at_xk(study):
    frame, _ = study
    assert frame.height == 7
    for run, (lr, width, gap, lam, radius, norm) in GRID.items():
        r = _row(frame, run=run)
        assert (r["gap_step"], r["gap_at_xk"], r["note"]) == (100, True, None)
        assert r["generalization_gap"] == pytest.approx(gap)
        assert r["train_loss"] == TRAIN_LOSS and r["test_loss"] == pytest.approx(TRAIN_LOSS + gap)
        assert (r["curvature_step"], r["lambda_max"], r["trace"]) == (100, lam, 10 * lam)
        assert (r["radius_median"], r["log_volume_proxy"], r["llc_mean"]) == (radius, -lam, lam / 2)
        assert r["param_norm"] == norm  # the x_K row's, not the decoys 0 and 100
        assert (r["alpha_min"], r["nonvanishing_term"], r["constants_from"]) == (lr, width / 100, "run")
        assert (r["sweep.optimizer.lr"], r["sweep.model.width"]) == (json.dumps(lr), str(width))
    assert [_row(frame, run=r)["dist_from_init"] for r in GRID] == [0.0, 1.0, 2.0, 3.0]  # stationarity's
    assert _row(frame, run="a2")["path_length"] == 3.0


def test_runs_without_curvature_read_null_and_get_the_points_constants(study):
    frame, _ = study
    for run, (gap, norm, _) in PLAIN.items():
        r = _row(frame, run=run)
        assert r["lambda_max"] is None and r["trace"] is None and r["llc_mean"] is None
        assert r["radius_median"] is None and r["curvature_step"] is None and r["path_length"] is None
        assert (r["alpha_min"], r["beta_at_alpha_min"], r["constants_from"]) == (0.7, 0.6, "point")
        assert r["param_norm"] == norm and r["sweep.model.width"] is None
    assert [_row(frame, run=r)["dist_from_init"] for r in PLAIN] == [10.0, 11.0, 12.0]  # directions at step 0, not 50
    b1 = _row(frame, run="b1")
    assert (b1["xk_step"], b1["gap_step"], b1["gap_at_xk"]) == (95, 100, False)  # nearest checkpoint to 95
    assert b1["generalization_gap"] == 0.5 and "step 95" in b1["note"] and "step 100" in b1["note"]
    b0 = _row(frame, run="b0")  # tail_average: x_K is no checkpoint even at a checkpoint's step
    assert (b0["gap_step"], b0["gap_at_xk"]) == (100, False) and "tail_average point" in b0["note"]
    b2 = _row(frame, run="b2")
    assert b2["generalization_gap"] is None and b2["note"] == "no held-out loss (dataset halfspace)"


def test_tau_table_by_hand(study):
    _, table = study
    assert table.columns == list(store.SCHEMAS["generalization_measures"])
    assert table.height == 3 * len(gen.MEASURES)  # study, experiment=grid, experiment=plain
    # lambda_max within grid: in gap order 1, 2, 4, 3; one discordant pair of six: tau = (5 - 1) / 6.
    lam = _row(table, measure="lambda_max", scope="study")
    assert (lam["n_runs"], lam["tau"]) == (4, pytest.approx(2 / 3))
    assert lam["experiment"] is None and lam["claim_sign"] == 1 and lam["verdict"] == "too few runs"
    # granulated: lr varies alone within width=8 (1 < 2: +1) and width=16 (4 > 3 with 0.3 < 0.4: -1), psi_lr = 0;
    # width varies alone within lr=0.1 (1 < 4: +1) and lr=0.2 (2 < 3: +1), psi_width = 1; Psi = 1/2.
    assert (lam["granulated_psi"], lam["granulated_axes"], lam["granulated_groups"]) == (0.5, 2, 4)
    assert _row(table, measure="lambda_max", scope="experiment=grid")["tau"] == pytest.approx(2 / 3)
    none = _row(table, measure="lambda_max", scope="experiment=plain")
    assert (none["n_runs"], none["tau"], none["verdict"]) == (0, None, None)
    # param_norm over the six runs with a gap, in gap order b0 a1 a2 a3 a4 b1: norms 1 5 4 3 2 6, C = 9 and
    # D = 6 of 15 pairs: tau = 3 / 15; granulated (grid only, plain has no sweep): every group -1, Psi = -1.
    norm = _row(table, measure="param_norm", scope="study")
    assert (norm["n_runs"], norm["tau"], norm["claim_sign"], norm["verdict"]) == (6, pytest.approx(0.2), None, None)
    assert (norm["granulated_psi"], norm["granulated_axes"]) == (-1.0, 2)
    radius = _row(table, measure="radius_median", scope="experiment=grid")  # gap up, radius down: tau -1
    assert (radius["tau"], radius["tau_lo"], radius["tau_hi"], radius["claim_sign"]) == (-1.0, -1.0, -1.0, -1)


def test_granulated_within_never_ranks_across_experiments():
    # Two experiments with one run each at lr 0.1 and 0.2: pooled, lr varies in one group (tau +1); within
    # experiments no group has two lr values.
    pooled = gen.granulated_kendall([1.0, 2.0], [1.0, 2.0], {"lr": [0.1, 0.2]})
    within = gen.granulated_within([1.0, 2.0], [1.0, 2.0], {"lr": [0.1, 0.2]}, ["x", "y"])
    assert (pooled.psi_mean, pooled.n_groups_used) == (1.0, 1)
    assert within.n_groups_used == 0 and list(within.psi) == ["lr"] and math.isnan(within.psi_mean)


@pytest.mark.parametrize(("tau", "lo", "hi", "n", "sign", "want"), [
    (0.6, 0.2, 0.9, 6, 1, "supports"), (0.6, 0.2, 0.9, 6, -1, "contradicts"),
    (-0.6, -0.9, -0.2, 6, -1, "supports"), (0.1, -0.3, 0.5, 6, 1, "unresolved"),
    (1.0, 1.0, 1.0, 4, 1, "too few runs"), (0.6, 0.2, 0.9, 6, None, None), (None, None, None, 0, 1, None)])
def test_verdict(tau, lo, hi, n, sign, want):
    assert gen.verdict(tau, lo, hi, n, sign) == want


def test_missing_curvature_tables_yield_null_measures(results):
    frame, table = gen.study_generalization(results, ["plain"], n_boot=50)  # no curvature file is read at all
    assert frame.height == 3 and frame["lambda_max"].null_count() == 3 and frame["llc_mean"].null_count() == 3
    r = _row(table, measure="trace", scope="study")
    assert (r["n_runs"], r["tau"]) == (0, None)
    assert _row(table, measure="param_norm", scope="study")["tau"] == 1.0  # b0 (0.05, 1) and b1 (0.5, 6)


def test_tables_and_page(results, tmp_path):
    runs_part, measures_part = gen.write_generalization_tables(results, ["grid", "plain"],
                                                               runs={"grid": list(GRID), "plain": ["b0", "b1"]},
                                                               n_boot=100)
    assert runs_part == results / "tables" / "generalization_runs" / "study" / "part-00000.parquet"
    rows = landscope_sql(results, "SELECT measure, scope, n_runs, tau FROM generalization_measures "
                                  "WHERE measure = 'lambda_max' ORDER BY scope")
    assert [(r["scope"], r["n_runs"]) for r in rows] == [("experiment=grid", 4), ("experiment=plain", 0),
                                                         ("study", 4)]
    assert rows[2]["tau"] == pytest.approx(2 / 3)
    con = store.connect(results)
    try:
        assert con.sql("SELECT count(*) FROM generalization_runs").fetchall() == [(6,)]  # b2 not among the runs
    finally:
        con.close()
    html = page.write_generalization_page(results, tmp_path / "generalization.html").read_text()
    assert "<h1>Which measures predict generalization</h1>" in html and "vegaEmbed('#scatter'" in html
    assert "<th>Kendall τ</th>" in html and "λ_max (top Hessian eigenvalue)</td><td class=l>study</td><td>4</td>" \
        "<td>0.6667</td>" in html
    assert "rest on 6 of 6 runs" in html and "experiment=grid" in html
    spec = page.gap_scatter(pl.read_parquet(runs_part)).to_dict()
    assert spec["resolve"]["scale"]["x"] == "independent" and spec["spec"]["encoding"]["color"]["field"] == \
        "experiment"
    values = next(iter(spec["datasets"].values()))
    assert len(values) == 12 * 4 + 5 * 2  # grid: every measure; b0, b1: norm, distance, the three constants
    lam = sorted((v["run"], v["value"], v["generalization_gap"]) for v in values
                 if v["measure"] == "λ_max (top Hessian eigenvalue)")
    assert lam == [(r, GRID[r][3], pytest.approx(GRID[r][2])) for r in sorted(GRID)]


def test_summary_names_the_excluded_run_and_the_claim(study):
    frame, table = study
    text = page.summary_html(table, frame)
    assert "rest on 6 of 7 runs" in text and "plain/b2 (no held-out loss (dataset halfspace))" in text
    assert "2 run(s) the gap is taken at a checkpoint that is not x_K" in text  # b0 and b1
    assert "cannot be decided here: every flatness measure rests on fewer than 5 runs" in text
    # radius has tau -1 over 4 runs (interval [-1, -1]), too few runs to rank; the norm's 6 runs give 0.2
    assert "no measure ranks the gap reliably" in text
    assert "Largest |τ|: ε-sublevel radius (median) τ = -1.00 [-1, -1] (n = 4)" in text


def test_index_links_the_page(results, tmp_path):
    index = index_page.write_index(results, ["plain"], tmp_path / "index.html", links=index_page.STUDY_PAGES)
    assert '<a href="generalization.html">Which measures predict generalization' in index.read_text()
