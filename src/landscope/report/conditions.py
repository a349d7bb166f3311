"""The alpha-beta condition on an experiment page: DuckDB queries of the measured tables, the charts drawn
from them, and the comparison of x_K choices.

* queries (``loss_curves``, ``checkpoint_stat``, ``heatmap_grid``, ``region_vertices``, ``condition_summary``,
  ``margin_sensitivity``, ``seed_conditions``) take a DuckDB connection from ``store.connect`` and return small Polars frames; all binning happens in SQL,
  so no chart carries more than ``MAX_ROWS`` rows however long the runs were;
* chart functions (``loss_chart``, ``grad_norm_chart``, ``angle_chart``, ``aiming_chart``, ``pl_chart``,
  ``heatmap_chart``, ``minimizer_region_chart``) are pure: a frame in, an Altair chart out;
* ``condition_sections`` and ``minimizer_comparison`` put them together for the page (landscope.report.page).
"""

from __future__ import annotations

import json
import math

import altair as alt
import polars as pl

from landscope import store
from landscope.report.base import (
    FULL,
    HELDOUT,
    MAX_BINS,
    STOCHASTIC,
    Section,
    band_chart,
    band_layers,
    binned_sql,
    bins_per_point,
    html_table,
    n_points,
    no_data_chart,
    point_order,
    query_df,
    run_source,
    sort_points,
    spacing,
)
from landscope.report.semantics import sampling_text, with_quoted

GRID_SIDE = 60  # alpha (and beta) values per heatmap axis at most; denser grids are strided
CLIP_QUANTILE = 0.05  # the heatmap's red saturates at this quantile of min T


# ----------------------------------------------------------------------------------- queries
def loss_curves(con, experiment: str, max_bins: int = MAX_BINS) -> pl.DataFrame:
    """Stochastic batch loss binned per point, and the full-batch training loss and the held-out (test)
    loss at checkpoints (no held-out rows where the dataset holds nothing out).

    Columns: point, step, mean, lo, hi (over seeds), n_runs, kind (STOCHASTIC, FULL or HELDOUT). The
    series are binned so that together they stay within MAX_ROWS rows.
    """
    bins = bins_per_point(n_points(con, experiment), series=3, max_bins=max_bins)
    parts = [query_df(con, binned_sql(run_source(table, column, positive=True), bins), experiment)
             .with_columns(kind=pl.lit(kind))
             for table, column, kind in (("train", "batch_loss", STOCHASTIC), ("snapshots", "full_loss", FULL),
                                         ("snapshots", "test_loss", HELDOUT))]
    return sort_points(pl.concat(parts))


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


def margin_sensitivity(con, experiment: str) -> pl.DataFrame:
    """margin_sensitivity rows of one experiment: points in natural order, margins ascending within a point."""
    return sort_points(query_df(con, """SELECT * FROM margin_sensitivity WHERE experiment = $experiment
                                   ORDER BY point, margin""", experiment))


def seed_conditions(con, experiment: str) -> pl.DataFrame:
    """seed_conditions rows (one per run) of one experiment: points in natural order, then seed and run."""
    return sort_points(query_df(con, """SELECT * FROM seed_conditions WHERE experiment = $experiment
                                   ORDER BY point, seed, run""", experiment))


# ----------------------------------------------------------------------------------- charts
def loss_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Loss on a log axis: the binned stochastic batch loss (solid, light band), the full-batch training
    loss at checkpoints (dashed) and the held-out loss at checkpoints (dotted), each a mean over seeds
    with its min-max band: train and test side by side."""
    df = df.filter(pl.col("lo") > 0)
    order = point_order(df["point"].to_list())
    layers = []
    for kind, opacity in ((STOCHASTIC, 0.15), (FULL, 0.3), (HELDOUT, 0.3)):
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


def condition_sections(con, experiment: str) -> list[Section]:
    """The page's main charts, in page order: heatmaps, loss, gradient norm, angle, Aiming, PL (chart None
    where the page says 'no data')."""
    grid, region = heatmap_grid(con, experiment), region_vertices(con, experiment)
    loss = loss_curves(con, experiment)
    specs = [("gnorm", "Full-batch gradient norm", "snapshots", "full_grad_norm", "true", True, grad_norm_chart),
             ("angle", "Angle to x_K", "directions", "cos_angle", "t.dist_to_min > 0", False, angle_chart),
             ("aiming", "Aiming", "directions", "aiming_coef", "t.dist_to_min > 0", False, aiming_chart),
             ("pl", "Polyak-Łojasiewicz", "pl", "pl_log10_mu", "true", False, pl_chart)]
    out = [Section("α-β heatmaps: min T over all seeds and steps", heatmaps(grid, region), id="heat"),
           Section("Loss", loss_chart(loss) if not loss.filter(pl.col("lo") > 0).is_empty() else None, id="loss")]
    sampled = sampling_caption(condition_summary(con, experiment))
    for cid, heading, table, column, where, positive, make in specs:
        df = checkpoint_stat(con, experiment, table, column, where, positive)
        caption = sampled if table in ("directions", "pl") else ""
        out.append(Section(heading, make(df) if not df.is_empty() else None, caption, id=cid))
    return out


def sampling_caption(summary: pl.DataFrame) -> str:
    """How densely the full-batch curves were measured, per point ('' when not recorded), e.g.
    'Full-batch points: 20 per run, up to 200 steps apart.' (one phrase when every point shares it)."""
    if summary.is_empty() or "directions_points" not in summary.columns:
        return ""
    texts = {p: sampling_text(n, s) for p, n, s in zip(summary["point"], summary["directions_points"],
                                                      summary["directions_spacing"]) if n is not None}
    if not texts:
        return ""
    if len(set(texts.values())) == 1:
        return f"Full-batch points: {next(iter(texts.values()))}."
    return "Full-batch points: " + "; ".join(f"{p}: {t}" for p, t in texts.items()) + "."


# ----------------------------------------------------------------------------------- x_K comparison
def minimizer_points(summary: pl.DataFrame) -> dict[str, str]:
    """{point: x_K choice} when the experiment sweeps ``minimizer`` (else {})."""
    out = {}
    if summary.is_empty():
        return out
    for point, text in zip(summary["point"].to_list(), summary["sweep_json"].to_list()):
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
                     ("binding_text", "smallest pair"), ("beta_min", "smallest β"),
                     ("nonvanishing_term", "min 2βσ²/(α−β)"), ("term_pair", "at (α, β)")]


def minimizer_comparison(summary: pl.DataFrame, region: pl.DataFrame):
    """(table HTML, chart) comparing the x_K choices of a minimizer sweep, or None without one."""
    choices = minimizer_points(summary)
    if len(choices) < 2:
        return None
    table = with_quoted(summary.filter(pl.col("point").is_in(list(choices)))).with_columns(
        choice=pl.col("point").replace_strict(choices, return_dtype=pl.String))
    chart = minimizer_region_chart(region, summary, choices) if not region.is_empty() else None
    return html_table(table, MINIMIZER_COLUMNS), chart
