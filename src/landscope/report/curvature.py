"""Curvature charts for an experiment page (landscope.report.page calls :func:`curvature_charts`).

Per sweep point and checkpoint, over the point's seeds: sharpness against the optimizer's stability
threshold (edge of stability: lambda_max vs 2/lr for SGD, the preconditioned sharpness vs 38/lr for
Adam), the sharpness of each parameter block (table block_curvature), lambda_min, the SLQ fractions
of clearly negative and of near-zero eigenvalues, the smoothed spectral density
at the first, middle and last checkpoint, the Hutchinson and Hutch++ traces, and the plateaus of the
training loss with their escapes. Bands are min-max over seeds; for the stochastic estimates they
also widen by one standard error. Then, from the ``stationarity`` and ``flatness`` tables: the mean
step length between checkpoints, and per sweep point the eps-sublevel radius and the SGLD local
learning coefficient at x_K.
"""

from __future__ import annotations

import math

import altair as alt
import polars as pl

from landscope.report.base import Section, band_chart, point_color, point_order

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


def eos_summary(con, experiment: str) -> tuple[int, int, int]:
    """(checkpoints whose sharpness exceeds the threshold, checkpoints with a threshold where the optimizer
    moves (lr > 0), checkpoints left out at lr = 0) of the experiment (the preconditioned sharpness against
    38/lr for Adam; lambda_max against 2/lr for SGD). At lr = 0 every threshold is infinite: a comparison
    that cannot fail is not counted as one (older results stored it as False against an infinite threshold)."""
    q = ("SELECT count(*) FILTER (WHERE above_eos AND lr > 0), count(above_eos) FILTER (WHERE lr > 0), "
         "count(*) FILTER (WHERE NOT lr > 0) FROM curvature WHERE experiment = $e")
    above, total, still = con.sql(q, params={"e": experiment}).fetchall()[0]
    return int(above), int(total), int(still)


def eos_share(above: int, total: int, still: int) -> str:
    """The page's "k of n checkpoints (p%)" of :func:`eos_summary`, saying how many lr = 0 ones it leaves out."""
    left_out = (f"; {still} checkpoint{'s' if still != 1 else ''} at lr = 0, where the optimizer does not move, "
                "left out (not applicable: the threshold is infinite there)") if still else ""
    if not total:
        return f"not applicable: no checkpoint where the optimizer moves is compared{left_out}"
    return f"{above} of {total} checkpoints ({100 * above / total:.0f}%) above the stability threshold{left_out}"


def eos_rules(con, experiment: str) -> list[str]:
    """The distinct thresholds the experiment's runs are compared with (landscope.measures.curvature.eos_threshold)."""
    q = "SELECT DISTINCT coalesce(eos_rule, 'gd') FROM curvature WHERE experiment = $e ORDER BY 1"
    return [r[0] for r in con.sql(q, params={"e": experiment}).fetchall()]


def threshold_lines(con, experiment: str) -> pl.DataFrame:
    """point, step, two_over_lr: the stability threshold (eos_threshold; 2/lr for results without it),
    one value per point and step (lr does not vary with the seed)."""
    q = """SELECT coalesce(r.point, c.run) AS point, c.step AS step,
                  avg(coalesce(c.eos_threshold, c.two_over_lr)) AS two_over_lr
           FROM curvature c LEFT JOIN runs r ON r.experiment = c.experiment AND r.run = c.run
           WHERE c.experiment = $e AND isfinite(coalesce(c.eos_threshold, c.two_over_lr))
           GROUP BY ALL ORDER BY point, step"""
    return con.sql(q, params={"e": experiment}).pl()


ADAM_RULES = ("adam", "nadam")  # eos_rule values whose threshold bounds the preconditioned sharpness
_EOS_LABEL = {"gd": "2/lr", "gd_max_step": "2/lr", "heavy_ball": "2(1+β)/lr", "nesterov": "2(1+β)/((1+2β) lr)",
              "adam": "(2+2β1)/((1−β1) lr)", "nadam": "(2+2β1)/((1−β1)(1+2β1) lr)"}


def sharpness_chart(stat: pl.DataFrame, lines: pl.DataFrame, rules: list[str] | None = None):
    """Sharpness per point (log scale when positive) with its threshold dashed in the point's colour."""
    order = point_order(stat["point"].to_list())
    log = stat["lo"].min() > 0 and (lines.is_empty() or lines["two_over_lr"].min() > 0)
    rules = [r for r in (rules or ["gd"]) if r not in ("none", "lr_zero")] or ["gd"]
    adam = any(r in ADAM_RULES for r in rules)
    y_title = "λ_max (of P⁻¹H for Adam)" if adam else "λ_max"
    names = ", ".join(dict.fromkeys(_EOS_LABEL.get(r, r) for r in rules))
    chart = band_chart(stat, f"Sharpness {y_title} and {names} (dashed)", y_title, log=log, order=order)
    if lines.is_empty():
        return chart
    dashed = alt.Chart(lines).mark_line(strokeDash=[6, 4]).encode(
        x="step:Q", y=alt.Y("two_over_lr:Q", title=y_title), color=point_color(order),
        tooltip=["point:N", "step:Q", alt.Tooltip("two_over_lr:Q", format=".4g")])
    return alt.layer(*chart.layer, dashed).properties(title=chart.title, width=460, height=260)


def curvature_charts(con, experiment: str) -> list[Section]:
    """The experiment's curvature measurements, in page order (chart None where there are no rows)."""
    out = []
    lam = curvature_stat_expr(con, experiment, "coalesce(c.eos_sharpness, c.lambda_max)")
    share = eos_share(*eos_summary(con, experiment))
    rules = eos_rules(con, experiment)
    out.append(Section(
        "Edge of stability",
        sharpness_chart(lam, threshold_lines(con, experiment), rules) if not lam.is_empty() else None,
        f"{share}. The threshold (dashed): 2/lr for SGD, 2(1+β)/lr with heavy-ball "
        "momentum β, (2+2β1)/((1−β1) lr) = 38/lr at β1 = 0.9 for Adam, whose sharpness is that of "
        "the preconditioned Hessian P⁻¹H (Cohen et al. 2022); Lanczos top Ritz value (a lower "
        "bound), min-max band over seeds"))
    blocks = block_stat(con, experiment)
    out.append(Section(
        "Sharpness per block", block_chart(blocks) if not blocks.is_empty() else None,
        "λ_max of each parameter block's diagonal Hessian block H_BB (a module's parameters, or a "
        "curvature.blocks name pattern; Lanczos on the block, a lower bound, at most the whole model's λ_max "
        "by interlacing), min-max band over seeds; dashed grey: the stability threshold of each sweep point "
        "(not drawn for Adam types, whose threshold bounds the preconditioned sharpness)"))
    specs = [("Smallest eigenvalue", "lambda_min", None, "λ_min", "bottom Lanczos Ritz value (an upper bound); "
              "negative: a saddle direction", "Smallest eigenvalue λ_min", 0.0),
             ("Negative eigenvalues", "neg_fraction", "neg_fraction_se", "fraction",
              "SLQ share of eigenvalues below −3σ, σ = (spectral range)/(Lanczos steps) the resolution; "
              "smaller negative eigenvalues are not resolved from zero and do not count (floor 0.0013 from "
              "the smoothing); band: seeds' range ± one standard error over probes",
              "Fraction of clearly negative Hessian eigenvalues", 0.0),
             ("Near-zero eigenvalues", "near_zero_fraction", "near_zero_fraction_se", "fraction",
              "SLQ share of eigenvalues with |λ| < σ, the density's resolution (singular learning theory: most "
              "of a network's spectrum sits at zero); band: seeds' range ± one standard error over probes",
              "Share of near-zero Hessian eigenvalues (|λ| < σ)", None)]
    for title, col, se, y_title, caption, chart_title, rule in specs:
        df = curvature_stat(con, experiment, col, se)
        chart = band_chart(df, chart_title, y_title, rule_at=rule) if not df.is_empty() else None
        out.append(Section(title, chart, caption))
    dens = density_curves(con, experiment)
    out.append(Section(
        "Spectral density", density_chart(dens) if not dens.is_empty() else None,
        "SLQ density smoothed with a Gaussian of width σ (the Lanczos resolution), first seed of each sweep "
        "point at its first, middle and last measured checkpoint, floored at 1e-6 of its peak; solid grey: 0, "
        "dashed: 2/lr at that checkpoint (gradient descent's threshold)"))
    for title, col, se, caption in (
            ("Trace", "trace", "trace_se", "Hutchinson estimate; band: seeds' range ± one standard error over probes"),
            ("Trace (Hutch++)", "trace_hutchpp", "trace_hutchpp_se",
             "Hutch++ (Meyer et al. 2021) with the same number of Hessian-vector products: exact on the "
             "top eigendirections its sketch finds, Hutchinson on the rest; band: seeds' range ± one "
             "standard error")):
        df = curvature_stat(con, experiment, col, se)
        out.append(Section(title, band_chart(df, f"Hessian trace ({title.lower()})", "tr H")
                           if not df.is_empty() else None, caption))
    out.append(plateau_section(con, experiment))
    return out + flatness_charts(con, experiment)


def block_stat(con, experiment: str) -> pl.DataFrame:
    """point, block, step, n_runs, mean, lo, hi of the blocks' lambda_max over the point's runs, with the
    step's stability threshold and its rule (table block_curvature)."""
    q = """SELECT coalesce(r.point, b.run) AS point, b.block AS block, b.step AS step, count(*) AS n_runs,
                  avg(b.lambda_max) AS mean, min(b.lambda_max) AS lo, max(b.lambda_max) AS hi,
                  avg(b.eos_threshold) AS threshold, min(b.eos_rule) AS rule
           FROM block_curvature b LEFT JOIN runs r ON r.experiment = b.experiment AND r.run = b.run
           WHERE b.experiment = $e AND isfinite(b.lambda_max) GROUP BY ALL ORDER BY point, block, step"""
    return con.sql(q, params={"e": experiment}).pl()


def block_chart(df: pl.DataFrame):
    """Sharpness per block (one series per block, per sweep point and block when there are several
    points; log scale when positive) with each point's stability threshold dashed in grey."""
    several = df["point"].n_unique() > 1
    label = (pl.col("point") + " · " + pl.col("block")) if several else pl.col("block")
    series = df.with_columns(label.alias("point"))
    lines = df.filter(pl.col("threshold").is_finite() & ~pl.col("rule").is_in(list(ADAM_RULES)))
    lines = lines.select("point", "step", "threshold").unique().sort("point", "step")
    log = df["lo"].min() > 0 and (lines.is_empty() or lines["threshold"].min() > 0)
    chart = band_chart(series, "Sharpness per parameter block, λ_max(H_BB), and the threshold (dashed)",
                       "λ_max(H_BB)", log=log, order=point_order(series["point"].to_list()))
    if lines.is_empty():
        return chart
    dashed = alt.Chart(lines).mark_line(strokeDash=[6, 4], color="gray").encode(
        x="step:Q", y=alt.Y("threshold:Q", title="λ_max(H_BB)"), detail="point:N",
        tooltip=["point:N", "step:Q", alt.Tooltip("threshold:Q", format=".4g")])
    return alt.layer(*chart.layer, dashed).properties(title=chart.title, width=460, height=260)


def curvature_stat_expr(con, experiment: str, expr: str) -> pl.DataFrame:
    """point, step, n_runs, mean, lo, hi of a SQL expression over ``curvature c``."""
    sql = f"""
SELECT coalesce(r.point, c.run) AS point, c.step AS step, count(*) AS n_runs,
       avg({expr}) AS mean, min({expr}) AS lo, max({expr}) AS hi
FROM curvature c LEFT JOIN runs r ON r.experiment = c.experiment AND r.run = c.run
WHERE c.experiment = $e AND {expr} IS NOT NULL AND isfinite({expr})
GROUP BY ALL ORDER BY point, step"""
    return con.sql(sql, params={"e": experiment}).pl()


# ----------------------------------------------------------------------------------- spectral density
_DENSITY_SQL = """
WITH first_runs AS (  -- the first seed of each sweep point that has curvature rows
    SELECT coalesce(r.point, c.run) AS point, arg_min(c.run, coalesce(r.seed, 0)) AS run
    FROM curvature c LEFT JOIN runs r ON r.experiment = c.experiment AND r.run = c.run
    WHERE c.experiment = $e GROUP BY ALL
), ranked AS (
    SELECT f.point, c.run, c.step, c.density_sigma, c.two_over_lr,
           row_number() OVER (PARTITION BY c.run ORDER BY c.step) - 1 AS i,
           count(*) OVER (PARTITION BY c.run) AS n
    FROM curvature c JOIN first_runs f ON f.run = c.run WHERE c.experiment = $e
)
SELECT k.point, k.step, CASE WHEN k.i = 0 THEN 'first' WHEN k.i = k.n - 1 THEN 'last' ELSE 'middle' END
       AS checkpoint, k.density_sigma AS sigma, k.two_over_lr, s.ritz, s.weight, s.probe
FROM ranked k JOIN spectrum s ON s.experiment = $e AND s.run = k.run AND s.step = k.step
WHERE k.i IN (0, k.n // 2, k.n - 1)
ORDER BY k.point, k.step, s.probe, s.ritz
"""


def density_curves(con, experiment: str, points: int = 160) -> pl.DataFrame:
    """point, step, checkpoint (first/middle/last), eigenvalue, density, two_over_lr: the smoothed SLQ
    density (landscope.measures.hvp.smoothed_density, averaged over probes) on an even grid over the
    Ritz values ± 4 sigma, floored at 1e-6 of the curve's peak, taken at the Ritz values (the chart is
    log-scale)."""
    nodes = con.sql(_DENSITY_SQL, params={"e": experiment}).pl()
    if nodes.is_empty():
        return pl.DataFrame(schema={"point": pl.String, "step": pl.Int64, "checkpoint": pl.String,
                                    "eigenvalue": pl.Float64, "density": pl.Float64, "two_over_lr": pl.Float64})
    import torch  # only pages with a spectrum need torch; the others (plateaus only) stay torch-free

    from landscope.measures.hvp import smoothed_density  # torch, as above

    rows = []
    for (point, step, label), g in nodes.group_by(["point", "step", "checkpoint"], maintain_order=True):
        ritz = torch.tensor(g["ritz"].to_list(), dtype=torch.float64)
        weight = torch.tensor(g["weight"].to_list(), dtype=torch.float64) / g["probe"].n_unique()
        sigma = g["sigma"][0]
        if sigma is None or not math.isfinite(sigma) or sigma <= 0:  # results of an older landscope
            sigma = max(float(ritz.max() - ritz.min()), 1e-12) / max(len(ritz) // g["probe"].n_unique(), 1)
        grid = torch.linspace(float(ritz.min()) - 4 * sigma, float(ritz.max()) + 4 * sigma, points,
                              dtype=torch.float64)
        peak = float(smoothed_density(ritz, weight, ritz, sigma).max())
        rho = smoothed_density(ritz, weight, grid, sigma).clamp_min(1e-6 * peak)
        rows += [{"point": point, "step": step, "checkpoint": label, "eigenvalue": float(t), "density": float(r),
                  "two_over_lr": g["two_over_lr"][0]} for t, r in zip(grid, rho)]
    return pl.DataFrame(rows)


def density_chart(df: pl.DataFrame):
    """One panel per sweep point: density against eigenvalue (log density axis), coloured by
    checkpoint, 0 as a grey rule and 2/lr dashed per checkpoint."""
    order = point_order(df["point"].to_list())
    color = alt.Color("checkpoint:N", sort=["first", "middle", "last"],
                      scale=alt.Scale(domain=["first", "middle", "last"]), title="checkpoint")
    panels = []
    for point in order:
        part = df.filter(pl.col("point") == point)
        marks = part.group_by("checkpoint", "step", maintain_order=True).agg(pl.col("two_over_lr").first()).filter(
            pl.col("two_over_lr").is_finite())
        line = alt.Chart(part).mark_line().encode(
            x=alt.X("eigenvalue:Q", title="eigenvalue λ"),
            y=alt.Y("density:Q", scale=alt.Scale(type="log"), title="density"),
            color=color, detail="step:Q",
            tooltip=["checkpoint:N", "step:Q", alt.Tooltip("eigenvalue:Q", format=".4g"),
                     alt.Tooltip("density:Q", format=".3g")])
        zero = alt.Chart(pl.DataFrame({"x": [0.0]})).mark_rule(color="grey").encode(x="x:Q")
        layers = [line, zero]
        if not marks.is_empty():
            layers.append(alt.Chart(marks).mark_rule(strokeDash=[6, 4]).encode(
                x="two_over_lr:Q", color=color, tooltip=["checkpoint:N", "step:Q",
                                                         alt.Tooltip("two_over_lr:Q", format=".4g")]))
        panels.append(alt.layer(*layers).properties(title=str(point), width=300, height=200))
    return alt.concat(*panels, columns=3).properties(title="Hessian spectral density (SLQ, smoothed)")


# ----------------------------------------------------------------------------------- plateaus
def plateau_rows(con, experiment: str) -> pl.DataFrame:
    """The experiment's plateau events with the run's sweep point (empty without a plateaus table)."""
    q = """SELECT coalesce(r.point, p.run) AS point, p.*
           FROM plateaus p LEFT JOIN runs r ON r.experiment = p.experiment AND r.run = p.run
           WHERE p.experiment = $e ORDER BY point, p.run, p.start_step"""
    return con.sql(q, params={"e": experiment}).pl()


def loss_bins(con, experiment: str, window: int) -> pl.DataFrame:
    """point, run, step, loss: the training batch loss averaged over bins of ``window`` steps."""
    q = """SELECT coalesce(r.point, t.run) AS point, t.run, (t.step // $w) * $w AS step,
                  avg(t.batch_loss) AS loss
           FROM train t LEFT JOIN runs r ON r.experiment = t.experiment AND r.run = t.run
           WHERE t.experiment = $e AND isfinite(t.batch_loss) GROUP BY ALL ORDER BY point, t.run, step"""
    return con.sql(q, params={"e": experiment, "w": window}).pl()


def plateau_section(con, experiment: str) -> Section:
    """'Plateaus': the counts in the caption, the binned loss with the plateaus and escapes (or None)."""
    ev = plateau_rows(con, experiment)
    escaped = ev.filter(pl.col("escaped")) if not ev.is_empty() else ev
    at_end = ev.filter(pl.col("at_end")).height if not ev.is_empty() else 0
    caption = (f"{ev.height} plateau(s) of the replayed mini-batch loss (flat to within plateau_flat_tol per "
               f"window, gradient below plateau_grad_tol of the run's largest), {escaped.height} escaped "
               f"(the loss then dropped by plateau_drop; triangles), {at_end} lasting to the end of the "
               "run (convergence or a stall); thick bars: plateaus at their mean loss")
    if ev.is_empty():
        return Section("Plateaus", None, caption)
    window = int(ev["window_steps"][0])
    loss = loss_bins(con, experiment, window).filter(pl.col("loss") > 0)
    order = point_order(loss["point"].to_list() + ev["point"].to_list())
    y = alt.Y("loss:Q", scale=alt.Scale(type="log"), title="training loss (binned)")
    curve = alt.Chart(loss).mark_line(opacity=0.6).encode(x=alt.X("step:Q", title="step"), y=y,
                                                          color=point_color(order), detail="run:N")
    bars = alt.Chart(ev.filter(pl.col("plateau_loss") > 0)).mark_rule(strokeWidth=7, opacity=0.45).encode(
        x="start_step:Q", x2="end_step:Q", y=alt.Y("plateau_loss:Q", scale=alt.Scale(type="log")),
        color=point_color(order), tooltip=["run:N", "start_step:Q", "end_step:Q", "escaped:N",
                                      alt.Tooltip("plateau_loss:Q", format=".4g"),
                                      alt.Tooltip("relative_drop:Q", format=".2f")])
    layers = [curve, bars]
    esc = escaped.filter(pl.col("loss_after") > 0) if not escaped.is_empty() else escaped
    if not esc.is_empty():
        layers.append(alt.Chart(esc).mark_point(shape="triangle-down", size=90, filled=True).encode(
            x="escape_step:Q", y=alt.Y("loss_after:Q", scale=alt.Scale(type="log")), color=point_color(order),
            tooltip=["run:N", "escape_step:Q", alt.Tooltip("relative_drop:Q", format=".2f")]))
    return Section("Plateaus", alt.layer(*layers).properties(
        title="Plateaus of the training loss and their escapes", width=460, height=260), caption)


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
    base = alt.Chart(df).encode(x=alt.X("point:N", sort=order, title="sweep point"), color=point_color(order))
    tips = ["point:N", "n_runs:Q"] + [alt.Tooltip(f"{c}:Q", format=".4g") for c in ("mean", "lo", "hi")]
    bar = base.mark_rule(strokeWidth=2).encode(y=alt.Y("lo:Q", title=y_title, scale=alt.Scale(zero=False)),
                                                y2="hi:Q")
    dot = base.mark_point(filled=True, size=60).encode(y=alt.Y("mean:Q", title=y_title), tooltip=tips)
    return alt.layer(bar, dot).properties(title=title, width=460, height=260)


def flatness_charts(con, experiment: str) -> list[Section]:
    """Step length, sublevel radius and LLC (chart None where there are no rows)."""
    steps = step_length_stat(con, experiment)
    log = not steps.is_empty() and steps["lo"].min() > 0
    radius, llc = radius_stat(con, experiment), llc_stat(con, experiment)
    return [
        Section("Step length",
                band_chart(steps, "Mean step length between checkpoints", "step length", log=log)
                if not steps.is_empty() else None,
                "||x_{k+1} - x_k|| / (steps between checkpoints); min-max band over seeds"),
        Section("Sublevel radius",
                point_chart(radius, "eps-sublevel radius at x_K", "radius t") if not radius.is_empty() else None,
                "largest t with f(x_K + t d) - f(x_K) <= eps along filter-normalised directions d; dot: mean "
                "over seeds of the median, bar: lowest first to highest third quartile"),
        Section("Local learning coefficient",
                point_chart(llc, "Local learning coefficient λ̂ at x_K", "λ̂") if not llc.is_empty() else None,
                "SGLD estimate at x_K; dot: mean over seeds, bar: seeds' range ± one standard deviation over "
                "chains"),
    ]
