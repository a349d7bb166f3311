"""Curvature charts for an experiment page (landscope.report calls :func:`curvature_charts`).

Per sweep point and checkpoint, over the point's seeds: sharpness lambda_max against 2/lr (edge of
stability), lambda_min, the SLQ fraction of negative eigenvalues and the Hutchinson trace. Bands are
min-max over seeds; for the two stochastic estimates they also widen by one standard error.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from landscope.report import _color, band_chart, point_order

# (column, its standard error or None): aggregated per (point, step) over the point's runs
_AGG_SQL = """
SELECT coalesce(r.point, c.run) AS point, c.step AS step, count(*) AS n_runs,
       avg(c.{col}) AS mean, min(c.{col} - {se}) AS lo, max(c.{col} + {se}) AS hi
FROM curvature c LEFT JOIN runs r ON r.experiment = c.experiment AND r.run = c.run
WHERE c.experiment = $e AND c.{col} IS NOT NULL AND isfinite(c.{col})
GROUP BY ALL ORDER BY point, step
"""


def curvature_stat(con, experiment: str, column: str, se: str | None = None) -> pl.DataFrame:
    """point, step, n_runs, mean, lo, hi of ``column`` (lo/hi widened by ``se`` when given)."""
    sql = _AGG_SQL.format(col=column, se=f"coalesce(c.{se}, 0)" if se else "0")
    return con.sql(sql, params={"e": experiment}).pl()


def eos_summary(con, experiment: str) -> tuple[int, int]:
    """(checkpoints with lambda_max > 2/lr, checkpoints measured) of the experiment."""
    q = "SELECT count(*) FILTER (WHERE above_eos), count(*) FROM curvature WHERE experiment = $e"
    above, total = con.sql(q, params={"e": experiment}).fetchall()[0]
    return int(above), int(total)


def threshold_lines(con, experiment: str) -> pl.DataFrame:
    """point, step, two_over_lr (one value per point and step: lr does not vary with the seed)."""
    q = """SELECT coalesce(r.point, c.run) AS point, c.step AS step, avg(c.two_over_lr) AS two_over_lr
           FROM curvature c LEFT JOIN runs r ON r.experiment = c.experiment AND r.run = c.run
           WHERE c.experiment = $e AND isfinite(c.two_over_lr) GROUP BY ALL ORDER BY point, step"""
    return con.sql(q, params={"e": experiment}).pl()


def sharpness_chart(stat: pl.DataFrame, lines: pl.DataFrame):
    """lambda_max per point (log scale when positive) with 2/lr dashed in the point's colour."""
    order = point_order(stat["point"].to_list())
    log = stat["lo"].min() > 0 and (lines.is_empty() or lines["two_over_lr"].min() > 0)
    chart = band_chart(stat, "Sharpness λ_max and 2/lr (dashed)", "λ_max", log=log, order=order)
    if lines.is_empty():
        return chart
    dashed = alt.Chart(lines).mark_line(strokeDash=[6, 4]).encode(
        x="step:Q", y=alt.Y("two_over_lr:Q", title="λ_max"), color=_color(order),
        tooltip=["point:N", "step:Q", alt.Tooltip("two_over_lr:Q", format=".4g")])
    return alt.layer(*chart.layer, dashed).properties(title=chart.title, width=460, height=260)


def curvature_charts(con, experiment: str) -> list[tuple[str, str, object | None]]:
    """(title, caption, chart or None) of the experiment's curvature measurements, in page order."""
    out = []
    lam = curvature_stat(con, experiment, "lambda_max")
    above, total = eos_summary(con, experiment)
    share = f"{above} of {total} checkpoints ({100 * above / total:.0f}%)" if total else "no checkpoint"
    out.append(("Edge of stability",
                f"{share} above 2/lr; Lanczos top Ritz value (a lower bound), min-max band over seeds",
                sharpness_chart(lam, threshold_lines(con, experiment)) if not lam.is_empty() else None))
    specs = [("Smallest eigenvalue", "lambda_min", None, "λ_min", "bottom Lanczos Ritz value (an upper bound); "
              "negative: a saddle direction", "Smallest eigenvalue λ_min", 0.0),
             ("Negative eigenvalues", "neg_fraction", "neg_fraction_se", "fraction",
              "SLQ weight below zero; band: seeds' range ± one standard error over probes",
              "Fraction of negative Hessian eigenvalues", 0.0),
             ("Trace", "trace", "trace_se", "tr H", "Hutchinson estimate; band: seeds' range ± one standard "
              "error over probes", "Hessian trace", None)]
    for title, col, se, y_title, caption, chart_title, rule in specs:
        df = curvature_stat(con, experiment, col, se)
        chart = band_chart(df, chart_title, y_title, rule_at=rule) if not df.is_empty() else None
        out.append((title, caption, chart))
    return out
