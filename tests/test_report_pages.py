"""Report pages on a synthetic results folder with hand-known numbers."""

import re

import numpy as np
import polars as pl
import pytest

from landscope import report, store


def _write_fixture(results, experiment="ex<b>"):
    runs = []
    for point in ("width=128", "width=16"):
        for seed in (0, 1):
            run = f"{point.replace('=', '-')}_seed-{seed}"
            runs.append((point, seed, run))
            store.write_table(store.part_path(results, "runs", experiment, run), "runs", {
                "experiment": [experiment], "run": [run], "point": [point], "seed": [seed],
                "sweep_json": ["{}"], "model": ["{}"], "dataset": ["digits"], "optimizer": ["sgd"],
                "lr": [0.1], "batch_size": [8], "steps": [200_000], "snapshot_every": [100_000],
                "n_params": [10], "n_train": [100], "status": ["completed"], "diverged_step": [None], "train_wall_s": [1.0],
                "device": ["cpu"], "config_hash": ["x"]})
            steps = np.arange(200_000)
            loss = 1.0 / (1 + steps / 1000) * (1 + seed)
            store.write_table(store.part_path(results, "train", experiment, run), "train", {
                "experiment": [experiment] * len(steps), "run": [run] * len(steps), "step": steps.tolist(),
                "epoch": (steps // 12).tolist(), "lr": [0.1] * len(steps), "batch_loss": loss.tolist()})
            store.write_table(store.part_path(results, "snapshots", experiment, run), "snapshots", {
                "experiment": [experiment] * 3, "run": [run] * 3, "step": [0, 100_000, 200_000],
                "full_loss": [2.0, 0.5, 0.25], "full_grad_norm": [1.0, 0.1, 0.01],
                "param_norm": [1.0] * 3, "accuracy": [0.1, 0.8, 0.9]})
    # a 10x10 grid over [0, 9]^2 where min_t = alpha - 2*beta - 1 (only alpha >= beta + 0.1 present)
    rows = {c: [] for c in store.SCHEMAS["ab_grid"]}
    for point in ("width=128", "width=16"):
        for a in range(10):
            for b in range(10):
                ok = a >= b + 0.1
                t = a - 2 * b - 1.0
                for c, v in (("experiment", experiment), ("point", point), ("alpha", float(a)),
                             ("beta", float(b)), ("min_t", t if ok else None), ("feasible", bool(ok and t >= 0))):
                    rows[c].append(v)
    store.write_table(store.part_path(results, "ab_grid", experiment), "ab_grid", rows)
    tri = [(1.0, 0.0), (9.0, 0.0), (9.0, 4.0)]
    store.write_table(store.part_path(results, "ab_region", experiment), "ab_region", {
        "experiment": [experiment] * 6, "point": ["width=128"] * 3 + ["width=16"] * 3,
        "vertex": [0, 1, 2] * 2, "alpha": [p[0] for p in tri] * 2, "beta": [p[1] for p in tri] * 2,
        "on_box_edge": [False, True, True] * 2})
    summ = {c: [] for c in store.SCHEMAS["condition_summary"]}
    for point, amin in (("width=128", 1.0), ("width=16", 1.2345)):
        row = {c: None for c in summ}
        row.update(experiment=experiment, point=point, sweep_json="{}", n_runs=2, n_steps=400_000,
                   feasible=True, alpha_min=amin, beta_at_alpha_min=0.0, beta_min=0.0, margin=0.1,
                   sigma_int_sq=0.5, sigma_int_sq_method="test", nonvanishing_term=0.0,
                   pl_log10_mu_min=-3.0, aiming_min=0.2)
        for c in summ:
            summ[c].append(row[c])
    store.write_table(store.part_path(results, "condition_summary", experiment), "condition_summary", summ,
                      {"git_sha": "abc123"})
    return experiment


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("rep") / "results"
    return results, _write_fixture(results)


def test_loss_curves_are_binned_and_banded(fixture_results):
    results, exp = fixture_results
    con = store.connect(results)
    df = report.loss_curves(con, exp)
    stoch = df.filter(pl.col("kind") == "stochastic (binned)")
    assert len(df) <= 5000 and stoch["step"].n_unique() <= report.MAX_BINS + 1
    assert (stoch["lo"] <= stoch["mean"]).all() and (stoch["mean"] <= stoch["hi"]).all()
    # bin 0 of width=16 averages steps 0..666 of seed 0 (loss 1/(1+s/1000)) and seed 1 (twice that)
    width = int(np.ceil(200_000 / report.MAX_BINS))
    s = np.arange(width)
    seed0 = (1.0 / (1 + s / 1000)).mean()
    first = stoch.filter((pl.col("point") == "width=16") & (pl.col("step") == 0)).row(0, named=True)
    assert first["lo"] == pytest.approx(seed0) and first["hi"] == pytest.approx(2 * seed0)
    assert first["mean"] == pytest.approx(1.5 * seed0)
    spec = report.loss_chart(df).to_dict()
    assert spec["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"


def test_heatmap_spec(fixture_results):
    results, exp = fixture_results
    con = store.connect(results)
    grid = con.sql(f"SELECT * FROM ab_grid WHERE experiment = '{exp}'").pl()
    region = con.sql(f"SELECT * FROM ab_region WHERE experiment = '{exp}'").pl()
    spec = report.heatmap_chart(grid, region, "width=16").to_dict()
    datasets = spec["datasets"]
    sizes = sorted(len(v) for v in datasets.values())
    assert sizes == [4, 45]  # 45 cells with alpha >= beta + 0.1 on a 10x10 grid; triangle closed: 4 vertices
    scale = spec["layer"][0]["encoding"]["color"]["scale"]
    # min_t = alpha - 2 beta - 1 over the 45 cells: max 8 (alpha=9, beta=0); diverging at 0
    # lower end: the 5% quantile of min T (-6 here, lower values clamped); Vega inserts domainMid itself
    assert scale["domainMid"] == 0 and scale["domain"] == [-6.0, 8.0]


def test_pages_are_self_contained_and_escaped(fixture_results, tmp_path):
    results, exp = fixture_results
    page = report.write_experiment_report(results, exp, tmp_path / "e.html", title="Title <b>bold</b>").read_text()
    assert "Title &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert not re.search(r"<script[^>]+src=", page)
    # loss, heatmaps and gradient norm have data; angle, Aiming and PL tables are empty here
    assert page.count("vegaEmbed('#") == 3 and page.count("no data") == 3
    assert "1.234" in page  # alpha_min of width=16 in the summary table
    assert page.index("width=16") < page.index("width=128")  # natural order of sweep values
    assert "abc123" in page  # provenance
    index = report.write_index(results, [exp], tmp_path / "index.html", skipped={"f": "<missing>"}).read_text()
    assert 'href="ex&lt;b&gt;.html"' in index and "&lt;missing&gt;" in index


def test_report_keeps_to_the_runs_of_the_current_config(fixture_results, tmp_path):
    results, exp = fixture_results
    page = report.write_experiment_report(results, exp, tmp_path / "e.html",
                                          runs=["width-16_seed-0", "width-16_seed-1"]).read_text()
    assert "width-16_seed-0" in page and "width-128_seed-0" not in page
    full = report.write_experiment_report(results, exp, tmp_path / "f.html").read_text()
    assert "width-128_seed-0" in full
