"""The page section "Diffusion along the minimum" (tables ``diffusion`` and ``diffusion_msd``, written by
landscope.measures.diffusion.diffusion_run): per run the mean squared displacement of the checkpoints after
the loss plateau over lag on log-log axes with its fitted exponent, the loss, gradient norm, sharpness and
test loss over the same window, a per-run table, and per sweep point one paragraph saying with numbers
whether the essay's claims held there: SGD random-walks along the minimum once the loss is flat (exponent
about 1), and drifts toward flatter regions (lambda_max or trace down, log-volume proxy up).

* queries (``diffusion_rows``, ``msd_rows``, ``window_rows``) return small Polars frames;
* ``claim_text`` words one sweep point's rows; charts (``msd_chart``, ``window_chart``) are pure;
* ``diffusion_part`` puts them together for the page (landscope.report.page).
"""

from __future__ import annotations

import math
from html import escape

import altair as alt
import polars as pl

from landscope.report.base import MAX_ROWS, Section, html_table, query_df, sections_html, sort_points

HEADING = "Diffusion along the minimum"
SERIES_NAMES = {"loss": "full loss", "grad_norm": "gradient norm", "lambda_max": "sharpness λ_max",
                "trace": "Hessian trace", "log_volume": "log-volume proxy", "test_loss": "test loss",
                "param_norm": "parameter norm"}
DRIFTS = ("lambda_max", "trace", "log_volume", "test_loss")  # quoted beside the loss in the paragraph
TABLE_COLUMNS = [
    ("point", "sweep point"), ("run", "run"), ("window", "window (steps)"), ("n_checkpoints", "checkpoints"),
    ("alpha", "MSD exponent α (all lags)"), ("alpha_long", "α at long lags"), ("motion", "motion"),
    ("loss_text", "full loss change"),
    ("lambda_max_text", "λ_max change"), ("trace_text", "trace change"), ("log_volume_text", "log-volume change"),
    ("test_loss_text", "test loss change"), ("diffusion_claim", "diffusion claim"),
    ("flattening_claim", "flattening claim")]
NOTE = """<p class=note>The window starts where the full training loss has settled on its plateau
(<code>diffusion.plateau_tol</code>, <code>start_fraction</code>) and runs to the last checkpoint. The MSD of the
flat parameter vector over lag &tau; grows as &tau;<sup>&alpha;</sup>: &alpha; &asymp; 1 is a random walk
(diffusion), &alpha; &asymp; 0 a converged or bounded cloud, &alpha; &asymp; 2 a steady drift; &alpha; is fitted on
lags up to <code>lag_fraction</code> of the window (its &plusmn; is the scatter about the power law, not a
calibrated interval), and on the upper two octaves of those lags (<i>long lags</i>), which names the motion: a
jitter of the iterates between checkpoints puts a floor under the MSD at short lags that lowers the exponent over
all lags even when the MSD grows steadily at long lags. A change is the straight-line fit's change across the
window relative to the mean there, &plusmn; its standard error widened for the residuals' lag-1 autocorrelation; a
trend counts when it is at least two of them. The loss is flat when it changed by at most <code>flat_tol</code>.
Diffusion claim: flat loss and 0.75 &le; &alpha; &lt; 1.25 at long lags. Flattening claim: flat loss and λ_max
or the trace down, or the log-volume proxy up, significantly.</p>"""


# ----------------------------------------------------------------------------------- queries
def diffusion_rows(con, experiment: str) -> pl.DataFrame:
    """The experiment's diffusion rows with their sweep point, in point and run order."""
    return sort_points(query_df(con, """
        SELECT coalesce(r.point, d.run) AS point, d.* FROM diffusion d
        LEFT JOIN runs r ON r.experiment = d.experiment AND r.run = d.run
        WHERE d.experiment = $experiment ORDER BY point, d.run""", experiment))


def msd_rows(con, experiment: str) -> pl.DataFrame:
    """run, label (run and its exponent), lag, msd, msd_fit (null off the fit) of the experiment."""
    return query_df(con, """
        SELECT m.run, m.run || ' (α = ' || CASE WHEN isfinite(d.exponent) THEN printf('%.2f', d.exponent)
               ELSE '?' END || ', long lags ' || CASE WHEN isfinite(d.exponent_long)
               THEN printf('%.2f', d.exponent_long) ELSE '?' END || ')' AS label, m.lag, m.msd,
               CASE WHEN m.in_fit THEN m.msd_fit END AS msd_fit
        FROM diffusion_msd m JOIN diffusion d ON d.experiment = m.experiment AND d.run = m.run
        WHERE m.experiment = $experiment AND m.msd > 0 ORDER BY m.run, m.lag""", experiment)


def window_rows(con, experiment: str) -> pl.DataFrame:
    """run, series, step, value: the full loss, gradient norm, test loss (snapshots) and lambda_max (curvature)
    at the checkpoints of each run's window, thinned to MAX_ROWS rows."""
    df = query_df(con, """
        WITH w AS (SELECT run, start_step, end_step FROM diffusion
                   WHERE experiment = $experiment AND start_step IS NOT NULL),
        src AS (
            SELECT s.run, s.step, x.series, x.value FROM snapshots s JOIN w USING (run),
                LATERAL (VALUES ('full loss', s.full_loss), ('gradient norm', s.full_grad_norm),
                                ('test loss', s.test_loss)) AS x(series, value)
            WHERE s.experiment = $experiment AND s.step BETWEEN w.start_step AND w.end_step
            UNION ALL
            SELECT c.run, c.step, 'sharpness λ_max', c.lambda_max FROM curvature c JOIN w USING (run)
            WHERE c.experiment = $experiment AND c.step BETWEEN w.start_step AND w.end_step)
        SELECT run, series, step, value FROM src WHERE value IS NOT NULL AND isfinite(value)
        ORDER BY series, run, step""", experiment)
    every = math.ceil(df.height / MAX_ROWS) if df.height else 1
    return df.gather_every(every) if every > 1 else df


# ----------------------------------------------------------------------------------- words
def _pct(x, se=None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    out = f"{100 * x:+.1f} %".replace("-", "−")
    return out + (f" ± {100 * se:.1f} %" if se is not None and math.isfinite(se) else "")


def change_text(row: dict, name: str) -> str:
    """'−3.1 % ± 2.0 % (decreased)' for one series of a diffusion row; 'not measured' without it."""
    if row.get(f"{name}_trend") in (None, "not measured"):
        return "not measured"
    return f"{_pct(row[f'{name}_rel_change'], row[f'{name}_rel_change_se'])} ({row[f'{name}_trend']})"


def _span(values, fmt: str) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    lo, hi = min(vals), max(vals)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}–{format(hi, fmt)}"


def _count(rows: list[dict], key: str, prefix: str) -> int:
    return sum(1 for r in rows if str(r.get(key) or "").startswith(prefix))


def claim_text(point: str, rows: list[dict]) -> str:
    """One paragraph (HTML) on one sweep point's runs: window, exponent, loss, parameter motion, the drifts of
    sharpness, trace, log-volume proxy and test loss, and how many runs bear out each of the essay's claims."""
    n = len(rows)
    done = [r for r in rows if r.get("exponent") is not None and math.isfinite(r["exponent"])]
    head = f"<b>{escape(point)}</b> ({n} run{'s' if n != 1 else ''}): "
    if not done:
        notes = "; ".join(sorted({str(r.get("note")) for r in rows}))
        return f"<p>{head}no exponent: {escape(notes)}.</p>"
    longs = [r["exponent_long"] for r in done]
    floor = ", lower: the jitter between checkpoints sets a floor under the MSD at short lags"
    motions = ", ".join(f"{m} in {sum(1 for r in done if r['motion'] == m)}"
                        for m in dict.fromkeys(r["motion"] for r in done))
    parts = [
        f"after the loss plateau (steps {_span([r['start_step'] for r in done], ',d')} to "
        f"{_span([r['end_step'] for r in done], ',d')}, {_span([r['n_checkpoints'] for r in done], 'd')} "
        f"checkpoints) the MSD grows at long lags with exponent α = {_span(longs, '.2f')} over runs (fit scatter "
        f"± {_span([r['exponent_long_se'] for r in done], '.2f')}): {motions} (α ≈ 1 a random walk, α ≈ 0 "
        f"converged, α ≈ 2 a drift). Over all fitted lags α = {_span([r['exponent'] for r in done], '.2f')}"
        f"{floor if all(r['exponent'] < a - 0.1 for r, a in zip(done, longs)) else ''}.",
        f"The full loss changed by {', '.join(_pct(r['loss_rel_change'], r['loss_rel_change_se']) for r in done)} "
        f"across the window (flat in {_count(done, 'loss_trend', 'flat')} of {len(done)}) while the parameters "
        f"moved ‖x_end − x_start‖ = {_span([r['displacement'] for r in done], '.3g')} at a parameter norm of "
        f"{_span([r['param_norm_mean'] for r in done], '.3g')}.",
    ]
    drifts = []
    for name in DRIFTS:
        measured = [r for r in done if r.get(f"{name}_trend") not in (None, "not measured")]
        if not measured:
            continue
        trends = ", ".join(f"{t} in {sum(1 for r in measured if r[f'{name}_trend'] == t)}"
                           for t in dict.fromkeys(r[f"{name}_trend"] for r in measured))
        changes = ", ".join(_pct(r[f"{name}_rel_change"], r[f"{name}_rel_change_se"]) for r in measured)
        drifts.append(f"{SERIES_NAMES[name]} {changes} ({trends})")
    if drifts:
        parts.append("Over the same window: " + "; ".join(drifts) + ".")
    held = _count(done, "diffusion_claim", "held")
    flat_held, flat_contra = _count(done, "flattening_claim", "held"), _count(done, "flattening_claim", "contradicted")
    parts.append(f"The essay's diffusion claim held in {held} of {n} runs; its flattening claim held in "
                 f"{flat_held} and was contradicted in {flat_contra} of {n} "
                 f"(the rest: {escape(_rest(done, 'flattening_claim'))}).")
    return f"<p>{head}" + " ".join(parts) + "</p>"


def _rest(rows: list[dict], key: str) -> str:
    rest = [str(r[key]) for r in rows if not str(r[key]).startswith(("held", "contradicted"))]
    return ", ".join(f"{v} in {rest.count(v)}" for v in dict.fromkeys(rest)) or "none"


def run_table(rows: pl.DataFrame) -> pl.DataFrame:
    """The per-run table: window, exponent ± se, motion, each change with its trend, the claims."""
    out = []
    for r in rows.iter_rows(named=True):
        ok = r["exponent"] is not None and math.isfinite(r["exponent"])
        out.append({"point": r["point"], "run": r["run"], "n_checkpoints": r["n_checkpoints"],
                    "window": f"{r['start_step']:,d}–{r['end_step']:,d}" if ok else r["note"],
                    "alpha": f"{r['exponent']:.3f} ± {r['exponent_se']:.3f}" if ok else "n/a",
                    "alpha_long": f"{r['exponent_long']:.3f} ± {r['exponent_long_se']:.3f}" if ok else "n/a",
                    "motion": r["motion"], "diffusion_claim": r["diffusion_claim"],
                    "flattening_claim": r["flattening_claim"],
                    **{f"{s}_text": change_text(r, s) for s in ("loss", *DRIFTS)}})
    return pl.DataFrame(out)


# ----------------------------------------------------------------------------------- charts
def msd_chart(df: pl.DataFrame) -> alt.Chart:
    """MSD over lag on log-log axes, one colour per run (legend: its exponent); dashed: the fitted power law."""
    base = alt.Chart(df).encode(
        x=alt.X("lag:Q", scale=alt.Scale(type="log"), title="lag τ (steps)"),
        color=alt.Color("label:N", title="run (fitted α)"))
    pts = base.mark_line(point=True).encode(
        y=alt.Y("msd:Q", scale=alt.Scale(type="log"), title="MSD ‖x(t+τ) − x(t)‖²"),
        tooltip=["label:N", "lag:Q", alt.Tooltip("msd:Q", format=".4g")])
    fit = base.transform_filter("isValid(datum.msd_fit)").mark_line(strokeDash=[6, 4], opacity=0.7).encode(
        y="msd_fit:Q")
    return alt.layer(pts, fit).properties(title="Mean squared displacement after the plateau", width=460,
                                         height=280)


def window_chart(df: pl.DataFrame) -> alt.Chart:
    """The window's loss, gradient norm, test loss and sharpness per run, one panel each (own y scales)."""
    return alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title="run"),
        tooltip=["run:N", "series:N", "step:Q", alt.Tooltip("value:Q", format=".4g")],
    ).properties(width=220, height=150).facet(facet=alt.Facet("series:N", title=None), columns=2).resolve_scale(
        y="independent").properties(title="Over the window: loss, gradient norm, test loss, sharpness")


# ----------------------------------------------------------------------------------- the part
def diffusion_part(con, experiment: str) -> tuple[str, list[Section]]:
    """The section's HTML (heading, one paragraph per sweep point, note, per-run table, charts) and its
    charted sections (ids diffusiona, diffusionb: the page places them as they are), or ('', []) when the
    experiment has no diffusion rows."""
    rows = diffusion_rows(con, experiment)
    if rows.is_empty():
        return "", []
    text = "".join(claim_text(p, rows.filter(pl.col("point") == p).to_dicts())
                   for p in dict.fromkeys(rows["point"].to_list()))
    msd, window = msd_rows(con, experiment), window_rows(con, experiment)
    sections = [Section("MSD over lag", msd_chart(msd) if not msd.is_empty() else None,
                        "Points: the MSD of each run's checkpoints after its plateau; dashed: c τ^α on the fitted lags",
                        id="diffusiona"),
                Section("Over the window", window_chart(window) if not window.is_empty() else None,
                        "The checkpoints of each run's window (sharpness where curvature is measured)",
                        id="diffusionb")]
    table = run_table(rows)
    charted = [s for s in sections if s.chart is not None]
    return (f"<h2 id=diffusion>{HEADING}</h2>{text}{NOTE}"
            + html_table(table, TABLE_COLUMNS, {c: "small" for c, _ in TABLE_COLUMNS[7:]}) + sections_html(sections),
            charted)
