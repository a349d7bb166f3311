"""Self-contained HTML reports: DuckDB aggregates -> Altair charts -> one page per experiment.

Chart functions are pure (DataFrame in, chart out). Data is aggregated in SQL first, so no chart
carries more than a few thousand rows. The Vega JavaScript is inlined once per page, so pages open
offline (a cluster login node, an e-mail attachment).
"""

from __future__ import annotations

import html
import json
import math
import re
from functools import lru_cache
from pathlib import Path

import altair as alt
import polars as pl

from landscope import store

MAX_BINS = 300


# ----------------------------------------------------------------------------------- helpers
def natural_key(text: str):
    return [(0, float(t), "") if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", t) else (1, 0.0, t)
            for t in re.split(r"([-+]?\d+(?:\.\d+)?(?:e-?\d+)?)", str(text)) if t]


def point_order(points) -> list[str]:
    return sorted(set(points), key=natural_key)


def _df(con, query: str) -> pl.DataFrame:
    return con.sql(query).pl()


def _q(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


# ----------------------------------------------------------------------------------- queries
def loss_curves(con, experiment: str) -> pl.DataFrame:
    """Stochastic loss binned to at most MAX_BINS bins per run, then mean/min/max over seeds."""
    e = _q(experiment)
    return _df(con, f"""
        WITH w AS (SELECT greatest(1, ceil((max(step) + 1) / {MAX_BINS}))::BIGINT AS width
                   FROM train WHERE experiment = {e}),
        per_run AS (SELECT r.point, t.run, (t.step // w.width) * w.width AS step, avg(t.batch_loss) AS v
                    FROM train t JOIN runs r USING (experiment, run), w
                    WHERE t.experiment = {e} GROUP BY ALL)
        SELECT point, step, avg(v) AS mean, min(v) AS lo, max(v) AS hi, 'stochastic (binned)' AS kind
        FROM per_run GROUP BY ALL
        UNION ALL
        SELECT r.point, s.step, avg(s.full_loss), min(s.full_loss), max(s.full_loss), 'full batch'
        FROM snapshots s JOIN runs r USING (experiment, run) WHERE s.experiment = {e} GROUP BY ALL
        ORDER BY point, kind, step""")


def checkpoint_stat(con, experiment: str, table: str, column: str, where: str = "true") -> pl.DataFrame:
    """mean/min/max over seeds of one per-checkpoint column."""
    e = _q(experiment)
    return _df(con, f"""
        SELECT r.point, d.step, avg(d.{column}) AS mean, min(d.{column}) AS lo, max(d.{column}) AS hi
        FROM {table} d JOIN runs r USING (experiment, run)
        WHERE d.experiment = {e} AND d.{column} IS NOT NULL AND isfinite(d.{column}) AND ({where})
        GROUP BY ALL ORDER BY point, step""")


# ----------------------------------------------------------------------------------- charts
def band_chart(df: pl.DataFrame, title: str, y_title: str, log: bool = False, order=None,
               dash_field: str | None = None) -> alt.Chart:
    """Mean line with a min-max band over seeds, coloured by sweep point."""
    order = order or point_order(df["point"].to_list())
    scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    color = alt.Color("point:N", sort=order, title="sweep point")
    base = alt.Chart(df).encode(x=alt.X("step:Q", title="step"), color=color)
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", scale=scale, title=y_title), y2="hi:Q")
    line_enc = {"y": alt.Y("mean:Q", scale=scale)}
    if dash_field:
        line_enc["strokeDash"] = alt.StrokeDash(f"{dash_field}:N", title=None)
        band = band.encode(detail=f"{dash_field}:N")
    line = base.mark_line().encode(**line_enc, tooltip=["point:N", "step:Q", alt.Tooltip("mean:Q", format=".4g")])
    return (band + line).properties(title=title, width=420, height=260)


def loss_chart(df: pl.DataFrame) -> alt.Chart:
    df = df.filter(pl.col("lo") > 0)
    return band_chart(df, "Loss (mean over seeds, band: min-max)", "loss", log=True, dash_field="kind")


def heatmap_chart(grid: pl.DataFrame, region: pl.DataFrame, point: str) -> alt.Chart:
    """min over steps and seeds of T(alpha, beta); blue >= 0 (the pair works), red < 0."""
    g = grid.filter((pl.col("point") == point) & pl.col("min_t").is_not_null())
    if g.is_empty():
        return alt.Chart(pl.DataFrame({"t": ["no valid pairs"]})).mark_text().encode(text="t:N")
    alphas = sorted(set(g["alpha"].to_list()))
    betas = sorted(set(g["beta"].to_list()))
    da = alphas[1] - alphas[0] if len(alphas) > 1 else 1.0
    db = betas[1] - betas[0] if len(betas) > 1 else 1.0
    g = g.with_columns(a0=pl.col("alpha") - da / 2, a1=pl.col("alpha") + da / 2,
                       b0=pl.col("beta") - db / 2, b1=pl.col("beta") + db / 2)
    # diverging at 0 with each side scaled to its own range, so that a thin feasible (blue) part
    # stays visible next to large violations; extreme violations are clamped
    lo = min(float(g["min_t"].quantile(0.05)), -1e-12)
    hi = max(float(g["min_t"].max()), 1e-12)
    color = alt.Color("min_t:Q", title="min T", scale=alt.Scale(scheme="redblue", domain=[lo, 0, hi],
                                                                 domainMid=0, clamp=True))
    rect = alt.Chart(g).mark_rect().encode(
        x=alt.X("a0:Q", title="alpha"), x2="a1:Q", y=alt.Y("b0:Q", title="beta"), y2="b1:Q",
        color=color, tooltip=[alt.Tooltip("alpha:Q", format=".3g"), alt.Tooltip("beta:Q", format=".3g"),
                              alt.Tooltip("min_t:Q", format=".3g")])
    layers = [rect]
    r = region.filter(pl.col("point") == point).sort("vertex")
    if not r.is_empty():
        closed = pl.concat([r, r.head(1).with_columns(vertex=pl.lit(len(r), dtype=pl.Int64))])
        layers.append(alt.Chart(closed).mark_line(color="black", strokeWidth=2).encode(
            x="alpha:Q", y="beta:Q", order="vertex:Q"))
    return alt.layer(*layers).properties(title=f"min T: {point}", width=260, height=260)


def heatmaps(grid: pl.DataFrame, region: pl.DataFrame, per_row: int = 3) -> alt.Chart | None:
    points = point_order(grid["point"].to_list())
    if not points:
        return None
    charts = [heatmap_chart(grid, region, p) for p in points]
    rows = [alt.hconcat(*charts[i:i + per_row]) for i in range(0, len(charts), per_row)]
    return alt.vconcat(*rows).resolve_scale(color="independent")


# ----------------------------------------------------------------------------------- pages
@lru_cache(maxsize=1)
def _vega_bundle() -> str:
    import vl_convert

    return vl_convert.javascript_bundle()


def _spec_json(chart) -> str:
    return json.dumps(chart.to_dict()).replace("</", "<\\/")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.note{color:#555;max-width:60em}.chart{margin:1.5em 0}
.bad{color:#b00}.good{color:#070}code{background:#f5f5f5;padding:0 3px}"""


def _num(x, fmt=".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return format(x, fmt)
    return html.escape(str(x))


def _table(df: pl.DataFrame, columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{html.escape(label)}</th>" for i, (_, label) in enumerate(columns))
    body = []
    for row in df.iter_rows(named=True):
        cells = "".join(f"<td{' class=l' if i == 0 else ''}>{_num(row[c])}</td>" for i, (c, _) in enumerate(columns))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _page(title: str, body: str, charts: list[tuple[str, object]]) -> str:
    embeds = "\n".join(f"vegaEmbed('#{cid}', {_spec_json(ch)}, {{actions: false}});" for cid, ch in charts)
    script = ""
    if charts:
        script = f"<script>{_vega_bundle()}</script>\n<script>\n{embeds}\n</script>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}\n{script}</body></html>")


HOW_TO_READ = """<p class=note><b>How to read this.</b> For every replayed step k the slack of the
alpha-beta-condition is T<sub>k</sub>(&alpha;, &beta;) = &lang;&nabla;f<sub>i<sub>k</sub></sub>(x<sub>k</sub>),
x<sub>k</sub> &minus; x<sub>K</sub>&rang; &minus; &alpha;(f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) &minus;
f<sub>i<sub>k</sub></sub>(x<sub>K</sub>)) + &beta;(f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) &minus; f<sub>i</sub>*),
with x<sub>K</sub> the chosen minimizer (see the minimizer table). A pair (&alpha;, &beta;) with
&alpha; &ge; &beta; + margin <i>works</i> when T<sub>k</sub> &ge; 0 at every step of every seed. The heatmaps
colour the minimum of T over all steps and seeds (blue: works, red: violated); the black outline is
the exact feasible region (a convex polygon, unbounded along the diagonal, drawn inside the plotted
box). &beta; = 0 is quasar-convexity. The Aiming coefficient is &lang;&nabla;f(x<sub>k</sub>),
x<sub>k</sub> &minus; x<sub>K</sub>&rang;/f(x<sub>k</sub>) (full batch; negative: Aiming fails); the PL
panel shows log<sub>10</sub> of &frac12;&#8214;&nabla;f&#8214;<sup>2</sup>/(f &minus; f*)<sup>2/&delta;</sup>
with f* &asymp; f(x<sub>K</sub>); the admissible PL constant is its minimum.
Dropout is off while measuring.</p>"""


def _provenance(results, experiment: str) -> dict:
    parts = sorted(Path(results).glob(f"tables/condition_summary/experiment={experiment}/part-*.parquet"))
    return store.read_meta(parts[0]) if parts else {}


def write_experiment_report(results: str | Path, experiment: str, out_html: str | Path,
                            title: str | None = None, notes: str | None = None) -> Path:
    """Write one experiment's self-contained HTML page; returns its path."""
    con = store.connect(results, confine=False)
    summary = _df(con, f"SELECT * FROM condition_summary WHERE experiment = {_q(experiment)}")
    order = point_order(summary["point"].to_list())
    if order:
        summary = summary.with_columns(pl.col("point").cast(pl.Enum(order))).sort("point")
    runs = _df(con, f"""SELECT r.run, r.point, r.seed, r.n_params, r.n_train, r.optimizer, r.lr, r.batch_size,
                        r.steps, m.method AS minimizer, m.step AS minimizer_step, r.train_wall_s
                        FROM runs r LEFT JOIN minimizers m USING (experiment, run)
                        WHERE r.experiment = {_q(experiment)} ORDER BY r.point, r.seed""")
    charts: list[tuple[str, object]] = []
    sections: list[str] = []

    def add(cid: str, heading: str, chart, text: str = ""):
        if chart is None:
            sections.append(f"<h3>{html.escape(heading)}</h3><p class=note>no data</p>")
            return
        charts.append((cid, chart))
        sections.append(f"<h3>{html.escape(heading)}</h3>{text}<div class=chart id='{cid}'></div>")

    loss = loss_curves(con, experiment)
    add("loss", "Loss", loss_chart(loss) if not loss.is_empty() else None)
    grid = _df(con, f"SELECT * FROM ab_grid WHERE experiment = {_q(experiment)}")
    region = _df(con, f"SELECT * FROM ab_region WHERE experiment = {_q(experiment)}")
    add("heat", "alpha-beta heatmaps (min T over all seeds and steps)", heatmaps(grid, region))
    for cid, heading, table, col, where, log in (
            ("gnorm", "Full-batch gradient norm", "snapshots", "full_grad_norm", "true", True),
            ("angle", "cos angle(grad f(x_k), x_k - x_K)", "directions", "cos_angle", "dist_to_min > 0", False),
            ("aiming", "Aiming coefficient <grad f(x_k), x_k - x_K> / f(x_k)", "directions", "aiming_coef",
             "dist_to_min > 0", False),
            ("pl", "log10 PL constant estimate", "pl", "pl_log10_mu", "true", False)):
        df = checkpoint_stat(con, experiment, table, col, where)
        if log:
            df = df.filter(pl.col("lo") > 0)
        add(cid, heading, None if df.is_empty() else band_chart(df, heading, col, log=log, order=order))

    heading = html.escape(title or experiment)
    cols = [("point", "sweep point"), ("n_runs", "seeds"), ("feasible", "feasible"),
            ("alpha_min", "smallest α"), ("beta_at_alpha_min", "β at smallest α"), ("beta_min", "smallest β"),
            ("alpha_at_beta_min", "α at smallest β"), ("nonvanishing_term", "2βσ²/(α−β) at smallest pair"),
            ("sigma_int_sq", "σ_int²"), ("pl_log10_mu_min", "log10 PL μ (min)"), ("aiming_min", "Aiming min"),
            ("cos_angle_min", "cos angle min"), ("final_full_loss_mean", "final full loss"),
            ("max_abs_drift", "replay drift")]
    method = summary["sigma_int_sq_method"][0] if not summary.is_empty() else ""
    prov = _provenance(results, experiment)
    prov_html = "".join(f"<tr><td class=l>{html.escape(k)}</td><td class=l>{html.escape(str(v))}</td></tr>"
                        for k, v in sorted(prov.items()) if k not in ("conditions", "experiment"))
    body = (f"<p><a href='index.html'>&larr; all experiments</a></p><h1>{heading}</h1>"
            f"<p class=note>experiment <code>{html.escape(experiment)}</code>"
            + (f"; {html.escape(notes)}" if notes else "") + "</p>" + HOW_TO_READ
            + "<h2>Summary</h2>" + _table(summary, cols)
            + f"<p class=note>σ_int² = E_i[f* − f_i*] estimated as: {html.escape(method)}. "
              "Margin: pairs need α ≥ β + margin; the region and heatmap box is [0, α_box]².</p>"
            + "<h2>Charts</h2>" + "".join(sections)
            + "<h2>Runs</h2>" + _table(runs, [(c, c) for c in runs.columns])
            + "<h2>Provenance</h2><table>" + prov_html + "</table>")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(out, _page(title or experiment, body, charts).encode())
    return out


def write_index(results: str | Path, experiments: list[str], out_html: str | Path,
                skipped: dict[str, str] | None = None) -> Path:
    """The index page: every experiment, linked, with a verdict per sweep point."""
    con = store.connect(results, confine=False)
    parts = ["<h1>landscope reports</h1><p class=note>Does the loss landscape along these training runs "
             "satisfy the alpha-beta-condition, PL and Aiming, and with which constants? One row per sweep "
             "point (all seeds together). Feasible: some (α, β) with α ≥ β + margin keeps T ≥ 0 at every "
             "step. Aiming min &lt; 0: Aiming fails somewhere. log10 PL μ: the admissible PL constant.</p>"]
    cols = [("point", "sweep point"), ("verdict", "alpha-beta"), ("alpha_min", "smallest α"),
            ("beta_at_alpha_min", "β there"), ("nonvanishing_term", "2βσ²/(α−β)"),
            ("pl_log10_mu_min", "log10 PL μ"), ("aiming_min", "Aiming min"),
            ("final_full_loss_mean", "final loss")]
    for exp in experiments:
        df = _df(con, f"SELECT * FROM condition_summary WHERE experiment = {_q(exp)}")
        order = point_order(df["point"].to_list())
        if order:
            df = df.with_columns(pl.col("point").cast(pl.Enum(order))).sort("point")
        df = df.with_columns(verdict=pl.when(pl.col("feasible")).then(pl.lit("holds"))
                             .otherwise(pl.lit("fails for every pair")))
        parts.append(f"<h2><a href=\"{html.escape(exp)}.html\">{html.escape(exp)}</a></h2>")
        parts.append(_table(df, cols) if not df.is_empty() else "<p class=note>no results yet</p>")
    if skipped:
        items = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in skipped.items())
        parts.append(f"<h2>Skipped experiments</h2><ul>{items}</ul>")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(out, _page("landscope reports", "".join(parts), []).encode())
    return out


def chart_to_svg(chart, path: str | Path) -> Path:
    """Export one chart as SVG (vl-convert; no browser) for papers."""
    import vl_convert

    path = Path(path)
    path.write_text(vl_convert.vegalite_to_svg(chart.to_dict()))
    return path
