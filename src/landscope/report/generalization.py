"""reports/generalization.html: which measures at x_K rank the generalization gap across a study's runs.

Reads the two study-level tables that landscope.measures.generalization writes (generalization_runs: one row
per run; generalization_measures: Kendall tau per measure and scope) and writes one page:

* ``summary_html``: what the numbers say, in words: which measures rank the gap over the whole study, whether
  the flat-minima claim (lower λ_max / trace / LLC, larger volume / radius → smaller gap) held, and what the
  numbers rest on (runs with a gap at x_K; the runs left out, named, and why);
* ``tau_html``: the tau table (measure, scope, runs, tau with its bootstrap interval, granulated Psi, verdict);
* ``gap_scatter``: the gap against each measure, one point per run coloured by experiment, one panel per
  measure with its own x scale;
* ``write_generalization_page(results, out_html)``.
"""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl

from landscope import store
from landscope.measures.generalization import MEASURES, MIN_RUNS_FOR_VERDICT
from landscope.report import base

CLAIM = ("a flatter minimum, with a lower λ_max, trace or LLC or a larger log-volume proxy or sublevel radius, "
         "has a smaller gap")
TAU_COLUMNS = [("label", "measure"), ("scope", "scope"), ("n_runs", "runs"), ("tau", "Kendall τ"),
               ("interval", "bootstrap interval"), ("granulated_psi", "granulated Ψ"),
               ("granulated", "Ψ axes / groups"), ("claim", "claim's sign"), ("verdict", "verdict")]
RUN_COLUMNS = [("experiment", "experiment"), ("run", "run"), ("xk_step", "x_K step"), ("train_loss", "train loss"),
               ("test_loss", "test loss"), ("generalization_gap", "gap"), ("note", "note")]
INTRO = """<p class=note>For every run of the study: the generalization gap at x_K (held-out loss minus full
training loss, from the snapshots table at the minimizer's step) beside each measure landscope has at x_K. Per
measure, Kendall's τ<sub>b</sub> between measure and gap over the runs (+1: the larger the measure, the larger
the gap), with a {level:.0%} bootstrap percentile interval ({n_boot} resamples of the runs), over the whole study
and within each experiment; and Jiang et al.'s granulated Ψ (ICLR 2020, &ldquo;Fantastic generalization measures
and where to find them&rdquo;): per swept hyperparameter, the mean τ over groups of runs of one experiment that
differ in that hyperparameter only, averaged over the hyperparameters. A measure that merely follows one strong
hyperparameter scores on τ, not on Ψ. The study scope pools the experiments: where their gaps differ in scale
(another dataset, another model), its τ mostly ranks the experiments; the per-experiment rows and Ψ do not.
Runs without a finite gap are left out of every τ; &ldquo;runs&rdquo; counts those with both numbers. A verdict on
the claim, or a measure said to rank the gap, needs the interval clear of 0 and at least {min_runs} runs.</p>"""


def _label(measure: str) -> str:
    return MEASURES.get(measure, (measure, None))[0]


def _interval(lo: float | None, hi: float | None) -> str | None:
    return None if lo is None or hi is None else f"[{lo:.3g}, {hi:.3g}]"


def tau_rows(table: pl.DataFrame) -> pl.DataFrame:
    """The table's rows as shown: the study scope first, then each experiment; measures in MEASURES order."""
    if table.is_empty():
        return table
    order = {m: i for i, m in enumerate(MEASURES)}
    rows = []
    for r in table.iter_rows(named=True):
        sign = r["claim_sign"]
        rows.append({**r, "label": _label(r["measure"]), "interval": _interval(r["tau_lo"], r["tau_hi"]),
                     "granulated": f"{r['granulated_axes']} / {r['granulated_groups']}",
                     "claim": {1: "+", -1: "−"}.get(sign, ""), "_scope": (r["scope"] != "study", r["scope"]),
                     "_m": order.get(r["measure"], len(order))})
    rows.sort(key=lambda r: (r["_scope"], r["_m"]))
    return pl.DataFrame([{c: r[c] for c, _ in TAU_COLUMNS} for r in rows])


def tau_html(table: pl.DataFrame) -> str:
    if table.is_empty():
        return "<p class=note>No generalization_measures rows.</p>"
    return base.html_table(tau_rows(table), TAU_COLUMNS, classes={"scope": "l", "verdict": "l", "interval": "l"})


def _quote(r: dict) -> str:
    return f"{_label(r['measure'])} τ = {r['tau']:.2f} {_interval(r['tau_lo'], r['tau_hi'])} (n = {r['n_runs']})"


def summary_html(table: pl.DataFrame, frame: pl.DataFrame) -> str:
    """The page's findings in words, from the study-scope rows and the per-run frame."""
    n_all = frame.height
    has_gap = frame.filter(pl.col("generalization_gap").is_finite()) if n_all else frame
    parts = []
    rest = (f"These numbers rest on {has_gap.height} of {n_all} runs (those with a finite gap at x_K) in "
            f"{frame['experiment'].n_unique() if n_all else 0} experiment(s).")
    out = frame.filter(~pl.col("generalization_gap").is_finite() | pl.col("generalization_gap").is_null())
    if not out.is_empty():
        named = "; ".join(f"{r['experiment']}/{r['run']} ({r['note'] or 'gap not finite'})"
                          for r in out.iter_rows(named=True))
        rest += f" Left out: {named}."
    off = has_gap.filter(~pl.col("gap_at_xk")) if has_gap.height else has_gap
    if not off.is_empty():
        rest += (f" For {off.height} run(s) the gap is taken at a checkpoint that is not x_K itself (see the "
                 "note column below).")
    parts.append(rest)
    study = table.filter(pl.col("scope") == "study") if not table.is_empty() else table
    defined = [r for r in study.iter_rows(named=True) if r["tau"] is not None] if not study.is_empty() else []
    if not defined:
        parts.append("No measure has a defined τ over the study (fewer than 2 runs with both a gap and the "
                     "measure, or a constant side).")
        return "".join(f"<p>{html.escape(p)}</p>" for p in parts)
    ranks = sorted((r for r in defined if r["n_runs"] >= MIN_RUNS_FOR_VERDICT and r["tau_lo"] is not None
                    and (r["tau_lo"] > 0 or r["tau_hi"] < 0)), key=lambda r: -abs(r["tau"]))
    if ranks:
        parts.append(f"Over the whole study, these measures rank the gap (their interval excludes 0, with at "
                     f"least {MIN_RUNS_FOR_VERDICT} runs): " + "; ".join(_quote(r) for r in ranks) + ".")
    else:
        strongest = sorted(defined, key=lambda r: -abs(r["tau"]))[:3]
        parts.append(f"Over the whole study, no measure ranks the gap reliably (an interval clear of 0 over at "
                     f"least {MIN_RUNS_FOR_VERDICT} runs). Largest |τ|: " + "; ".join(map(_quote, strongest)) + ".")
    claim = [r for r in defined if r["claim_sign"] is not None]
    counts = {v: [r for r in claim if r["verdict"] == v]
              for v in ("supports", "contradicts", "unresolved", "too few runs")}
    if not claim:
        held = "cannot be tested here: no flatness measure has a defined τ (curvature disabled, or too few runs)"
    elif len(counts["too few runs"]) == len(claim):
        held = f"cannot be decided here: every flatness measure rests on fewer than {MIN_RUNS_FOR_VERDICT} runs"
    elif counts["supports"] and not counts["contradicts"] and not counts["unresolved"]:
        held = "held on these runs"
    elif counts["contradicts"] and not counts["supports"] and not counts["unresolved"]:
        held = "failed on these runs"
    else:
        held = "is not settled by these runs"
    tally = "; ".join(f"{v}: " + ", ".join(_quote(r) for r in rs) for v, rs in counts.items() if rs)
    parts.append(f"The flat-minima claim ({CLAIM}) {held}. Per measure, {tally}.")
    return "".join(f"<p>{html.escape(p)}</p>" for p in parts)


def gap_scatter(frame: pl.DataFrame) -> alt.FacetChart | None:
    """The gap against each measure at x_K: one point per run, coloured by experiment, one panel per measure
    (independent x scales). None when no run has both a gap and a measure."""
    measures = [m for m in MEASURES if m in frame.columns]
    if frame.is_empty() or not measures:
        return None
    long = (frame.select("experiment", "run", "generalization_gap", *[pl.col(m).cast(pl.Float64) for m in measures])
            .unpivot(index=["experiment", "run", "generalization_gap"], variable_name="measure", value_name="value")
            .filter(pl.col("value").is_finite() & pl.col("generalization_gap").is_finite()))
    if long.is_empty():
        return None
    if long.height > base.MAX_ROWS:  # Altair's inline limit: keep every k-th row, the same runs in each panel
        long = long.gather_every(-(-long.height // base.MAX_ROWS))
    long = long.with_columns(measure=pl.col("measure").replace_strict({m: _label(m) for m in measures}))
    order = [_label(m) for m in measures if _label(m) in set(long["measure"].to_list())]
    point = alt.Chart(long).mark_point(filled=True, size=60).encode(
        x=alt.X("value:Q", title=None, scale=alt.Scale(zero=False)),
        y=alt.Y("generalization_gap:Q", title="gap at x_K", scale=alt.Scale(zero=False)),
        color=alt.Color("experiment:N", title="experiment"),
        tooltip=["experiment:N", "run:N", "measure:N", alt.Tooltip("value:Q", format=".4g"),
                 alt.Tooltip("generalization_gap:Q", format=".4g")]).properties(width=200, height=160)
    return point.facet(facet=alt.Facet("measure:N", sort=order, title=None), columns=4).resolve_scale(x="independent")


def write_generalization_page(results: str | Path, out_html: str | Path) -> Path:
    """Write reports/generalization.html from the generalization_runs and generalization_measures tables."""
    con = store.connect(results)
    try:
        frame = con.sql("SELECT * FROM generalization_runs ORDER BY experiment, run").pl()
        table = con.sql("SELECT * FROM generalization_measures").pl()
    finally:
        con.close()
    level = table["level"][0] if not table.is_empty() else 0.9
    n_boot = table["n_boot"][0] if not table.is_empty() else 0
    chart = gap_scatter(frame)
    sections = [base.Section("Gap against each measure at x_K", chart,
                             "One point per run with a finite gap, coloured by experiment; each panel its own x "
                             "scale.", id="scatter")]
    parts = ["<p><a href='index.html'>&larr; all experiments</a></p>",
             "<h1>Which measures predict generalization</h1>",
             INTRO.format(level=level, n_boot=n_boot, min_runs=MIN_RUNS_FOR_VERDICT),
             "<h2>What it says</h2>", summary_html(table, frame),
             "<h2>Kendall τ between each measure and the gap</h2>", tau_html(table),
             base.sections_html(sections),
             "<h2>Runs</h2>",
             base.html_table(frame, RUN_COLUMNS, classes={"run": "l", "note": "small"}) if not frame.is_empty()
             else "<p class=note>No runs.</p>"]
    return base.write_html(out_html, base.html_page("Which measures predict generalization", "\n".join(parts),
                                                    sections))
