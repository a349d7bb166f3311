"""Report pages on a synthetic results folder with hand-known numbers."""

import hashlib
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from landscope import store
from landscope.report import conditions, semantics
from landscope.report import index as index_page
from landscope.report import page as experiment_page


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
                "device": ["cpu"], "config_hash": ["x"], "training_key": ["k"]})
            steps = np.arange(200_000)
            loss = 1.0 / (1 + steps / 1000) * (1 + seed)
            store.write_table(store.part_path(results, "train", experiment, run), "train", {
                "experiment": [experiment] * len(steps), "run": [run] * len(steps), "step": steps.tolist(),
                "epoch": (steps // 12).tolist(), "lr": [0.1] * len(steps), "batch_loss": loss.tolist()})
            store.write_table(store.part_path(results, "snapshots", experiment, run), "snapshots", {
                "experiment": [experiment] * 3, "run": [run] * 3, "step": [0, 100_000, 200_000],
                "full_loss": [2.0, 0.5, 0.25], "full_grad_norm": [1.0, 0.1, 0.01],
                "param_norm": [1.0] * 3, "accuracy": [0.1, 0.8, 0.9],
                "test_loss": [None] * 3, "test_accuracy": [None] * 3, "generalization_gap": [None] * 3})
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
    df = conditions.loss_curves(con, exp)
    stoch = df.filter(pl.col("kind") == "stochastic (binned)")
    assert len(df) <= 5000 and stoch["step"].n_unique() <= report_base.MAX_BINS + 1
    assert (stoch["lo"] <= stoch["mean"]).all() and (stoch["mean"] <= stoch["hi"]).all()
    # bin 0 of width=16 averages steps 0..666 of seed 0 (loss 1/(1+s/1000)) and seed 1 (twice that)
    width = int(np.ceil(200_000 / report_base.MAX_BINS))
    s = np.arange(width)
    seed0 = (1.0 / (1 + s / 1000)).mean()
    first = stoch.filter((pl.col("point") == "width=16") & (pl.col("step") == 0)).row(0, named=True)
    assert first["lo"] == pytest.approx(seed0) and first["hi"] == pytest.approx(2 * seed0)
    assert first["mean"] == pytest.approx(1.5 * seed0)
    spec = conditions.loss_chart(df).to_dict()
    assert spec["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"


def test_heatmap_spec(fixture_results):
    results, exp = fixture_results
    con = store.connect(results)
    grid = con.sql(f"SELECT * FROM ab_grid WHERE experiment = '{exp}'").pl()
    region = con.sql(f"SELECT * FROM ab_region WHERE experiment = '{exp}'").pl()
    spec = conditions.heatmap_chart(grid, region, "width=16").to_dict()
    datasets = spec["datasets"]
    sizes = sorted(len(v) for v in datasets.values())
    assert sizes == [4, 45]  # 45 cells with alpha >= beta + 0.1 on a 10x10 grid; triangle closed: 4 vertices
    scale = spec["layer"][0]["encoding"]["color"]["scale"]
    # min_t = alpha - 2 beta - 1 over the 45 cells: max 8 (alpha=9, beta=0); diverging at 0
    # lower end: the 5% quantile of min T (-6 here, lower values clamped); Vega inserts domainMid itself
    assert scale["domainMid"] == 0 and scale["domain"] == [-6.0, 8.0]


def test_pages_are_self_contained_and_escaped(fixture_results, tmp_path):
    results, exp = fixture_results
    page = experiment_page.write_experiment_report(results, exp, tmp_path / "e.html", title="Title <b>bold</b>").read_text()
    assert "Title &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert not re.search(r"<script[^>]+src=", page)
    # loss, heatmaps and gradient norm have data; angle, Aiming and PL tables are empty here
    assert page.count("vegaEmbed('#") == 3 and page.count("no data") == 3
    assert "1.234" in page  # alpha_min of width=16 in the summary table
    assert page.index("width=16") < page.index("width=128")  # natural order of sweep values
    assert "abc123" in page  # provenance
    index = index_page.write_index(results, [exp], tmp_path / "index.html", skipped={"f": "<missing>"}).read_text()
    assert 'href="ex&lt;b&gt;.html"' in index and "&lt;missing&gt;" in index


def test_report_keeps_to_the_runs_of_the_current_config(fixture_results, tmp_path):
    results, exp = fixture_results
    page = experiment_page.write_experiment_report(results, exp, tmp_path / "e.html",
                                          runs=["width-16_seed-0", "width-16_seed-1"]).read_text()
    assert "width-16_seed-0" in page and "width-128_seed-0" not in page
    full = experiment_page.write_experiment_report(results, exp, tmp_path / "f.html").read_text()
    assert "width-128_seed-0" in full


def test_a_page_without_analytic_runs_or_a_spectrum_imports_no_torch(fixture_results, tmp_path):
    """torch (1-2 s of a report job) is imported only for the analytic examples' surfaces and the spectral
    density; this page and the index need neither."""
    results, exp = fixture_results
    code = ("import sys; from landscope.report import index, page; "
            f"page.write_experiment_report({str(results)!r}, {exp!r}, {str(tmp_path / 'e.html')!r}); "
            f"index.write_index({str(results)!r}, [{exp!r}], {str(tmp_path / 'i.html')!r}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and (tmp_path / "e.html").stat().st_size > 0


# ----------------------------------------------------------------------------------- paper pages
import json  # noqa: E402

import torch  # noqa: E402

from landscope.report import analytic as report_analytic  # noqa: E402
from landscope.report import base as report_base
from landscope.trajectory.rundir import checkpoint_path, key_dir, minimizer_path, run_dir  # noqa: E402

XK_EXP = "example1"
XK_POINTS = {  # point: (x_K choice, region vertices, alpha_min, beta_at_alpha_min, beta_min)
    "minimizer=projection": ("projection", [(2.5, 2.0), (10.0, 8.0), (10.0, 9.9)], 2.5, 2.0, 2.0),
    "minimizer=<last>": ("<last>", [(3.0, 0.0), (10.0, 0.0), (10.0, 6.0)], 3.0, 0.0, 0.0),
}
PATHS = {0: [(1.0, 1.0), (0.5, 0.0), (0.0, -0.4)], 1: [(-2.0, -1.0), (-1.0, -0.5), (-0.5, -0.25)]}


def _save_with_sidecar(obj, path):
    """torch.save plus the SHA-256 sidecar the loaders check (as training writes them)."""
    torch.save(obj, path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))


def _write_analytic(results):
    """Example 1 with a two-choice minimizer sweep; seed s walks PATHS[s] at steps 0, 5, 10."""
    region = {c: [] for c in store.SCHEMAS["ab_region"]}
    summ = {c: [] for c in store.SCHEMAS["condition_summary"]}
    for point, (choice, poly, amin, bat, bmin) in XK_POINTS.items():
        for seed, path in PATHS.items():
            run = f"{'proj' if choice == 'projection' else 'last'}_seed-{seed}"
            store.write_table(store.part_path(results, "runs", XK_EXP, run), "runs", {
                "experiment": [XK_EXP], "run": [run], "point": [point], "seed": [seed],
                "sweep_json": [json.dumps({"minimizer": choice})],
                "model": [json.dumps({"name": "analytic", "example": 1})], "dataset": ["analytic"],
                "optimizer": ["sgd"], "lr": [0.5], "batch_size": [1], "steps": [10], "snapshot_every": [5],
                "n_params": [2], "n_train": [2], "status": ["completed"], "diverged_step": [None],
                "train_wall_s": [0.1], "device": ["cpu"], "config_hash": ["x"], "training_key": [f"{seed:016x}"]})
            # both choices of x_K measure one trajectory per seed: its checkpoints in the seed's training folder
            trained = key_dir(results, f"{seed:016x}")
            trained.mkdir(parents=True, exist_ok=True)
            for step, w in zip((0, 5, 10), path):
                _save_with_sidecar({"step": step, "model": {"w": torch.tensor(w)}}, checkpoint_path(trained, step))
            folder = run_dir(results, XK_EXP, run)
            folder.mkdir(parents=True, exist_ok=True)
            _save_with_sidecar({"model": {"w": torch.tensor(path[-1])}, "step": 10,
                                "method": "projection" if choice == "projection" else "last"}, minimizer_path(folder))
        for i, (a, b) in enumerate(poly):
            for c, v in (("experiment", XK_EXP), ("point", point), ("vertex", i), ("alpha", a), ("beta", b),
                         ("on_box_edge", i > 0)):
                region[c].append(v)
        row = {c: None for c in summ}
        row.update(experiment=XK_EXP, point=point, sweep_json=json.dumps({"minimizer": choice}), n_runs=2,
                   feasible=True, alpha_min=amin, beta_at_alpha_min=bat, beta_min=bmin, margin=0.1,
                   sigma_int_sq=0.25, nonvanishing_term=2 * bat * 0.25 / (amin - bat))
        for c in summ:
            summ[c].append(row[c])
    store.write_table(store.part_path(results, "ab_region", XK_EXP), "ab_region", region)
    store.write_table(store.part_path(results, "condition_summary", XK_EXP), "condition_summary", summ)


@pytest.fixture(scope="module")
def analytic_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("analytic") / "results"
    _write_analytic(results)
    return results


def test_checkpoints_and_x_k_of_analytic_runs(analytic_results):
    with store.connect(analytic_results) as con:
        runs = report_analytic.analytic_runs(con, XK_EXP)
    assert runs.height == 4 and set(runs["example"].to_list()) == {1}
    cps, xks = report_analytic.checkpoint_points(analytic_results, XK_EXP, runs)
    assert cps.height == 12
    r = cps.filter((pl.col("run") == "proj_seed-0") & (pl.col("step") == 5)).row(0, named=True)
    assert (r["x"], r["y"]) == (0.5, 0.0)
    # projection: x_K = Proj((0, -0.4), x + y = -1/2) = (0, -0.4) - 0.05 (1, 1)
    p = xks.filter(pl.col("run") == "proj_seed-0").row(0, named=True)
    assert (p["x"], p["y"]) == pytest.approx((-0.05, -0.45)) and "Proj" in p["label"]
    last = xks.filter(pl.col("run") == "last_seed-1").row(0, named=True)
    assert (last["x"], last["y"]) == pytest.approx((-0.5, -0.25)) and last["label"] == "x_K (last)"


def test_surface_grid_and_minimizer_set():
    assert report_analytic.plot_box([0, 2], [0, 1]) == ((-0.5, 2.5), (-1.0, 2.0))
    g = report_analytic.surface_grid(1, (-1.0, 1.0), (-1.0, 1.0), n=2)  # cell centres +-0.5
    # u = x + y: at (-0.5, -0.5) u = -1: f = (1/2 + 0)/2; at (0.5, 0.5) u = 1: f = (1/2 + 4/5)/2
    at = {(r["x"], r["y"]): r["f"] for r in g.iter_rows(named=True)}
    assert at[(-0.5, -0.5)] == pytest.approx(0.25) and at[(0.5, 0.5)] == pytest.approx(0.65)
    assert at[(-0.5, 0.5)] == pytest.approx(0.25)  # u = 0: f1 = 0, f2 = 1/2
    line = report_analytic.minimizer_set(1, (-1.0, 1.0), (-1.0, 1.0))
    assert (line["x"] + line["y"]).to_list() == pytest.approx([-0.5, -0.5])
    assert line["x"].to_list() == pytest.approx([-1.0, 0.5])  # clipped to the box: y = 0.5 at x = -1, y = -1 at x = 0.5
    pts = report_analytic.minimizer_set(2, (-1.0, 3.0), (-1.0, 3.0))
    assert pts.height == 2 and pts["x"].to_list() == pytest.approx([0.0, 2.0], abs=1e-2)
    assert report_analytic.minimizer_set(2, (1.0, 3.0), (1.0, 3.0)).height == 1  # (0, 0) lies outside


def test_minimizer_comparison(analytic_results):
    with store.connect(analytic_results) as con:
        summary = conditions.condition_summary(con, XK_EXP)
        region = conditions.region_vertices(con, XK_EXP)
    choices = conditions.minimizer_points(summary)
    assert sorted(choices.values()) == ["<last>", "projection"]
    assert conditions.region_shift_text(summary, choices) == ["<last> vs projection: smallest α +0.5, smallest β -2"]
    spec = conditions.minimizer_region_chart(region, summary, choices).to_dict()
    assert spec["title"]["text"] == "How the feasible (α, β) region moves with the choice of x_K"
    sizes = sorted(len(d) for d in spec["datasets"].values())
    assert sizes == [2, 8]  # two closed triangles (4 vertices each), two smallest-alpha corners
    assert conditions.minimizer_comparison(summary.head(1), region) is None  # one choice: nothing to compare


def test_analytic_page_escapes_every_user_string(analytic_results, tmp_path):
    evil = "<script>alert(1)</script>"
    page = experiment_page.write_experiment_report(
        analytic_results, XK_EXP, tmp_path / "e.html", title=evil, figure=f"3 {evil}", scale_note=f"small {evil}",
        notes=evil, setup={"models": ["analytic"], "minimizers": ["projection", "last"], "f_i_star": ["exact"]}
    ).read_text()
    assert evil not in page and page.count("<script") == 2  # the bundle and the embeds only
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5  # <title>, h1, figure, scale note, notes
    assert "Paper figure group: <b>3 &lt;script&gt;" in page
    assert "&lt;last&gt;" in page and "<last>" not in page.split("<script>")[0]  # sweep label in the table
    assert "Measurement semantics" in page and "exact projection Proj" in page and "last iterate" in page
    assert "BatchNorm" not in page and "token windows" not in page
    assert "id='xkregion'" in page and "id='surfacea'" in page and "id='surfaceb'" in page
    specs = re.findall(r"^vegaEmbed\('#(surface[a-z]|xkregion)', (.*), \{actions: false\}\);$", page, re.M)
    assert len(specs) == 3
    surface = json.loads(dict(specs)["surfacea"])
    sizes = sorted(len(d) for d in surface["datasets"].values())
    assert sizes == [2, 2, 6, 50 * 50]  # x_K per seed, S's end points, 2 seeds x 3 checkpoints, grid


def test_semantics_items():
    bn = semantics.semantics_items(["resnet18"], ["best"], [0.0])
    text = " ".join(bn)
    assert "lowest full-batch loss" in text and "f<sub>i</sub>* = 0.0 for every sample" in text
    assert "statistics of that same batch" in text and "running statistics" in text
    assert "Dropout is switched off" in text and "token windows" not in text
    lm = " ".join(semantics.semantics_items(["transformer_lm"], ["tail_average"], []))
    assert "same token windows" in lm and "BatchNorm" not in lm and "last quarter" in lm
    assert "not recorded" in lm
    assert semantics.model_names(pl.DataFrame({"model": ['{"name": "lstm_lm"}', "mlp", None]})) == ["lstm_lm", "mlp"]


def test_curvature_sections_only_with_rows(analytic_results, monkeypatch):
    import altair as alt

    Section = report_base.Section
    with store.connect(analytic_results) as con:
        chart = alt.Chart(pl.DataFrame({"x": [1]})).mark_point().encode(x="x:Q")
        monkeypatch.setattr(experiment_page, "curvature_charts",
                            lambda con, e: [Section("Sharpness", chart, "λ_max vs 2/lr"), Section("Trace")])
        monkeypatch.setattr(experiment_page, "plateau_section", lambda con, e: Section("Plateaus", chart, "2 plateaus"))
        con.execute("CREATE OR REPLACE TEMP VIEW curvature AS SELECT 'other' AS experiment")
        con.execute("CREATE OR REPLACE TEMP VIEW plateaus AS SELECT 'other' AS experiment")
        assert experiment_page.curvature_sections(con, XK_EXP) == []  # no rows for this experiment
        # curvature off, plateaus (from the replay) present: the plateaus panel alone
        con.execute(f"CREATE OR REPLACE TEMP VIEW plateaus AS SELECT '{XK_EXP}' AS experiment")
        assert experiment_page.curvature_sections(con, XK_EXP) == [Section("Plateaus", chart, "2 plateaus", "curva")]
        con.execute(f"CREATE OR REPLACE TEMP VIEW curvature AS SELECT '{XK_EXP}' AS experiment")
        got = experiment_page.curvature_sections(con, XK_EXP)
    assert got == [Section("Sharpness", chart, "λ_max vs 2/lr", "curva"), Section("Trace", None, "", "curvb")]
    html_text = report_base.sections_html(got)
    assert html_text == ("<h3>Sharpness</h3><p class=note>λ_max vs 2/lr</p><div class=chart id='curva'></div>"
                         "<h3>Trace</h3>" + report_base.NO_DATA)


def test_html_page_embeds_the_charted_sections_once():
    import altair as alt

    chart = alt.Chart(pl.DataFrame({"x": [1]})).mark_point().encode(x="x:Q")
    sections = [report_base.Section("A", chart, id="a"), report_base.Section("B", None, id="b")]
    page = report_base.html_page("t", report_base.sections_html(sections), sections)
    assert re.findall(r"vegaEmbed\('#(\w+)'", page) == ["a"] and page.count("window.vegaEmbed=") == 1
    assert "<h3>B</h3>" + report_base.NO_DATA in page
    assert "<script" not in report_base.html_page("t", "", [sections[1]])  # no chart: no JavaScript


def test_index_links_study_pages(analytic_results, tmp_path):
    index = index_page.write_index(analytic_results, [XK_EXP], tmp_path / "index.html",
                               links={"table2.html": "Table 2 <all sweeps>"}).read_text()
    assert '<a href="table2.html">Table 2 &lt;all sweeps&gt;</a>' in index
    assert index.index("table2.html") < index.index('href="example1.html"')
