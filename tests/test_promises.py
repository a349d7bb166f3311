"""landscope.report.promises on hand-written condition_constants, condition_bounds and condition_bound_curve
tables whose every number is known.

Fixture ``promise_results``, experiment "lstm", points width=16 and width=128 (written width=128 first):
* condition_constants, run 'all' (and one run row, "width-16_seed-0", that nothing may read): every condition
  in both scopes; PL's full-batch mu = 1e-9 at both points (holds, vacuous); Aiming fails on the full batch
  from step 12 (width=16) and step 30 (width=128); EB holds at width=16 only; star-convexity fails (theta - 1 =
  -0.25, from step 0); alpha-beta's mini-batch alpha = 0.6 with beta = 0.5 in the note; the rest hold with
  constant 0.5 (full) and 0.25 (mini);
* condition_bounds, run 'all': PL applicable, bound 0.6931471 (1 - 1e-7) against gap0 0.6931472 (promises
  nothing); QCvx applicable, bound 0.05 against gap0 0.5; alpha-beta applicable at the pair (0.6, 0.5)
  (width=16; width=128: an infimum approached as alpha, beta -> inf), bound 0.2 against gap0 0.5; Aiming not
  applicable (why_not below); achieved 0.01; L = 10;
* condition_bound_curve, run 'all': steps 0..99 for PL and QCvx (bound and achieved) and Aiming (achieved only,
  its bound NULL); achieved at width=16's PL step 0 is 0 (off a log axis); one seed row that nothing may read.
"""

import re

import polars as pl
import pytest

from landscope import store
from landscope.report import index as index_page
from landscope.report import page as experiment_page
from landscope.report import promises
from landscope.report.base import chart_to_svg

EXP = "lstm"
POINTS = ["width=16", "width=128"]
STEPS = 100
WHY_NOT = "Aiming fails from step 12 <at x_K>: the theorem needs it at every step"
PL_BOUND, GAP0 = 0.6931472 * (1 - 1e-7), 0.6931472


def _constants() -> dict:
    rows = []
    for point in reversed(POINTS):
        for condition in promises.CONDITIONS:
            for scope, value in (("full_batch", 0.5), ("mini_batch", 0.25)):
                row = {"experiment": EXP, "point": point, "run": "all", "condition": condition, "scope": scope,
                       "f_star": "f(x_K)", "constant": value, "constant_step": 5, "holds": True,
                       "first_fail_step": None, "fraction_positive": 1.0, "n_rows": 40, "spacing": 10, "note": ""}
                if condition == "pl" and scope == "full_batch":
                    row.update(constant=1e-9, note="delta = 2")
                elif condition == "aiming" and scope == "full_batch":
                    fail = 12 if point == "width=16" else 30
                    row.update(constant=-0.5, holds=False, first_fail_step=fail, fraction_positive=0.75)
                elif condition == "eb" and point == "width=128":
                    row.update(constant=-0.1, holds=False, first_fail_step=40, fraction_positive=0.5)
                elif condition == "star_convexity":
                    row.update(constant=-0.25, holds=False, first_fail_step=0, fraction_positive=0.125)
                elif condition == "alpha_beta" and scope == "mini_batch":
                    row.update(constant=0.6, note="constant = smallest alpha (beta = 0.5), margin 0.1")
                rows.append(row)
    seed = dict(rows[0], point="width=16", run="width-16_seed-0", constant=123.0)
    return {c: [r[c] for r in rows + [seed]] for c in store.SCHEMAS["condition_constants"]}


def _bounds() -> dict:
    rows = []
    for point in reversed(POINTS):
        base = {c: None for c in store.SCHEMAS["condition_bounds"]}
        base.update(experiment=EXP, point=point, run="all", scope="full_batch", lr=0.1, smoothness=10.0,
                    smoothness_source="max lambda_max along the path", steps=1000, achieved=0.01,
                    achieved_what="f(x_K) - f*", violated_steps=0, d0=2.0)
        rows.append(dict(base, condition="pl", constant=1e-9, theorem="Karimi et al. 2016, Thm 1", applicable=True,
                         gap0=GAP0, bound=PL_BOUND))
        rows.append(dict(base, condition="qcvx", constant=0.5, theorem="Hinder et al. 2020", applicable=True,
                         gap0=0.5, bound=0.05, violated_steps=3))
        rows.append(dict(base, condition="aiming", constant=-0.5, theorem="Liu et al. 2023", applicable=False,
                         why_not=WHY_NOT))
        pair = (0.6, 0.5) if point == "width=16" else (float("inf"), float("inf"))  # infimum at infinity
        rows.append(dict(base, condition="alpha_beta", scope="mini_batch", constant=0.6, pair_alpha=pair[0],
                         pair_beta=pair[1], theorem="Islamov et al. 2024", formula="D0^2/(K gamma (alpha-beta)) + ...",
                         applicable=True, gap0=0.5, bound=0.2))
    return {c: [r[c] for r in rows] for c in store.SCHEMAS["condition_bounds"]}


def _curves() -> dict:
    cols = {c: [] for c in store.SCHEMAS["condition_bound_curve"]}
    for run in ("all", "width-16_seed-0"):
        for point in reversed(POINTS) if run == "all" else POINTS[:1]:
            for condition in ("pl", "qcvx", "aiming"):
                for step in range(STEPS):
                    achieved = 0.0 if (point, condition, step) == ("width=16", "pl", 0) else 1.0 / (1 + step)
                    bound = None if condition == "aiming" else 2.0 / (1 + step)
                    for c, v in (("experiment", EXP), ("point", point), ("run", run), ("condition", condition),
                                 ("step", step), ("bound", bound), ("achieved", achieved)):
                        cols[c].append(v)
    return cols


@pytest.fixture(scope="module")
def promise_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("promises") / "results"
    write_promise_tables(results)
    return results


def write_promise_tables(results):
    """The three hand-written tables of this module's docstring under ``results`` (also used by test_browser)."""
    for table, cols in (("condition_constants", _constants()), ("condition_bounds", _bounds()),
                        ("condition_bound_curve", _curves())):
        store.write_table(store.part_path(results, table, EXP), table, cols)
    return EXP


@pytest.fixture
def con(promise_results):
    c = store.connect(promise_results)
    yield c
    c.close()


def test_constant_table_words_every_cell(con):
    table = promises.promise_table(promises.constant_table(con, EXP))
    assert table.height == 2 * len(promises.CONDITIONS)
    assert table["point"].to_list() == ["width=16"] * 8 + ["width=128"] * 8  # natural order, then conditions
    rows = {(r["point"], r["name"]): r for r in table.iter_rows(named=True)}
    pl_row = rows[("width=16", "Polyak-Łojasiewicz (PL)")]
    assert pl_row["full_constant"] == "μ = 1.00e-09 (log10 μ = -9.00)"  # vacuous, and visibly so
    assert pl_row["mini_constant"] == "μ = 2.50e-01 (log10 μ = -0.60)"
    assert pl_row["full_fails"] == "never" and pl_row["share"] == "100% / 100%"
    assert pl_row["bound_text"] == ("0.693 after 1000 steps (full batch constant); 1 × the initial gap 0.693: "
                                    "promises almost nothing")
    assert pl_row["smoothness"] == "10" and pl_row["achieved"] == "0.01"
    aim = rows[("width=128", "Aiming")]
    assert aim["full_constant"] == "θ = -0.5" and aim["full_fails"] == "step 30" and aim["mini_fails"] == "never"
    assert aim["share"] == "75% / 100%" and aim["bound_text"] == f"none: {WHY_NOT}"
    qcvx = rows[("width=16", "quasar-convexity (QCvx)")]
    assert qcvx["bound_text"] == "0.05 after 1000 steps (full batch constant); 0.1 × the initial gap 0.5"
    assert qcvx["violated_steps"] == "3"
    star = rows[("width=16", "star-convexity (QCvx, θ = 1)")]
    assert star["full_constant"] == "fails (θ − 1 = -0.25)" and star["full_fails"] == "step 0"
    assert star["share"] == "12% / 12%"
    ab = rows[("width=16", "α-β-condition")]
    assert ab["mini_constant"] == "α = 0.6, β = 0.5" and ab["full_constant"] == "α = 0.5"
    assert ab["bound_text"] == ("0.2 after 1000 steps (mini-batch constant) at (α, β) = (0.6, 0.5); 0.4 × the "
                                "initial gap 0.5")
    assert rows[("width=128", "α-β-condition")]["bound_text"] == (
        "0.2 after 1000 steps (mini-batch constant) at (α, β) = (∞, ∞), approached, not attained; 0.4 × the "
        "initial gap 0.5")
    assert rows[("width=16", "error bound (EB)")]["bound_text"] == "not computed"  # no bound row for it
    assert rows[("width=128", "error bound (EB)")]["full_fails"] == "step 40"


def test_bound_curves_keep_run_all_and_thin_evenly(con):
    df = promises.bound_curves(con, EXP)
    # 2 points x (PL, QCvx bound + achieved, Aiming achieved only) x 100 steps; the seed rows left out
    assert df.height == 2 * 5 * STEPS
    assert df.filter(pl.col("condition") == "aiming")["series"].unique().to_list() == ["achieved"]
    thin = promises.bound_curves(con, EXP, max_rows=120)  # 6 pairs: 120 // 12 - 1 = 9 per pair, stride 12
    steps = thin.filter((pl.col("point") == "width=16") & (pl.col("condition") == "pl")
                        & (pl.col("series") == "bound"))["step"].to_list()
    assert steps == [0, 12, 24, 36, 48, 60, 72, 84, 96, 99] and thin.height == 10 * 10 <= 120


def test_bound_chart_facets_conditions_on_log_axes(con):
    curves = promises.bound_curves(con, EXP)
    spec = promises.bound_chart(curves).to_dict()
    assert spec["facet"]["field"] == "name" and spec["facet"]["sort"] == ["PL", "Aiming", "QCvx"]
    assert spec["resolve"]["scale"]["y"] == "independent"
    enc = spec["spec"]["encoding"]
    assert enc["y"]["scale"]["type"] == "log" and enc["color"]["field"] == "point"
    assert enc["strokeDash"]["field"] == "series" and enc["strokeDash"]["scale"]["range"] == [[1, 0], [6, 4]]
    (data,) = spec["datasets"].values()
    assert len(data) == 2 * 5 * STEPS - 1  # the one achieved value of 0 cannot sit on a log axis
    assert min(r["value"] for r in data) > 0
    section = promises.bound_section(curves, promises.constant_table(con, EXP))
    assert section.caption == ("All seeds of a point together (the worst case over its runs). Each panel has its "
                               "own log axis. Achieved only, no bound: Aiming (the table says why). 1 zero, "
                               "negative or infinite values are left out of the log axis.")


def test_constants_chart_shows_magnitude_and_sign(con):
    points = promises.constant_points(con, EXP)
    assert points.height == 2 * 8 * 2 and points["point"].unique(maintain_order=True).to_list() == POINTS
    spec = promises.constants_chart(points).to_dict()
    assert spec["facet"]["field"] == "name" and len(spec["facet"]["sort"]) == 8
    enc = spec["spec"]["encoding"]
    assert enc["y"]["field"] == "magnitude" and enc["y"]["scale"]["type"] == "log"
    assert enc["x"]["sort"] == POINTS and enc["shape"]["field"] == "sign"
    (data,) = spec["datasets"].values()
    aim = {(r["point"], r["scope"]): (r["magnitude"], r["sign"]) for r in data if r["condition"] == "aiming"}
    assert aim[("width=128", "full batch")] == (0.5, "negative")
    assert aim[("width=16", "mini-batch")] == (0.25, "positive")


def test_index_line_says_which_conditions_hold(con):
    line = promises.holds_line(promises.condition_verdicts(con, EXP))
    assert line == ("hold: α-β, PL (μ ≥ 1e-09), QCvx, RSI, QG; hold at some points: EB (1 of 2 points); "
                    "fail: Aiming (from step 12), star-convexity (from step 0)")


def test_page_and_index_show_the_section(promise_results, tmp_path):
    page = experiment_page.write_experiment_report(promise_results, EXP, tmp_path / "lstm.html").read_text()
    assert "<h2 id=promises>Which conditions hold here, and what they promise</h2>" in page
    assert "<td class=l>μ = 1.00e-09 (log10 μ = -9.00)</td>" in page and "<td class=l>step 12</td>" in page
    assert "none: Aiming fails from step 12 &lt;at x_K&gt;" in page and "<at x_K>" not in page
    assert re.findall(r"<div class=chart id='(promise[a-z])'>", page) == ["promisea", "promiseb"]
    # the long texts once per condition, collapsed: theorem, formula, what the achieved value is; how L was had
    theorems = re.search(r"<details><summary>The theorems.*?</details>", page).group(0)
    assert re.findall(r"<tr><td class=l>(.*?)</td><td class=small>(.*?)</td>", theorems) == [
        ("α-β-condition", "Islamov et al. 2024"), ("Polyak-Łojasiewicz (PL)", "Karimi et al. 2016, Thm 1"),
        ("Aiming", "Liu et al. 2023"), ("quasar-convexity (QCvx)", "Hinder et al. 2020")]
    assert "L used: max lambda_max along the path.</p>" in theorems
    assert page.index("<h2>Margin sensitivity</h2>") < page.index("id=promises") < page.index("<h2>Charts</h2>")
    con = store.connect(promise_results)
    charts = experiment_page.page_charts(con, EXP, promise_results)
    con.close()
    assert [s.id for s in charts[:2]] == ["promisea", "promiseb"] and all(s.chart is not None for s in charts[:2])
    for s in charts[:2]:  # what `landscope figures` writes: the facets compile and draw offline
        assert "<svg" in chart_to_svg(s.chart, tmp_path / f"{s.id}.svg").read_text()[:200]
    index = index_page.write_index(promise_results, [EXP], tmp_path / "index.html").read_text()
    assert "&mdash; hold: α-β, PL (μ ≥ 1e-09), QCvx, RSI, QG; hold at some points: EB (1 of 2 points); " \
           "fail: Aiming (from step 12), star-convexity (from step 0).</p>" in index


def test_results_without_the_tables_get_a_note(promise_results, tmp_path):
    page = experiment_page.write_experiment_report(promise_results, "older", tmp_path / "older.html").read_text()
    assert "have no <code>condition_constants</code> rows" in page and "promisea" not in page
    index = index_page.write_index(promise_results, ["older"], tmp_path / "index.html").read_text()
    assert "Classical conditions: not measured in these results." in index
