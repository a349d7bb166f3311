"""reports/index.html: every experiment of the study linked, with one line saying which classical conditions
hold and one verdict row per sweep point (plain HTML, no JavaScript)."""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from landscope import store
from landscope.report.base import html_page, html_table, page_href, write_html
from landscope.report.conditions import condition_summary
from landscope.report.promises import condition_verdicts, holds_line
from landscope.report.semantics import with_quoted

VERDICT_COLUMNS = [
    ("point", "sweep point"), ("ab", "some (α, β) works"), ("alpha_min", "smallest α"),
    ("beta_at_alpha_min", "β there"), ("beta_min", "smallest β"), ("nonvanishing_term", "min 2βσ²/(α−β)"),
    ("term_pair", "at (α, β)"), ("n_seeds", "seeds"), ("alpha_spread", "smallest α per seed"),
    ("pl_log10_mu_min", "log10 PL μ (min)"), ("aiming_min", "Aiming min"), ("aiming", "Aiming"),
    ("sampling", "full-batch points"), ("final_full_loss_mean", "final loss")]


def verdicts(con, experiment: str) -> pl.DataFrame:
    """One verdict row per point: feasibility (and which constraint sets the smallest pair where it is not the
    data), smallest constants, the non-vanishing term, the seed spread, PL, Aiming (worded by how densely it
    was sampled), final loss."""
    df = with_quoted(condition_summary(con, experiment))
    if df.is_empty():
        return df
    set_by = pl.col("binding_text")
    if "binding" in df.columns:
        yes = (pl.when(pl.col("binding").is_not_null() & (pl.col("binding") != "data") & set_by.is_not_null())
               .then(pl.lit("yes, ") + set_by).otherwise(pl.lit("yes")))
    else:
        yes = pl.lit("yes")
    return df.with_columns(ab=pl.when(pl.col("n_runs") == 0).then(pl.lit("no measured run (diverged?)"))
                           .when(pl.col("feasible")).then(yes).otherwise(pl.lit("no")))


INDEX_INTRO = """<p class=note>Does the loss landscape along these training runs satisfy the
&alpha;-&beta;-condition (pairs with &alpha; &ge; &beta; + margin, T &ge; 0 at every replayed step of every
seed), PL and Aiming, and with which constants? One row per sweep point. A negative Aiming minimum
means Aiming fails somewhere along the trajectory; where the full batch was not measured at every step, the
verdict reads &ldquo;holds at the N measured points&rdquo; (N per run; spacing in the next column).
log<sub>10</sub> PL &mu; is the admissible PL constant (very negative: PL says little; the paper's axis
is log<sub>10</sub> 2&mu;, 0.301 higher). Where the margin line &alpha; = &beta; + margin, &beta; &ge; 0 or their
corner, not the data, sets the smallest pair, the verdict says so: those constants are a convention. The
non-vanishing term is its minimum over the feasible region, at the pair shown; the constants are the min over
all seeds, with the range of the smallest &alpha; over the seeds beside them. Each experiment's page has the
heatmaps, curves, margin sensitivity and per-run constants.</p>"""
# The study-wide pages the index links above the experiments ({relative href: text}), for write_index's links.
STUDY_PAGES = {"table2.html": "Table 2: constants along width, depth, batch size, optimizer and model",
               "generalization.html": "Which measures predict generalization: Kendall τ of each measure at x_K "
                                      "against the generalization gap"}
CONDITIONS_PREFIX = ("<b>Classical conditions</b> along the trajectories (α-β on each step's mini-batch, the "
                     "others on the full batch; all seeds together) &mdash; ")


def conditions_html(line: str) -> str:
    """The experiment's line on which classical conditions hold (from ``holds_line``), or a note without
    condition_constants rows."""
    if not line:
        return "<p class=note>Classical conditions: not measured in these results.</p>"
    return f"<p class=conditions>{CONDITIONS_PREFIX}{html.escape(line)}.</p>"


def write_index(results: str | Path, experiments: list[str], out_html: str | Path,
                skipped: dict[str, str] | None = None, links: dict[str, str] | None = None) -> Path:
    """The index page (plain HTML, no JavaScript): every experiment linked, with its verdicts;
    ``links`` ({relative href: text}) lists study-wide pages such as table2.html first."""
    con = store.connect(results)
    try:
        tables = {exp: verdicts(con, exp) for exp in experiments}
        lines = {exp: holds_line(condition_verdicts(con, exp)) for exp in experiments}
    finally:
        con.close()
    parts = ["<h1>landscope reports</h1>", INDEX_INTRO]
    if links:
        items = "".join(f"<li><a href=\"{html.escape(href)}\">{html.escape(text)}</a></li>"
                        for href, text in links.items())
        parts.append(f"<ul class=pages>{items}</ul>")
    for exp, df in tables.items():
        parts.append(f"<h2><a href=\"{html.escape(page_href(exp))}\">{html.escape(exp)}</a></h2>")
        parts.append(conditions_html(lines[exp]))
        parts.append(html_table(df, VERDICT_COLUMNS) if not df.is_empty()
                     else "<p class=note>No condition summary yet.</p>")
    if skipped:
        items = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(str(v))}</li>"
                        for k, v in sorted(skipped.items()))
        parts.append(f"<h2>Skipped experiments</h2><ul>{items}</ul>")
    return write_html(out_html, html_page("landscope reports", "\n".join(parts)))
