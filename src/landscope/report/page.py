"""Self-contained HTML reports: DuckDB aggregates -> Altair charts -> one page per experiment.

Three layers, each usable alone:

* queries (``loss_curves``, ``checkpoint_stat``, ``heatmap_grid``, ...) take a DuckDB connection from
  ``store.connect`` and return small Polars frames; all binning happens in SQL, so no chart carries
  more than ``MAX_ROWS`` rows however long the runs were;
* chart functions (``loss_chart``, ``grad_norm_chart``, ``angle_chart``, ``aiming_chart``,
  ``pl_chart``, ``heatmap_chart``) are pure: a frame in, an Altair chart out;
* pages (``write_experiment_report``, ``write_index``) put tables and charts into one HTML file
  that carries the Vega JavaScript once, inlined, so it opens offline.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import altair as alt
import polars as pl

from landscope import store
from landscope.report.analytic import surface_charts
from landscope.report.base import (
    FULL,
    MAX_BINS,
    NO_DATA,
    STOCHASTIC,
    band_chart,
    band_layers,
    binned_sql,
    bins_per_point,
    html_cell,
    html_page,
    html_table,
    kv_table,
    letters,
    n_points,
    no_data_chart,
    page_href,
    point_order,
    query_df,
    run_source,
    sort_points,
    spacing,
    write_html,
)
from landscope.report.curvature import curvature_charts, plateau_section
from landscope.report.surfaces import surface_charts as loss_surface_charts

GRID_SIDE = 60  # alpha (and beta) values per heatmap axis at most; denser grids are strided
CLIP_QUANTILE = 0.05  # the heatmap's red saturates at this quantile of min T


# ----------------------------------------------------------------------------------- ordering


# ----------------------------------------------------------------------------------- queries


def loss_curves(con, experiment: str, max_bins: int = MAX_BINS) -> pl.DataFrame:
    """Stochastic batch loss binned per point and the full-batch loss at checkpoints.

    Columns: point, step, mean, lo, hi (over seeds), n_runs, kind (STOCHASTIC or FULL). Both
    series are binned so that together they stay within MAX_ROWS rows.
    """
    bins = bins_per_point(n_points(con, experiment), series=2, max_bins=max_bins)
    stoch = query_df(con, binned_sql(run_source("train", "batch_loss", positive=True), bins), experiment)
    full = query_df(con, binned_sql(run_source("snapshots", "full_loss", positive=True), bins), experiment)
    return sort_points(pl.concat([stoch.with_columns(kind=pl.lit(STOCHASTIC)),
                                   full.with_columns(kind=pl.lit(FULL))]))


def checkpoint_stat(con, experiment: str, table: str, column: str, where: str = "true",
                    positive: bool = False, max_bins: int = MAX_BINS) -> pl.DataFrame:
    """mean/min/max over seeds of one per-checkpoint column (binned only when very dense).

    ``table`` and ``column`` must be names from store.SCHEMAS; ``where`` is trusted SQL over the
    table's columns (alias ``t``).
    """
    if column not in store.SCHEMAS[table]:
        raise ValueError(f"table {table} has no column {column}")
    bins = bins_per_point(n_points(con, experiment) or 1, max_bins=max_bins)
    return sort_points(query_df(con, binned_sql(run_source(table, column, where, positive), bins), experiment))


def heatmap_grid(con, experiment: str, max_side: int = GRID_SIDE) -> pl.DataFrame:
    """The min-T grid of every point (valid pairs only), strided to at most max_side^2 cells."""
    return sort_points(query_df(con, f"""
        WITH g AS (SELECT point, alpha, beta, min_t, feasible,
                          dense_rank() OVER (PARTITION BY point ORDER BY alpha) - 1 AS ia,
                          dense_rank() OVER (PARTITION BY point ORDER BY beta) - 1 AS ib
                   FROM ab_grid WHERE experiment = $experiment),
        n AS (SELECT point, greatest(1, ceil((max(ia) + 1) / {int(max_side)}))::BIGINT AS sa,
                     greatest(1, ceil((max(ib) + 1) / {int(max_side)}))::BIGINT AS sb
              FROM g GROUP BY point)
        SELECT point, alpha, beta, min_t, feasible FROM g JOIN n USING (point)
        WHERE ia % sa = 0 AND ib % sb = 0 AND min_t IS NOT NULL AND isfinite(min_t)
        ORDER BY point, alpha, beta""", experiment))


def region_vertices(con, experiment: str) -> pl.DataFrame:
    """The feasible polygon of every point, vertices in order."""
    return sort_points(query_df(con, """SELECT point, vertex, alpha, beta, on_box_edge FROM ab_region
                                   WHERE experiment = $experiment ORDER BY point, vertex""", experiment))


def condition_summary(con, experiment: str) -> pl.DataFrame:
    """condition_summary rows of one experiment, points in natural order."""
    return sort_points(query_df(con, "SELECT * FROM condition_summary WHERE experiment = $experiment",
                            experiment))


def run_table(con, experiment: str) -> pl.DataFrame:
    """One row per run with its setup and the chosen x_K (minimizer method and step)."""
    return sort_points(query_df(con, """
        SELECT r.point, r.seed, r.run, r.model, r.dataset, r.optimizer, r.lr, r.batch_size, r.steps,
               r.n_params, r.n_train, m.method AS x_k_method, m.step AS x_k_step, r.status,
               r.train_wall_s, r.device
        FROM runs r LEFT JOIN minimizers m ON m.experiment = r.experiment AND m.run = r.run
        WHERE r.experiment = $experiment ORDER BY r.point, r.seed, r.run""", experiment))


# ----------------------------------------------------------------------------------- charts


def loss_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Loss on a log axis: the binned stochastic batch loss (solid, light band) and the full-batch
    loss at checkpoints (dashed, with markers), each a mean over seeds with its min-max band."""
    df = df.filter(pl.col("lo") > 0)
    order = point_order(df["point"].to_list())
    layers = []
    for kind, opacity in ((STOCHASTIC, 0.15), (FULL, 0.3)):
        part = df.filter(pl.col("kind") == kind)
        if not part.is_empty():
            layers += band_layers(part, "loss", alt.Scale(type="log"), order, dash="kind", opacity=opacity)
    return alt.layer(*layers).properties(
        title="Loss (mean over seeds; band: min-max)", width=460, height=260)


def grad_norm_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Full-batch gradient norm ||grad f(x_k)|| at checkpoints, log axis."""
    return band_chart(df.filter(pl.col("lo") > 0), "Full-batch gradient norm", "‖∇f(x_k)‖", log=True)


def angle_chart(df: pl.DataFrame) -> alt.LayerChart:
    """cos angle(grad f(x_k), x_k - x_K) at checkpoints; above 0: the gradient points away from x_K."""
    return band_chart(df, "cos ∠(∇f(x_k), x_k − x_K)", "cos angle", domain=[-1.0, 1.0], rule_at=0.0)


def aiming_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Aiming coefficient <grad f(x_k), x_k - x_K> / f(x_k); below 0: Aiming fails there."""
    return band_chart(df, "Aiming coefficient ⟨∇f(x_k), x_k − x_K⟩ / f(x_k)", "aiming coefficient",
                      rule_at=0.0)


def pl_chart(df: pl.DataFrame) -> alt.LayerChart:
    """log10 of the PL constant estimate at checkpoints; its minimum is the admissible mu."""
    return band_chart(df, "PL constant estimate", "log10 μ")


def color_domain(values: pl.Series, q: float = CLIP_QUANTILE) -> list[float]:
    """[lo, hi] for a diverging scale with domainMid 0, so Vega maps [lo, 0] and [0, hi] each onto
    half of the scheme: hi is the largest value and lo the q-quantile (violations beyond it are
    clamped), so a thin feasible (blue) part stays visible next to large violations.

    Vega inserts domainMid into the domain, so the domain must have two values: with [lo, 0, hi]
    it becomes [lo, 0, 0, hi] and the scheme is sampled at 1/5..4/5 (washed out, 0 tinted blue).
    """
    lo = values.quantile(q, interpolation="nearest")
    hi = values.max()
    lo = min(float(lo), -1e-12) if lo is not None and math.isfinite(lo) else -1.0
    hi = max(float(hi), 1e-12) if hi is not None and math.isfinite(hi) else 1.0
    return [lo, hi]


def heatmap_point_chart(grid: pl.DataFrame, region: pl.DataFrame, point: str) -> alt.LayerChart | alt.Chart:
    """min T over (alpha, beta) of one point, the feasible polygon outlined in black.

    Blue: T >= 0 at every step (the pair works); red: violated. The diverging scale is centred on 0,
    each side scaled to its own range (see color_domain), so the sign stays visible.
    """
    g = grid.filter((pl.col("point") == point) & pl.col("min_t").is_not_null() & pl.col("min_t").is_finite())
    if g.is_empty():
        return no_data_chart(f"{point}: no valid pairs")
    da, db = spacing(g["alpha"].to_list()), spacing(g["beta"].to_list())
    g = g.select("alpha", "beta", "min_t").with_columns(
        a0=pl.col("alpha") - da / 2, a1=pl.col("alpha") + da / 2,
        b0=pl.col("beta") - db / 2, b1=pl.col("beta") + db / 2)
    color = alt.Color("min_t:Q", title="min T", scale=alt.Scale(
        scheme="redblue", domain=color_domain(g["min_t"]), domainMid=0, clamp=True))
    layers = [alt.Chart(g).mark_rect().encode(
        x=alt.X("a0:Q", title="α"), x2="a1:Q", y=alt.Y("b0:Q", title="β"), y2="b1:Q", color=color,
        tooltip=[alt.Tooltip("alpha:Q", format=".4g", title="α"), alt.Tooltip("beta:Q", format=".4g", title="β"),
                 alt.Tooltip("min_t:Q", format=".4g", title="min T")])]
    r = region.filter(pl.col("point") == point).sort("vertex").select("vertex", "alpha", "beta")
    if not r.is_empty():
        closed = pl.concat([r, r.head(1).with_columns(vertex=pl.lit(r.height, dtype=r["vertex"].dtype))])
        layers.append(alt.Chart(closed).mark_line(color="black", strokeWidth=2, point=True, clip=True).encode(
            x="alpha:Q", y="beta:Q", order="vertex:Q"))
    return alt.layer(*layers).properties(title=f"min T: {point}", width=260, height=260)


def heatmap_chart(grid: pl.DataFrame, region: pl.DataFrame, point: str | None = None,
                  per_row: int = 3):
    """min T over (alpha, beta): one layered panel for ``point``, or (``point=None``) all points
    in natural order, ``per_row`` panels a row, each with its own colour scale centred on 0."""
    if point is not None:
        return heatmap_point_chart(grid, region, point)
    points = point_order(grid["point"].to_list())
    if not points:
        return no_data_chart("no valid pairs")
    panels = [heatmap_point_chart(grid, region, p) for p in points]
    rows = [alt.hconcat(*panels[i:i + per_row]).resolve_scale(color="independent")
            for i in range(0, len(panels), per_row)]
    return alt.vconcat(*rows).resolve_scale(color="independent")


def heatmaps(grid: pl.DataFrame, region: pl.DataFrame, per_row: int = 3):
    """All points' heatmaps (None without data)."""
    return heatmap_chart(grid, region, per_row=per_row) if not grid.is_empty() else None


# ----------------------------------------------------------------------------------- HTML pieces


# ----------------------------------------------------------------------------------- experiment page
HOW_TO_READ = """<p class=note><b>How to read this.</b> Every run is replayed step by step against its
own reference point x<sub>K</sub> (the stand-in for the projection onto the minimizers; which one is
listed per run below: {x_k}). At step k, with mini-batch i<sub>k</sub>, the slack of the
&alpha;-&beta;-condition is T<sub>k</sub>(&alpha;, &beta;) = &lang;&nabla;f<sub>i<sub>k</sub></sub>(x<sub>k</sub>),
x<sub>k</sub> &minus; x<sub>K</sub>&rang; &minus; &alpha;(f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) &minus;
f<sub>i<sub>k</sub></sub>(x<sub>K</sub>)) + &beta;(f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) &minus;
f<sub>i<sub>k</sub></sub>*), from the condition &lang;&nabla;f<sub>i</sub>(x), x &minus; x<sub>p</sub>&rang; &ge;
&alpha;(f<sub>i</sub>(x) &minus; f<sub>i</sub>(x<sub>p</sub>)) &minus; &beta;(f<sub>i</sub>(x) &minus; f<sub>i</sub>*).
Following the paper only pairs with &alpha; &ge; &beta; + margin count; a pair
<i>works</i> when T &ge; 0 at every step of every seed. The <b>heatmaps</b> colour the minimum of T over
all steps and seeds (blue: works, red: violated; the colour saturates so that the sign stays
visible); the black outline is the exact <b>feasible region</b>, a convex polygon clipped to the plotted
box. &beta; = 0 is quasar-convexity; if (&alpha;, &beta;) works so does (&alpha; + d, &beta; + d). The
non-vanishing term 2&beta;&sigma;<sub>int</sub><sup>2</sup>/(&alpha; &minus; &beta;) of the SGD bound is
given at the smallest feasible &alpha;. The <b>Aiming</b> coefficient is &lang;&nabla;f(x<sub>k</sub>),
x<sub>k</sub> &minus; x<sub>K</sub>&rang;/f(x<sub>k</sub>) on the full batch (negative: Aiming fails there).
The <b>PL</b> panel shows log<sub>10</sub> of the PL constant estimated at each checkpoint with
f* &asymp; f(x<sub>K</sub>); the admissible constant is the minimum over the trajectory. Dropout is off
while measuring; runs are scaled down from the paper's lengths by the configuration.</p>"""

SUMMARY_COLUMNS = [
    ("point", "sweep point"), ("n_runs", "seeds"), ("feasible", "some pair works"),
    ("alpha_min", "smallest α"), ("beta_at_alpha_min", "β at smallest α"), ("beta_min", "smallest β"),
    ("nonvanishing_term", "2βσ²/(α−β) at smallest α"), ("sigma_int_sq", "σ_int²"),
    ("sigma_int_sq_method", "σ_int² method"), ("pl_log10_mu_min", "log10 PL μ (min)"),
    ("aiming_min", "Aiming min"), ("final_full_loss_mean", "final full loss"),
    ("max_abs_drift", "replay drift (max)")]


MINIMIZER_TEXT = {
    "last": "x<sub>K</sub> = the last iterate (the paper's choice)",
    "best": "x<sub>K</sub> = the checkpoint with the lowest full-batch loss",
    "tail_average": "x<sub>K</sub> = the mean of the parameters of the checkpoints in the last quarter of training",
    "projection": ("x<sub>K</sub> = the exact projection Proj(x<sub>k</sub>, S) of every iterate onto the set "
                   "of minimizers (known for the analytic examples)"),
}
LANGUAGE_MODELS = ("lstm_lm", "transformer_lm")


def model_names(runs: pl.DataFrame) -> list[str]:
    """The distinct model names of a run table (its ``model`` column holds the model's JSON)."""
    names = set()
    for text in runs["model"].to_list() if "model" in runs.columns else []:
        try:
            spec = json.loads(text or "")
        except json.JSONDecodeError:
            spec = text
        names.add(str(spec.get("name")) if isinstance(spec, dict) else str(spec))
    return sorted(n for n in names if n and n != "None")


def has_batchnorm(name: str) -> bool:
    """Whether a built-in model normalises with BatchNorm (the ResNets of landscope.models)."""
    return name.startswith("resnet")


def _f_i_star_text(value) -> str:
    if value == "exact":
        return "f<sub>i</sub>* = the exact per-sample minimum of the loss, computed from the data"
    return (f"f<sub>i</sub>* = {html.escape(str(value))} for every sample (a constant from the configuration; "
            "the paper takes 0 for non-negative losses)")


def semantics_items(models: list[str], minimizers: list[str], f_i_star: list, f_i_star_mean=None) -> list[str]:
    """The measurement conventions that hold for this experiment, one HTML sentence each."""
    items = [MINIMIZER_TEXT.get(m, f"x<sub>K</sub> method <code>{html.escape(str(m))}</code>") + "."
             for m in minimizers] or ["x<sub>K</sub> choice not recorded."]
    if f_i_star:
        items += [_f_i_star_text(v) + "." for v in f_i_star]
    else:
        mean = f" (mean over the replayed steps: {html_cell(f_i_star_mean)})" if f_i_star_mean is not None else ""
        items.append(f"f<sub>i</sub>* choice not recorded in the results{mean}.")
    items.append("Dropout is switched off while measuring (the trajectory itself trained with it, if any).")
    if any(has_batchnorm(m) for m in models):
        items.append("BatchNorm: the per-step f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) and "
                     "f<sub>i<sub>k</sub></sub>(x<sub>K</sub>) normalise with the statistics of that same "
                     "batch i<sub>k</sub> and never touch the running statistics; the full-batch quantities "
                     "(loss, gradient, angle, Aiming, PL) use evaluation mode, i.e. the running statistics.")
    if any(m in LANGUAGE_MODELS for m in models):
        items.append("Language model: f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) and "
                     "f<sub>i<sub>k</sub></sub>(x<sub>K</sub>) are measured on the same token windows "
                     "(the mini-batch i<sub>k</sub> of step k), the loss being the mean next-token "
                     "cross-entropy of each window.")
    return items


def semantics_html(items: list[str]) -> str:
    """The "Measurement semantics" box."""
    lis = "".join(f"<li>{i}</li>" for i in items)
    return f"<div class=semantics><h2>Measurement semantics</h2><ul>{lis}</ul></div>"


def figure_html(figure: str | None, scale_note: str | None) -> str:
    """The paper figure group and the scale note, escaped."""
    parts = []
    if figure:
        parts.append(f"<p class=figure>Paper figure group: <b>{html.escape(str(figure))}</b></p>")
    if scale_note:
        parts.append(f"<p class=note><b>Scale.</b> {html.escape(str(scale_note))}</p>")
    return "".join(parts)


# ----------------------------------------------------------------------------------- x_K comparison
def minimizer_points(summary: pl.DataFrame) -> dict[str, str]:
    """{point: x_K choice} when the experiment sweeps ``minimizer`` (else {})."""
    out = {}
    for point, text in zip(summary["point"].to_list(), summary["sweep_json"].to_list()) if not summary.is_empty() else []:
        try:
            sweep = json.loads(text or "{}")
        except json.JSONDecodeError:
            continue
        if isinstance(sweep, dict) and "minimizer" in sweep:
            out[point] = str(sweep["minimizer"])
    return out


def _reference(choices: dict[str, str]) -> str:
    """The point the others are compared with: the projection if swept, else the last iterate, else the first."""
    for want in ("projection", "last"):
        for point, choice in choices.items():
            if choice == want:
                return point
    return next(iter(choices))


def region_shift_text(summary: pl.DataFrame, choices: dict[str, str]) -> list[str]:
    """One sentence per choice: how its smallest alpha and beta differ from the reference choice."""
    rows = {r["point"]: r for r in summary.iter_rows(named=True)}
    ref = _reference(choices)
    base = rows[ref]
    out = []
    for point, choice in choices.items():
        if point == ref:
            continue
        r = rows[point]
        if not (r["feasible"] and base["feasible"]):
            out.append(f"{choice}: {'feasible' if r['feasible'] else 'no feasible pair'} "
                       f"(vs {choices[ref]}: {'feasible' if base['feasible'] else 'none'})")
            continue
        da, db = r["alpha_min"] - base["alpha_min"], r["beta_min"] - base["beta_min"]
        out.append(f"{choice} vs {choices[ref]}: smallest α {da:+.3g}, smallest β {db:+.3g}")
    return out


def minimizer_region_chart(region: pl.DataFrame, summary: pl.DataFrame, choices: dict[str, str]) -> alt.LayerChart:
    """The exact feasible polygons of all x_K choices overlaid, the smallest-alpha corner marked."""
    r = region.filter(pl.col("point").is_in(list(choices))).sort("point", "vertex")
    closed = pl.concat([r, r.group_by("point", maintain_order=True).first()
                        .with_columns(vertex=pl.lit(10**9, dtype=r["vertex"].dtype)).select(r.columns)])
    closed = closed.with_columns(choice=pl.col("point").replace_strict(choices, return_dtype=pl.String))
    order = [choices[p] for p in choices]
    color = alt.Color("choice:N", title="x_K choice", sort=order, scale=alt.Scale(domain=order))
    corner = summary.filter(pl.col("point").is_in(list(choices)) & pl.col("feasible")).select(
        "point", "alpha_min", "beta_at_alpha_min").with_columns(
        choice=pl.col("point").replace_strict(choices, return_dtype=pl.String))
    layers = [alt.Chart(closed).mark_line(strokeWidth=2, clip=True).encode(
        x=alt.X("alpha:Q", title="α"), y=alt.Y("beta:Q", title="β"), color=color, detail="point:N", order="vertex:Q")]
    if not corner.is_empty():
        layers.append(alt.Chart(corner).mark_point(size=90, filled=True).encode(
            x="alpha_min:Q", y="beta_at_alpha_min:Q", color=color,
            tooltip=["choice:N", alt.Tooltip("alpha_min:Q", format=".4g"),
                     alt.Tooltip("beta_at_alpha_min:Q", format=".4g")]))
    title = alt.TitleParams("How the feasible (α, β) region moves with the choice of x_K",
                            subtitle=region_shift_text(summary, choices) or None)
    return alt.layer(*layers).properties(title=title, width=420, height=320)


MINIMIZER_COLUMNS = [("choice", "x_K choice"), ("point", "sweep point"), ("feasible", "some pair works"),
                     ("alpha_min", "smallest α"), ("beta_at_alpha_min", "β at smallest α"),
                     ("beta_min", "smallest β"), ("nonvanishing_term", "2βσ²/(α−β) at smallest α")]


def minimizer_comparison(summary: pl.DataFrame, region: pl.DataFrame):
    """(table HTML, chart) comparing the x_K choices of a minimizer sweep, or None without one."""
    choices = minimizer_points(summary)
    if len(choices) < 2:
        return None
    table = summary.filter(pl.col("point").is_in(list(choices))).with_columns(
        choice=pl.col("point").replace_strict(choices, return_dtype=pl.String))
    chart = minimizer_region_chart(region, summary, choices) if not region.is_empty() else None
    return html_table(table, MINIMIZER_COLUMNS), chart


# ----------------------------------------------------------------------------------- extra sections
def curvature_sections(con, experiment: str) -> list[tuple[str, str, str, object | None]]:
    """(id, heading, caption, chart) from landscope.report.curvature: every
    curvature panel when the curvature table has rows for the experiment, else the plateaus panel
    alone when the plateaus table has rows (plateaus come from the replay, curvature or not)."""
    views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views()").fetchall()}

    def rows(view: str) -> int:
        if view not in views:
            return 0
        return con.sql(f"SELECT count(*) FROM {view} WHERE experiment = $e", params={"e": experiment}).fetchall()[0][0]

    if rows("curvature"):
        sections = curvature_charts(con, experiment)
    elif rows("plateaus"):
        sections = [plateau_section(con, experiment)]
    else:
        return []
    return [(f"curv{letters(i)}", title, caption, chart) for i, (title, caption, chart) in enumerate(sections)]


def surface_sections(con, experiment: str) -> list[tuple[str, str, str, object | None]]:
    """(id, heading, caption, chart) from landscope.report.surfaces when the
    surface tables have rows for the experiment (else [])."""
    views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views()").fetchall()}
    if not {"surface_1d", "surface_2d"} <= views:
        return []
    n = con.sql("SELECT (SELECT count(*) FROM surface_1d WHERE experiment = $e) + "
                "(SELECT count(*) FROM surface_2d WHERE experiment = $e)", params={"e": experiment}).fetchall()[0][0]
    if not n:
        return []

    return [(f"lsurf{letters(i)}", title, caption, chart)
            for i, (title, caption, chart) in enumerate(loss_surface_charts(con, experiment))]


def _captioned_sections(sections: list[tuple[str, str, str, object | None]]) -> str:
    """h3 heading, caption note and chart (or 'no data') per (id, heading, caption, chart)."""
    parts = []
    for cid, heading, caption, chart in sections:
        note = f"<p class=note>{html.escape(caption)}</p>" if caption else ""
        inner = NO_DATA if chart is None else f"<div class=chart id='{cid}'></div>"
        parts.append(f"<h3>{html.escape(heading)}</h3>{note}{inner}")
    return "".join(parts)


def experiment_charts(con, experiment: str) -> list[tuple[str, str, object | None]]:
    """(id, heading, chart or None) for every chart of an experiment page, in page order."""
    grid, region = heatmap_grid(con, experiment), region_vertices(con, experiment)
    loss = loss_curves(con, experiment)
    specs = [("gnorm", "Full-batch gradient norm", "snapshots", "full_grad_norm", "true", True, grad_norm_chart),
             ("angle", "Angle to x_K", "directions", "cos_angle", "t.dist_to_min > 0", False, angle_chart),
             ("aiming", "Aiming", "directions", "aiming_coef", "t.dist_to_min > 0", False, aiming_chart),
             ("pl", "Polyak-Łojasiewicz", "pl", "pl_log10_mu", "true", False, pl_chart)]
    out = [("heat", "α-β heatmaps: min T over all seeds and steps", heatmaps(grid, region)),
           ("loss", "Loss", loss_chart(loss) if not loss.filter(pl.col("lo") > 0).is_empty() else None)]
    for cid, heading, table, column, where, positive, make in specs:
        df = checkpoint_stat(con, experiment, table, column, where, positive)
        out.append((cid, heading, make(df) if not df.is_empty() else None))
    return out


def _provenance(results: str | Path, experiment: str) -> tuple[str, dict]:
    """Parquet key-value metadata of one of the experiment's files (condition_summary preferred)."""
    for table in ("condition_summary", "ab_grid", "runs", "train", "snapshots"):
        parts = sorted(store.table_dir(results, table, experiment).rglob("part-*.parquet"))
        if parts:
            return str(parts[0].relative_to(Path(results))), store.read_meta(parts[0])
    return "", {}


def _x_k_methods(runs: pl.DataFrame) -> str:
    methods = sorted({m for m in runs["x_k_method"].to_list() if m}) if not runs.is_empty() else []
    return ", ".join(f"<code>{html.escape(m)}</code>" for m in methods) or "not recorded"


def _chart_sections(charts: list[tuple[str, str, object | None]]) -> str:
    parts = []
    for cid, heading, chart in charts:
        inner = NO_DATA if chart is None else f"<div class=chart id='{cid}'></div>"
        parts.append(f"<h3>{html.escape(heading)}</h3>{inner}")
    return "".join(parts)


def _paper_sections(con, results, experiment: str, summary: pl.DataFrame):
    """(HTML, [(id, heading, chart)]) of the page's optional parts: the x_K comparison of a minimizer
    sweep, the surfaces of analytic examples, the curvature charts and the loss surfaces."""

    parts, charts = [], []
    comparison = minimizer_comparison(summary, region_vertices(con, experiment))
    if comparison:
        table, chart = comparison
        parts.append("<h2>Choice of x<sub>K</sub></h2><p class=note>The exact feasible region of every "
                     "x<sub>K</sub> choice of this sweep, overlaid (dots: the smallest feasible &alpha;).</p>")
        parts.append(("<div class=chart id='xkregion'></div>" if chart is not None else NO_DATA) + table)
        charts += [("xkregion", "Choice of x_K", chart)] if chart is not None else []
    surfaces = surface_charts(con, results, experiment)
    if surfaces:
        parts.append("<h2>Surface</h2><p class=note>f(x, y) around the trajectories (as the paper's "
                     "Figure 3): the set of minimizers S in red, each seed's checkpoints joined in step "
                     "order, x<sub>K</sub> as a cross. Between checkpoints the path is drawn straight.</p>")
        for i, (point, chart) in enumerate(surfaces):
            parts.append(f"<h3>{html.escape(point)}</h3><div class=chart id='surface{letters(i)}'></div>")
            charts.append((f"surface{letters(i)}", f"Surface: {point}", chart))
    curvature = curvature_sections(con, experiment)
    if curvature:
        heading = "Curvature" if len(curvature) > 1 else "Plateaus"
        parts.append(f"<h2>{heading}</h2>" + _captioned_sections(curvature))
        charts += [(cid, heading, ch) for cid, heading, _, ch in curvature if ch is not None]
    loss_surfaces = surface_sections(con, experiment)
    if loss_surfaces:
        parts.append("<h2>Loss surfaces around x<sub>K</sub></h2>" + _captioned_sections(loss_surfaces))
        charts += [(cid, heading, ch) for cid, heading, _, ch in loss_surfaces if ch is not None]
    return "".join(parts), charts


def page_charts(con, experiment: str, results: str | Path = "results") -> list[tuple[str, str, object | None]]:
    """(id, heading, chart) of every chart of the experiment's page, in page order: the main charts
    (heatmaps, loss, gradient norm, angle, Aiming, PL; chart None where the page says 'no data'),
    then the optional sections (x_K comparison, analytic surfaces, curvature, loss surfaces).
    ``results``: the folder ``con`` reads (the analytic surfaces also read its checkpoints)."""
    charts = experiment_charts(con, experiment)
    _, extra = _paper_sections(con, results, experiment, condition_summary(con, experiment))
    return charts + extra


def _setup(setup: dict | None, runs: pl.DataFrame, summary: pl.DataFrame) -> list[str]:
    """Measurement-semantics sentences from the config's ``setup`` (models, minimizers, f_i_star),
    falling back on what the results record."""
    setup = setup or {}
    models = setup.get("models") or model_names(runs)
    minimizers = setup.get("minimizers") or (sorted({m for m in runs["x_k_method"].to_list() if m})
                                             if not runs.is_empty() else [])
    fmean = summary["f_i_star_mean"].drop_nulls() if "f_i_star_mean" in summary.columns else pl.Series([])
    return semantics_items(models, minimizers, setup.get("f_i_star") or [],
                           fmean.mean() if len(fmean) else None)


def write_experiment_report(results: str | Path, experiment: str, out_html: str | Path,
                            title: str | None = None, notes: str | None = None,
                            runs: list[str] | None = None, figure: str | None = None,
                            scale_note: str | None = None, setup: dict | None = None) -> Path:
    """Write one experiment's self-contained HTML page (paper figure and scale, measurement
    semantics, summary, charts, runs, provenance).

    ``runs`` restricts the page to those runs (the pipeline passes the runs of the current config);
    ``setup`` ({"models": [...], "minimizers": [...], "f_i_star": [...]}) states the config's choices
    for the measurement-semantics box (what it leaves out is read from the results).
    """
    con = store.connect(results, runs=runs)
    try:
        summary = condition_summary(con, experiment)
        runs = run_table(con, experiment)
        charts = experiment_charts(con, experiment)
        extra_html, extra_charts = _paper_sections(con, results, experiment, summary)
    finally:
        con.close()
    source, prov = _provenance(results, experiment)
    summary_html = (html_table(summary, SUMMARY_COLUMNS, {"sigma_int_sq_method": "small"})
                    if not summary.is_empty() else "<p class=note>No condition summary yet.</p>")
    runs_html = (html_table(runs, [(c, c) for c in runs.columns])
                 if not runs.is_empty() else "<p class=note>No runs recorded.</p>")
    prov_html = (f"<p class=note>From <code>{html.escape(source)}</code>.</p>{kv_table(prov)}"
                 if source else "<p class=note>No files, so no provenance.</p>")
    margin = summary["margin"].drop_nulls() if "margin" in summary.columns else pl.Series([])
    margin_txt = f" Margin here: {html_cell(margin[0])}." if len(margin) else ""
    body = "".join([
        "<p><a href='index.html'>&larr; all experiments</a></p>",
        f"<h1>{html.escape(title or experiment)}</h1>",
        f"<p class=note>experiment <code>{html.escape(experiment)}</code></p>",
        figure_html(figure, scale_note),
        f"<p>{html.escape(notes)}</p>" if notes else "",
        semantics_html(_setup(setup, runs, summary)),
        HOW_TO_READ.format(x_k=_x_k_methods(runs)),
        f"<h2>Summary</h2>{summary_html}<p class=note>One row per sweep point, all seeds together.{margin_txt}</p>",
        "<h2>Charts</h2>", _chart_sections(charts), extra_html,
        f"<h2>Runs</h2>{runs_html}",
        f"<h2>Provenance</h2>{prov_html}"])
    embedded = [(cid, ch) for cid, _, ch in charts + extra_charts if ch is not None]
    return write_html(out_html, html_page(title or experiment, body, embedded))


# ----------------------------------------------------------------------------------- index page
VERDICT_COLUMNS = [
    ("point", "sweep point"), ("ab", "some (α, β) works"), ("alpha_min", "smallest α"),
    ("beta_at_alpha_min", "β there"), ("beta_min", "smallest β"), ("pl_log10_mu_min", "log10 PL μ (min)"),
    ("aiming_min", "Aiming min"), ("aiming", "Aiming"), ("final_full_loss_mean", "final loss")]


def verdicts(con, experiment: str) -> pl.DataFrame:
    """One verdict row per point: feasibility, smallest constants, PL, Aiming, final loss."""
    df = condition_summary(con, experiment)
    if df.is_empty():
        return df
    return df.with_columns(ab=pl.when(pl.col("n_runs") == 0).then(pl.lit("no measured run (diverged?)"))
                           .when(pl.col("feasible")).then(pl.lit("yes")).otherwise(pl.lit("no")),
                           aiming=pl.when(pl.col("aiming_min").is_null()).then(pl.lit(None, dtype=pl.String))
                           .when(pl.col("aiming_min") < 0).then(pl.lit("fails somewhere"))
                           .otherwise(pl.lit("holds")))


INDEX_INTRO = """<p class=note>Does the loss landscape along these training runs satisfy the
&alpha;-&beta;-condition (pairs with &alpha; &ge; &beta; + margin, T &ge; 0 at every replayed step of every
seed), PL and Aiming, and with which constants? One row per sweep point. A negative Aiming minimum
means Aiming fails somewhere along the trajectory; log<sub>10</sub> PL &mu; is the admissible PL
constant (very negative: PL says little). Each experiment's page has the heatmaps and curves.</p>"""


def write_index(results: str | Path, experiments: list[str], out_html: str | Path,
                skipped: dict[str, str] | None = None, links: dict[str, str] | None = None) -> Path:
    """The index page (plain HTML, no JavaScript): every experiment linked, with its verdicts;
    ``links`` ({relative href: text}) lists study-wide pages such as table2.html first."""
    con = store.connect(results)
    try:
        tables = {exp: verdicts(con, exp) for exp in experiments}
    finally:
        con.close()
    parts = ["<h1>landscope reports</h1>", INDEX_INTRO]
    if links:
        items = "".join(f"<li><a href=\"{html.escape(href)}\">{html.escape(text)}</a></li>"
                        for href, text in links.items())
        parts.append(f"<ul class=pages>{items}</ul>")
    for exp, df in tables.items():
        parts.append(f"<h2><a href=\"{html.escape(page_href(exp))}\">{html.escape(exp)}</a></h2>")
        parts.append(html_table(df, VERDICT_COLUMNS) if not df.is_empty()
                     else "<p class=note>No condition summary yet.</p>")
    if skipped:
        items = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(str(v))}</li>"
                        for k, v in sorted(skipped.items()))
        parts.append(f"<h2>Skipped experiments</h2><ul>{items}</ul>")
    return write_html(out_html, html_page("landscope reports", "\n".join(parts)))


# ----------------------------------------------------------------------------------- export
