"""Loss-surface charts for an experiment page (landscope.report.page calls :func:`surface_charts`).

From the ``surface_1d``, ``surface_2d`` and ``surface_path`` tables (landscope.measures.surfaces):

- the loss along x_0 -> x_K, one line per run coloured by sweep point (t = 0 is x_0, t = 1 is x_K);
- the loss along x_k -> x_K from each starting iterate, one panel per sweep point;
- per plane (random, PCA), one heatmap per sweep point (its first run, i.e. its lowest seed) of the
  loss on the grid x_K + a d1 + b d2, log-scaled colour, with the run's iterates projected onto the
  plane drawn over it in step order (triangle: the first iterate, cross: x_K at the origin).
"""

from __future__ import annotations

import altair as alt
import polars as pl

from landscope.report.base import Section, point_color, point_order

PLANE_TEXT = {
    "random": ("Random plane",
               "loss at x_K + a d1 + b d2 for two random directions filter-normalised to x_K (Li et al. "
               "2018; a = 1 moves every filter by its own norm); white: the iterates projected onto the "
               "plane, which random directions hardly see (captured: the share of the iterates' squared "
               "distance to x_K that lies in the plane)"),
    "pca": ("Trajectory (PCA) plane",
            "loss in the plane through x_K of the top-2 principal directions of the iterates' offsets "
            "x_k - x_K (orthonormal, units of parameter distance); white: the iterates' projections onto "
            "it in step order (captured: the share of their squared distance to x_K that the plane holds; "
            "the rest is off the picture)"),
}


def _point_of(alias: str) -> str:
    return f"coalesce(r.point, {alias}.run)"


# rows of runs that the runs view does not hold (an earlier configuration's) are left out, unless
# the experiment has no runs rows at all
_CURRENT = "(r.run IS NOT NULL OR NOT EXISTS (SELECT 1 FROM runs WHERE experiment = $e))"


def line_stat(con, experiment: str, first_only: bool) -> pl.DataFrame:
    """point, run, start_step, t, loss of the 1-D lines (only each run's first start with ``first_only``)."""
    first = ("AND s.start_step = (SELECT min(start_step) FROM surface_1d f "
             "WHERE f.experiment = s.experiment AND f.run = s.run)") if first_only else ""
    q = f"""SELECT {_point_of('s')} AS point, s.run AS run, s.start_step AS start_step, s.t AS t,
                   s.loss AS loss, s.accuracy AS accuracy
            FROM surface_1d s LEFT JOIN runs r ON r.experiment = s.experiment AND r.run = s.run
            WHERE s.experiment = $e AND isfinite(s.loss) AND {_CURRENT} {first}
            ORDER BY point, run, start_step, t"""
    return con.sql(q, params={"e": experiment}).pl()


def plane_runs(con, experiment: str, plane: str) -> pl.DataFrame:
    """point, run, captured_fraction: per sweep point the run with the lowest seed (then name)."""
    q = f"""WITH per_run AS (
              SELECT {_point_of('p')} AS point, p.run AS run, min(p.seed) AS seed,
                     any_value(p.captured_fraction) AS captured_fraction
              FROM surface_path p LEFT JOIN runs r ON r.experiment = p.experiment AND r.run = p.run
              WHERE p.experiment = $e AND p.plane = $p AND {_CURRENT} GROUP BY 1, 2)
            SELECT point, run, captured_fraction FROM per_run
            QUALIFY row_number() OVER (PARTITION BY point ORDER BY seed, run) = 1"""
    return con.sql(q, params={"e": experiment, "p": plane}).pl()


def plane_grid(con, experiment: str, run: str, plane: str) -> pl.DataFrame:
    q = """SELECT a, b, loss FROM surface_2d WHERE experiment = $e AND run = $r AND plane = $p
           AND isfinite(loss) ORDER BY a, b"""
    return con.sql(q, params={"e": experiment, "r": run, "p": plane}).pl()


def plane_path(con, experiment: str, run: str, plane: str) -> pl.DataFrame:
    q = """SELECT step, a, b, loss, loss_on_plane, off_plane FROM surface_path
           WHERE experiment = $e AND run = $r AND plane = $p ORDER BY step"""
    return con.sql(q, params={"e": experiment, "r": run, "p": plane}).pl()


def _loss_scale(values: pl.Series) -> alt.Scale:
    if len(values) and values.min() > 0:
        return alt.Scale(type="log", nice=False, padding=8)
    return alt.Scale(zero=False)


def _t_rules() -> alt.Chart:
    return alt.Chart(pl.DataFrame({"t": [0.0, 1.0]})).mark_rule(color="#666", strokeDash=[4, 3]).encode(x="t:Q")


def first_line_chart(df: pl.DataFrame):
    """Loss along x_0 -> x_K, one line per run coloured by point; dashed rules at t = 0 and 1."""
    order = point_order(df["point"].to_list())
    line = alt.Chart(df).mark_line().encode(
        x=alt.X("t:Q", title="t  (x_0 + t (x_K − x_0))"), y=alt.Y("loss:Q", title="loss", scale=_loss_scale(df["loss"])),
        color=point_color(order), detail="run:N",
        tooltip=["point:N", "run:N", alt.Tooltip("t:Q", format=".3g"), alt.Tooltip("loss:Q", format=".4g"),
                 alt.Tooltip("accuracy:Q", format=".3f")])
    return alt.layer(line, _t_rules()).properties(title="Loss on the line from x_0 to x_K", width=460, height=260)


def starts_chart(df: pl.DataFrame, per_row: int = 3):
    """Loss along x_k -> x_K for every starting step, one panel per sweep point."""
    panels = []
    for point in point_order(df["point"].to_list()):
        part = df.filter(pl.col("point") == point)
        line = alt.Chart(part).mark_line().encode(
            x=alt.X("t:Q", title="t  (x_k + t (x_K − x_k))"),
            y=alt.Y("loss:Q", title="loss", scale=_loss_scale(part["loss"])),
            color=alt.Color("start_step:O", title="start step k", scale=alt.Scale(scheme="viridis")),
            detail="run:N",
            tooltip=["run:N", "start_step:Q", alt.Tooltip("t:Q", format=".3g"), alt.Tooltip("loss:Q", format=".4g")])
        panels.append(alt.layer(line, _t_rules()).properties(title=point, width=260, height=200))
    rows = [alt.hconcat(*panels[i:i + per_row]) for i in range(0, len(panels), per_row)]
    return alt.vconcat(*rows).properties(title="Loss on the lines from x_k to x_K")


def _grid_spacing(values: list[float]) -> float:
    v = sorted(set(values))
    return (v[-1] - v[0]) / (len(v) - 1) if len(v) > 1 else 1.0


def plane_chart(grid: pl.DataFrame, path: pl.DataFrame, title: str):
    """Heatmap of the loss over (a, b) (log colour when positive), the projected path over it."""
    da, db = _grid_spacing(grid["a"].to_list()), _grid_spacing(grid["b"].to_list())
    g = grid.with_columns(a0=pl.col("a") - da / 2, a1=pl.col("a") + da / 2,
                          b0=pl.col("b") - db / 2, b1=pl.col("b") + db / 2)
    scale = (alt.Scale(type="log", scheme="viridis") if g["loss"].min() > 0
             else alt.Scale(scheme="viridis", zero=False))
    x = alt.X("a0:Q", title="a", scale=alt.Scale(domain=[g["a0"].min(), g["a1"].max()], nice=False))
    y = alt.Y("b0:Q", title="b", scale=alt.Scale(domain=[g["b0"].min(), g["b1"].max()], nice=False))
    layers = [alt.Chart(g).mark_rect().encode(
        x=x, x2="a1:Q", y=y, y2="b1:Q", color=alt.Color("loss:Q", title="loss", scale=scale),
        tooltip=[alt.Tooltip("a:Q", format=".3g"), alt.Tooltip("b:Q", format=".3g"),
                 alt.Tooltip("loss:Q", format=".4g")])]
    if not path.is_empty():
        tips = ["step:Q", alt.Tooltip("a:Q", format=".3g"), alt.Tooltip("b:Q", format=".3g"),
                alt.Tooltip("loss:Q", format=".4g", title="loss at the iterate"),
                alt.Tooltip("loss_on_plane:Q", format=".4g", title="loss at its projection"),
                alt.Tooltip("off_plane:Q", format=".3g", title="distance off the plane")]
        base = alt.Chart(path).encode(x="a:Q", y="b:Q")
        layers.append(base.mark_line(color="white", strokeWidth=1.5, clip=True).encode(order="step:Q"))
        layers.append(base.mark_point(color="white", filled=True, size=18, clip=True).encode(tooltip=tips))
        layers.append(alt.Chart(path.head(1)).mark_point(shape="triangle-up", color="white", filled=True,
                                                         size=120, clip=True).encode(x="a:Q", y="b:Q", tooltip=tips))
    layers.append(alt.Chart(pl.DataFrame({"a": [0.0], "b": [0.0]})).mark_point(
        shape="cross", color="red", filled=True, size=140).encode(x="a:Q", y="b:Q"))
    return alt.layer(*layers).properties(title=title, width=260, height=260)


def plane_charts(con, experiment: str, plane: str, per_row: int = 3):
    """(chart or None, caption suffix) of one plane: a panel per sweep point, independent colours."""
    runs = plane_runs(con, experiment, plane)
    if runs.is_empty():
        return None, ""
    panels, shares = [], []
    order = point_order(runs["point"].to_list())
    for row in sorted(runs.to_dicts(), key=lambda r: order.index(r["point"])):
        point = row["point"]
        grid = plane_grid(con, experiment, row["run"], plane)
        if grid.is_empty():
            continue
        cap = row["captured_fraction"]
        share = f"{100 * cap:.1f}%" if cap is not None and cap == cap else "n/a"
        shares.append(f"{point}: {share}")
        panels.append(plane_chart(grid, plane_path(con, experiment, row["run"], plane),
                                  f"{point} ({row['run']}), captured {share}"))
    if not panels:
        return None, ""
    rows = [alt.hconcat(*panels[i:i + per_row]).resolve_scale(color="independent")
            for i in range(0, len(panels), per_row)]
    return alt.vconcat(*rows).resolve_scale(color="independent"), "; captured: " + ", ".join(shares)


def surface_charts(con, experiment: str) -> list[Section]:
    """The experiment's loss surfaces, in page order (chart None where there are no rows)."""
    first = line_stat(con, experiment, first_only=True)
    every = line_stat(con, experiment, first_only=False)
    out = [Section("Loss from x_0 to x_K", first_line_chart(first) if not first.is_empty() else None,
                   "loss on the evaluation subset at x_0 + t (x_K − x_0), one line per run; t = 0 is x_0, t = 1 "
                   "is x_K (dashed), beyond them the line is extrapolated. A monotone decrease means no barrier "
                   "between initialisation and x_K along the straight line"),
           Section("Loss from x_k to x_K", starts_chart(every) if not every.is_empty() else None,
                   "the same from later iterates x_k (colour: k); a bump between t = 0 and 1 is a barrier the "
                   "trajectory went around")]
    for plane in ("pca", "random"):
        title, caption = PLANE_TEXT[plane]
        chart, shares = plane_charts(con, experiment, plane)
        out.append(Section(title, chart, caption + shares + ". Red cross: x_K; triangle: the first iterate; one "
                           "panel per sweep point (its lowest seed)"))
    return out
