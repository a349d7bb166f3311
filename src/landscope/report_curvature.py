"""Curvature charts for an experiment page (landscope.report calls :func:`curvature_charts`).

Per sweep point and checkpoint, over the point's seeds: sharpness lambda_max against 2/lr (edge of
stability), lambda_min, the SLQ fraction of negative eigenvalues and the Hutchinson trace. Bands are
min-max over seeds; for the two stochastic estimates they also widen by one standard error.
Then, from the ``stationarity`` and ``flatness`` tables: the mean step length between checkpoints,
and per sweep point the eps-sublevel radius and the SGLD local learning coefficient at x_K.
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
    return out + flatness_charts(con, experiment)


# ----------------------------------------------------------------------------------- flatness
_STEP_SQL = """
SELECT coalesce(r.point, s.run) AS point, s.step AS step, count(*) AS n_runs,
       avg(s.mean_step_length) AS mean, min(s.mean_step_length) AS lo, max(s.mean_step_length) AS hi
FROM stationarity s LEFT JOIN runs r ON r.experiment = s.experiment AND r.run = s.run
WHERE s.experiment = $e AND isfinite(s.mean_step_length)
GROUP BY ALL ORDER BY point, step
"""

_POINT_SQL = """
SELECT coalesce(r.point, f.run) AS point, count(*) AS n_runs, avg(f.{col}) AS mean,
       min({lo}) AS lo, max({hi}) AS hi
FROM flatness f LEFT JOIN runs r ON r.experiment = f.experiment AND r.run = f.run
WHERE f.experiment = $e AND isfinite(f.{col})
GROUP BY ALL ORDER BY point
"""


def step_length_stat(con, experiment: str) -> pl.DataFrame:
    """point, step (the pair's first checkpoint), n_runs, mean, lo, hi of the mean step length."""
    return con.sql(_STEP_SQL, params={"e": experiment}).pl()


def radius_stat(con, experiment: str) -> pl.DataFrame:
    """point, n_runs, mean of the runs' median radius, lo/hi: lowest first and highest third quartile."""
    sql = _POINT_SQL.format(col="radius_median", lo="f.radius_q25", hi="f.radius_q75")
    return con.sql(sql, params={"e": experiment}).pl()


def llc_stat(con, experiment: str) -> pl.DataFrame:
    """point, n_runs, mean LLC over runs, lo/hi: the runs' range widened by one standard deviation
    over chains (none when a run has a single chain)."""
    sd = "CASE WHEN isfinite(f.llc_std) THEN f.llc_std ELSE 0 END"
    sql = _POINT_SQL.format(col="llc_mean", lo=f"f.llc_mean - {sd}", hi=f"f.llc_mean + {sd}")
    return con.sql(sql, params={"e": experiment}).pl()


def point_chart(df: pl.DataFrame, title: str, y_title: str):
    """Mean per sweep point (a dot) with a vertical bar from lo to hi, coloured by point."""
    order = point_order(df["point"].to_list())
    base = alt.Chart(df).encode(x=alt.X("point:N", sort=order, title="sweep point"), color=_color(order))
    tips = ["point:N", "n_runs:Q"] + [alt.Tooltip(f"{c}:Q", format=".4g") for c in ("mean", "lo", "hi")]
    bar = base.mark_rule(strokeWidth=2).encode(y=alt.Y("lo:Q", title=y_title, scale=alt.Scale(zero=False)),
                                                y2="hi:Q")
    dot = base.mark_point(filled=True, size=60).encode(y=alt.Y("mean:Q", title=y_title), tooltip=tips)
    return alt.layer(bar, dot).properties(title=title, width=460, height=260)


def flatness_charts(con, experiment: str) -> list[tuple[str, str, object | None]]:
    """(title, caption, chart or None) for step length, sublevel radius and LLC."""
    steps = step_length_stat(con, experiment)
    log = not steps.is_empty() and steps["lo"].min() > 0
    radius, llc = radius_stat(con, experiment), llc_stat(con, experiment)
    return [
        ("Step length", "||x_{k+1} - x_k|| / (steps between checkpoints); min-max band over seeds",
         band_chart(steps, "Mean step length between checkpoints", "step length", log=log)
         if not steps.is_empty() else None),
        ("Sublevel radius", "largest t with f(x_K + t d) - f(x_K) <= eps along filter-normalised "
         "directions d; dot: mean over seeds of the median, bar: lowest first to highest third quartile",
         point_chart(radius, "eps-sublevel radius at x_K", "radius t") if not radius.is_empty() else None),
        ("Local learning coefficient", "SGLD estimate at x_K; dot: mean over seeds, bar: seeds' range "
         "± one standard deviation over chains",
         point_chart(llc, "Local learning coefficient λ̂ at x_K", "λ̂") if not llc.is_empty() else None),
    ]
