"""landscope.report on synthetic results folders whose numbers are known by hand.

Fixture ``demo``: points width=16 (c=1) and width=128 (c=3.75), seeds 0 and 1.
* train: 300 steps, batch_loss = k_p (1 + seed) / (1 + step), k_p = 1 (width=16), 2 (width=128);
* snapshots at steps 0, 100, 200, 299: full_loss like batch_loss, full_grad_norm = (1 + seed) 10^-i;
* directions at the same steps, dist_to_min 3, 2, 1, 0 (the last is x_K itself and is left out),
  cos_angle = 0.5 - 0.1 seed, aiming_coef (seed 0) 1, 0.5, -0.25 and (seed 1) 2, 1, 0.5;
* pl: log10 mu = -3 - step / 100 - seed;
* ab_grid on alpha, beta in {0..9}: min_t = alpha - 2 beta - c where alpha >= beta + 0.1, else NULL;
* ab_region: the exact feasible triangle (c, 0), (9, 0), (9, (9 - c) / 2) of that grid's T;
* condition_summary: smallest pair (c, 0), set by the data (width=16) and by beta >= 0 (width=128); the
  non-vanishing term's minimum 0 at (c, 0); per seed the smallest alpha is 0.8 c (seed 0) and c (seed 1);
  the full-batch rows are 4 per run, up to 100 steps apart;
* margin_sensitivity: margins 0.01, 0.1 (configured), 1: alpha_min c throughout, at margin 1 the corner for
  width=16 (c = 1 = margin).
"""

import json
import re

import numpy as np
import polars as pl
import pytest
import vl_convert

from landscope import store
from landscope.report import base as report_base
from landscope.report import conditions
from landscope.report import index as index_page
from landscope.report import page as experiment_page

EXP = "demo"
POINTS = {"width=128": (2.0, 3.75), "width=16": (1.0, 1.0)}  # point: (loss scale k_p, c); 128 written first
CKPT = [0, 100, 200, 299]
AIMING = {0: [1.0, 0.5, -0.25, 0.0], 1: [2.0, 1.0, 0.5, 0.0]}


def _run_name(point: str, seed: int) -> str:
    return f"{point.replace('=', '-')}_seed-{seed}"


def _write_run(results, exp: str, point: str, seed: int, steps: np.ndarray, loss: np.ndarray, meta=None):
    run = _run_name(point, seed)
    n = len(steps)
    store.write_table(store.part_path(results, "runs", exp, run), "runs", {
        "experiment": [exp], "run": [run], "point": [point], "seed": [seed], "sweep_json": ["{}"],
        "model": ["mlp"], "dataset": ["digits"], "optimizer": ["sgd"], "lr": [0.1], "batch_size": [8],
        "steps": [n], "snapshot_every": [100], "n_params": [10], "n_train": [100], "status": ["completed"], "diverged_step": [None],
        "train_wall_s": [1.0], "device": ["cpu"], "config_hash": ["h"], "training_key": ["k"]}, meta)
    store.write_table(store.part_path(results, "train", exp, run), "train", {
        "experiment": [exp] * n, "run": [run] * n, "step": steps.tolist(), "epoch": (steps // 12).tolist(),
        "lr": [0.1] * n, "batch_loss": loss.tolist()}, meta)
    return run


def _write_demo(results):
    meta = {"git_sha": "abc123", "conditions": {"margin": 0.1}}
    steps = np.arange(300)
    grid = {c: [] for c in store.SCHEMAS["ab_grid"]}
    region = {c: [] for c in store.SCHEMAS["ab_region"]}
    pl_rows = {c: [] for c in store.SCHEMAS["pl"]}
    summary = {c: [] for c in store.SCHEMAS["condition_summary"]}
    margins = {c: [] for c in store.SCHEMAS["margin_sensitivity"]}
    seeds = {c: [] for c in store.SCHEMAS["seed_conditions"]}
    for point, (k, c) in POINTS.items():
        for seed in (0, 1):
            run = _write_run(results, EXP, point, seed, steps, k * (1 + seed) / (1 + steps), meta)
            ck = np.array(CKPT)
            store.write_table(store.part_path(results, "snapshots", EXP, run), "snapshots", {
                "experiment": [EXP] * 4, "run": [run] * 4, "step": CKPT,
                "full_loss": (k * (1 + seed) / (1 + ck)).tolist(),
                "full_grad_norm": [(1 + seed) * 10.0 ** -i for i in range(4)],
                "param_norm": [1.0] * 4, "accuracy": [0.5] * 4,
                "test_loss": (1.5 * k * (1 + seed) / (1 + ck)).tolist(), "test_accuracy": [0.4] * 4,
                "generalization_gap": (0.5 * k * (1 + seed) / (1 + ck)).tolist()}, meta)
            store.write_table(store.part_path(results, "minimizers", EXP, run), "minimizers", {
                "experiment": [EXP], "run": [run], "method": ["last_iterate"], "step": [299],
                "full_loss": [0.01]}, meta)
            store.write_table(store.part_path(results, "directions", EXP, run), "directions", {
                "experiment": [EXP] * 4, "run": [run] * 4, "step": CKPT, "full_loss": [1.0] * 4,
                "full_loss_at_min": [0.01] * 4, "full_grad_norm": [1.0] * 4, "full_grad_dot_dir": [1.0] * 4,
                "dist_to_min": [3.0, 2.0, 1.0, 0.0], "cos_angle": [0.5 - 0.1 * seed] * 3 + [None],
                "aiming_coef": AIMING[seed]}, meta)
            for s in CKPT:
                for col, v in (("experiment", EXP), ("run", run), ("point", point), ("step", s),
                               ("pl_delta", 2.0), ("pl_log10_mu", -3.0 - s / 100 - seed)):
                    pl_rows[col].append(v)
        for a in range(10):
            for b in range(10):
                ok = a >= b + 0.1
                t = a - 2 * b - c
                for col, v in (("experiment", EXP), ("point", point), ("alpha", float(a)), ("beta", float(b)),
                               ("min_t", t if ok else None), ("feasible", bool(ok and t >= 0))):
                    grid[col].append(v)
        for i, (a, b) in enumerate([(c, 0.0), (9.0, 0.0), (9.0, (9 - c) / 2)]):
            for col, v in (("experiment", EXP), ("point", point), ("vertex", i), ("alpha", a), ("beta", b),
                           ("on_box_edge", i > 0)):
                region[col].append(v)
        row = {col: None for col in summary}
        row.update(experiment=EXP, point=point, sweep_json="{}", n_runs=2, n_steps=600, feasible=True,
                   alpha_min=c, beta_at_alpha_min=0.0, beta_min=0.0, alpha_at_beta_min=c, margin=0.1,
                   alpha_box=9.0, beta_box=9.0, sigma_int_sq=0.5, sigma_int_sq_method="test<method>",
                   nonvanishing_term=0.0, pl_log10_mu_min=-5.99, aiming_min=-0.25 if k == 1 else 0.5,
                   final_full_loss_mean=0.0125, max_abs_drift=0.0, nonvanishing_alpha=c, nonvanishing_beta=0.0,
                   binding="data" if k == 1 else "beta_nonneg", nonvanishing_binding="beta_nonneg", n_seeds=2,
                   alpha_min_seed_lo=0.8 * c,
                   alpha_min_seed_hi=c, nonvanishing_term_seed_lo=0.0, nonvanishing_term_seed_hi=0.0,
                   directions_points=4, directions_spacing=100, cos_angle_min=0.4, qcvx_theta_min=0.75)
        for col in summary:
            summary[col].append(row[col])
        for m in (0.01, 0.1, 1.0):
            mrow = dict(experiment=EXP, point=point, margin=m, is_configured=m == 0.1, feasible=True, alpha_min=c,
                        beta_at_alpha_min=0.0, nonvanishing_term=0.0,
                        binding="corner" if m == c else row["binding"], nonvanishing_binding="beta_nonneg")
            for col in margins:
                margins[col].append(mrow[col])
        for seed in (0, 1):
            srow = dict(experiment=EXP, point=point, run=_run_name(point, seed), seed=seed, n_steps=300,
                        feasible=True, alpha_min=c * (0.8 if seed == 0 else 1.0), beta_at_alpha_min=0.0,
                        beta_min=0.0, nonvanishing_term=0.0, nonvanishing_alpha=c, nonvanishing_beta=0.0,
                        binding=row["binding"])
            for col in seeds:
                seeds[col].append(srow[col])
    for table, cols in (("ab_grid", grid), ("ab_region", region), ("pl", pl_rows),
                        ("condition_summary", summary), ("margin_sensitivity", margins), ("seed_conditions", seeds)):
        store.write_table(store.part_path(results, table, EXP), table, cols, meta)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    results = tmp_path_factory.mktemp("report") / "results"
    _write_demo(results)
    return results


@pytest.fixture(scope="module")
def con(demo):
    c = store.connect(demo)
    yield c
    c.close()


def _rows(df: pl.DataFrame, **where) -> dict:
    for k, v in where.items():
        df = df.filter(pl.col(k) == v)
    assert df.height == 1, where
    return df.row(0, named=True)


def _datasets(spec: dict) -> list[list]:
    return list(spec.get("datasets", {}).values())


# ----------------------------------------------------------------------------------- ordering
def test_natural_order():
    assert report_base.point_order(["width=128", "width=16", "width=32", "width=16"]) == \
        ["width=16", "width=32", "width=128"]
    assert report_base.point_order(["lr=0.01", "lr=1e-3", "lr=0.1"]) == ["lr=1e-3", "lr=0.01", "lr=0.1"]
    assert report_base.point_order(["model=resnet-34", "model=resnet-18"]) == ["model=resnet-18", "model=resnet-34"]
    assert report_base.point_order(["shift=2", "shift=-1"]) == ["shift=-1", "shift=2"]


# ----------------------------------------------------------------------------------- queries and charts
def test_loss_curves_by_hand(con):
    df = conditions.loss_curves(con, EXP)
    stoch = df.filter(pl.col("kind") == report_base.STOCHASTIC)
    full = df.filter(pl.col("kind") == report_base.FULL)
    assert stoch.height == 2 * 300 and full.height == 2 * 4  # 300 steps < MAX_BINS: one bin per step
    assert df["point"][0] == "width=16"  # natural order
    r = _rows(stoch, point="width=16", step=9)  # seeds: 1/10 and 2/10
    assert (r["lo"], r["mean"], r["hi"], r["n_runs"]) == pytest.approx((0.1, 0.15, 0.2, 2))
    r = _rows(full, point="width=128", step=100)  # 2 (1 + seed) / 101
    assert (r["lo"], r["mean"], r["hi"]) == pytest.approx((2 / 101, 3 / 101, 4 / 101))
    held = df.filter(pl.col("kind") == report_base.HELDOUT)
    assert held.height == 2 * 4
    r = _rows(held, point="width=128", step=100)  # test loss 1.5 * 2 (1 + seed) / 101
    assert (r["lo"], r["mean"], r["hi"]) == pytest.approx((3 / 101, 4.5 / 101, 6 / 101))
    spec = conditions.loss_chart(df).to_dict()
    assert len(spec["layer"]) == 6  # band + line for each of stochastic, full batch and held-out
    assert all(layer["encoding"]["y"]["scale"]["type"] == "log" for layer in spec["layer"])
    assert sorted(len(d) for d in _datasets(spec)) == [8, 8, 600]


def test_loss_binning_200k_rows(tmp_path):
    """2 points x 2 seeds x 50k steps = 200k train rows -> 400 bins of 125 steps per point."""
    results = tmp_path / "results"
    steps = np.arange(50_000)
    for point in ("width=8", "width=64"):
        for seed in (0, 1):
            _write_run(results, "big", point, seed, steps, 1 + steps / 1000 * (1 + seed))
    with store.connect(results) as c:
        df = conditions.loss_curves(c, "big")
    assert df.height == 2 * report_base.MAX_BINS and df["kind"].unique().to_list() == [report_base.STOCHASTIC]
    assert ((df["lo"] <= df["mean"]) & (df["mean"] <= df["hi"])).all()
    # bin 0 = steps 0..124, per-run mean 1 + 62/1000 (1 + seed); bin 1 starts at step 125
    r = _rows(df, point="width=8", step=0)
    assert (r["lo"], r["mean"], r["hi"]) == pytest.approx((1.062, 1.093, 1.124))
    assert _rows(df, point="width=64", step=125)["lo"] == pytest.approx(1 + 187 / 1000)
    spec = conditions.loss_chart(df).to_dict()
    assert max(len(d) for d in _datasets(spec)) <= report_base.MAX_ROWS


def test_loss_rows_capped_with_many_points(tmp_path):
    """30 points x 1000 steps: 400 bins each would be 12000 rows; the budget (3 series: stochastic, full
    batch, held-out) gives 55 bins each."""
    results = tmp_path / "results"
    steps = np.arange(1000)
    for w in range(30):
        _write_run(results, "many", f"width={w}", 0, steps, 1 / (1 + steps))
    with store.connect(results) as c:
        df = conditions.loss_curves(c, "many")
    assert report_base.bins_per_point(30, series=3) == 5000 // 90 == 55
    assert df.height <= report_base.MAX_ROWS and df.filter(pl.col("point") == "width=3").height == 53  # 19 steps a bin
    conditions.loss_chart(df).to_dict()  # Altair's row limit is not hit


def test_checkpoint_stats_by_hand(con):
    aim = conditions.checkpoint_stat(con, EXP, "directions", "aiming_coef", "t.dist_to_min > 0")
    assert aim.height == 2 * 3  # the last checkpoint (x_K itself) is left out
    r = _rows(aim, point="width=16", step=200)
    assert (r["lo"], r["mean"], r["hi"]) == pytest.approx((-0.25, 0.125, 0.5))
    cos = conditions.checkpoint_stat(con, EXP, "directions", "cos_angle", "t.dist_to_min > 0")
    assert _rows(cos, point="width=128", step=0)["mean"] == pytest.approx(0.45)
    mu = conditions.checkpoint_stat(con, EXP, "pl", "pl_log10_mu")
    assert (_rows(mu, point="width=16", step=299)["lo"]) == pytest.approx(-3 - 2.99 - 1)
    with pytest.raises(ValueError):
        conditions.checkpoint_stat(con, EXP, "pl", "no_such_column")
    spec = conditions.aiming_chart(aim).to_dict()
    assert spec["layer"][-1]["mark"]["type"] == "rule"  # the zero line: below it Aiming fails
    assert conditions.angle_chart(cos).to_dict()["layer"][0]["encoding"]["y"]["scale"]["domain"] == [-1, 1]


def test_heatmap_by_hand(con):
    grid, region = conditions.heatmap_grid(con, EXP), conditions.region_vertices(con, EXP)
    assert grid.height == 2 * 45  # pairs alpha >= beta + 0.1 of a 10x10 grid; NULL cells dropped
    assert grid.filter((pl.col("point") == "width=16") & (pl.col("min_t") >= 0)).height == 25
    assert grid.filter((pl.col("point") == "width=128") & (pl.col("min_t") >= 0)).height == 12
    spec = conditions.heatmap_chart(grid, region).to_dict()
    assert sorted(len(d) for d in _datasets(spec)) == [4, 4, 45, 45]  # closed triangles: 4 vertices
    panels = spec["vconcat"][0]["hconcat"]
    assert [p["title"] for p in panels] == ["min T: width=16", "min T: width=128"]
    scale = panels[0]["layer"][0]["encoding"]["color"]["scale"]
    # width=16: max T = 9 - 0 - 1 = 8; the 5% quantile (3rd of 45 sorted values) is -6
    assert scale["domainMid"] == 0 and scale["domain"] == [-6.0, 8.0] and scale["clamp"] is True
    outline = spec["datasets"][panels[0]["layer"][1]["data"]["name"]]
    assert outline[0]["alpha"] == outline[-1]["alpha"] == 1.0 and outline[2]["beta"] == 4.0
    strided = conditions.heatmap_grid(con, EXP, max_side=5)  # alpha, beta in {0, 2, 4, 6, 8}: 10 pairs a > b
    assert strided.filter(pl.col("point") == "width=16").height == 10
    assert set(strided["alpha"].to_list()) == {2.0, 4.0, 6.0, 8.0}


def test_spec_json_cannot_close_script():
    import altair as alt

    df = pl.DataFrame({"x": ["</script><script>alert(1)</script>", "<!--"]})
    chart = alt.Chart(df).mark_text().encode(text="x:N")
    text = report_base.spec_json(chart)
    assert "<" not in text and json.loads(text) == chart.to_dict()


# ----------------------------------------------------------------------------------- pages
def _embedded_specs(page: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"^vegaEmbed\('#[a-z]+', (.*), \{actions: false\}\);$", page, re.M)]


def test_experiment_page(demo, tmp_path):
    out = experiment_page.write_experiment_report(demo, EXP, tmp_path / "demo.html", title="Demo <b>bold</b>",
                                         notes="<script>alert(1)</script>")
    page = out.read_text()
    assert "Demo &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)" in page and "test&lt;method&gt;" in page
    assert page.count("<script") == 2 and not re.search(r"<script[^>]*\bsrc\s*=", page)
    assert page.count("window.vegaEmbed=") == 1  # the bundle, once
    n_charts = page.count("class=chart id=")
    assert n_charts == 6 and page.count("vegaEmbed('#") == n_charts and "no data" not in page
    assert "<td>3.75</td>" in page  # alpha_min of width=128
    assert page.index("<td class=l>width=16</td>") < page.index("<td class=l>width=128</td>")
    assert "abc123" in page and "last_iterate" in page  # provenance; x_K choice
    rows = {}
    for point, cells in re.findall(r"<tr><td class=l>(width=\d+)</td>(.*?)</tr>", page):
        rows.setdefault(point, cells)  # the first table: the summary
    assert rows["width=16"].startswith("<td>2</td><td>yes</td><td>1</td><td>0.8 – 1</td><td>0</td>"
                                       "<td>set by the data</td><td>0</td><td>0</td><td>(1, 0)</td><td>0</td>")
    assert "<td>3 – 3.75</td><td>0</td><td>set by β ≥ 0, not by the data</td>" in rows["width=128"]
    # full-batch verdicts: the sampling beside Aiming, worded "at the N measured points" when sparse
    assert ("<td class=l>width=128</td><td>4 per run, up to 100 steps apart</td><td>-5.99</td><td>0.5</td>"
            "<td>holds at the 4 measured points</td><td>0.4</td><td>0.75</td>") in page
    assert page.count("Full-batch points: 4 per run, up to 100 steps apart.") == 3  # angle, Aiming, PL captions
    # margin sensitivity: the configured margin marked, the corner named where the margin sets the pair
    assert ("<td class=l>width=16</td><td>1 (configured)</td>" not in page
            and "<td class=l>width=16</td><td>0.1 (configured)</td><td>yes</td><td>1</td><td>0</td><td>0</td>"
                "<td>set by the data</td>" in page)
    assert ("<td class=l>width=16</td><td>1</td><td>yes</td><td>1</td><td>0</td><td>0</td><td>at the corner α = "
            "margin, β = 0: set by the constraints, not by the data</td>") in page
    # every run on its own, collapsed
    assert re.search(r"<details><summary>Every run.*<td class=l>width=128</td><td>0</td><td>width-128_seed-0</td>"
                     r"<td>300</td><td>yes</td><td>3</td>.*</details>", page)
    # the conventions the semantics box states
    assert "log<sub>10</sub> 2&mu;" in page and "0.301" in page and "<i>every mini-batch loss</i>" in page
    specs = _embedded_specs(page)
    assert len(specs) == n_charts
    for spec in specs:  # every chart compiles and renders (vl-convert, offline)
        assert max((len(d) for d in _datasets(spec)), default=0) <= report_base.MAX_ROWS
        assert vl_convert.vegalite_to_svg(spec, allowed_base_urls=[]).startswith("<svg")


def test_empty_experiment_page(demo, tmp_path):
    page = experiment_page.write_experiment_report(demo, "nothing", tmp_path / "nothing.html").read_text()
    assert page.count("no data") == 6 and "<script" not in page
    assert "No condition summary yet" in page and "no provenance" in page


def test_index(demo, tmp_path):
    index = index_page.write_index(demo, [EXP, "nothing"], tmp_path / "index.html",
                               skipped={"later": "needs <gpu>"}).read_text()
    assert 'href="demo.html"' in index and 'href="nothing.html"' in index and "<script" not in index
    assert "needs &lt;gpu&gt;" in index
    rows = re.findall(r"<tr><td class=l>(width=\d+)</td>(.*?)</tr>", index)
    assert [p for p, _ in rows] == ["width=16", "width=128"]
    cells = dict(rows)
    assert ("<td>yes</td><td>1</td><td>0</td><td>0</td><td>0</td><td>(1, 0)</td><td>2</td><td>0.8 – 1</td>"
            "<td>-5.99</td><td>-0.25</td><td>fails somewhere</td><td>4 per run, up to 100 steps apart</td>") \
        in cells["width=16"]
    assert "<td>yes, set by β ≥ 0, not by the data</td><td>3.75</td>" in cells["width=128"]
    assert "<td>holds at the 4 measured points</td>" in cells["width=128"]


def test_chart_to_svg(con, tmp_path):
    chart = conditions.grad_norm_chart(conditions.checkpoint_stat(con, EXP, "snapshots", "full_grad_norm"))
    path = report_base.chart_to_svg(chart, tmp_path / "g.svg")
    assert path.read_text().startswith("<svg")
