"""The "Table 2" page: how the smallest feasible constants and the non-vanishing term move along
sweeps of width, channels, depth, batch size, optimizer and model, beside what the paper claims
(landscope.report.claims).

* ``sequence_rows`` queries condition_summary for one sequence's points, in sequence order;
* ``directions`` compares what the sequence does with the claim, per quantity;
* ``write_table2(results, sequences, out_html)`` writes the page: per sequence its values, directions and chart.
"""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl

from landscope import store
from landscope.report import base
from landscope.report.claims import (
    FOLLOWS_LOSS,
    NA,
    RTOL,
    TABLE2_KEYS,
    agreement,
    classify_direction,
    optimizer_ordering,
    ordering_agrees,
)


def sequence_rows(con, seq: dict) -> pl.DataFrame:
    """condition_summary of the sequence's points, in sequence order, with its sweep value."""
    df = con.sql("SELECT * FROM condition_summary WHERE experiment = $e",
                 params={"e": seq["experiment"]}).pl()
    pos = {p: i for i, p in enumerate(seq["points"])}
    df = df.filter(pl.col("point").is_in(list(pos)))
    if df.is_empty():
        return df
    value = dict(zip(seq["points"], seq["values"]))
    return (df.with_columns(_pos=pl.col("point").replace_strict(pos, return_dtype=pl.Int64),
                            value=pl.col("point").replace_strict(value, return_dtype=pl.String))
            .sort("_pos").drop("_pos"))


def directions(seq: dict, rows: pl.DataFrame, rtol: float = RTOL) -> list[dict]:
    """[quantity, measured, claimed, agrees] for beta_min and the non-vanishing term (and alpha_min)."""
    claim = TABLE2_KEYS[seq["key"]]
    col = (lambda c: rows[c].to_list()) if not rows.is_empty() else (lambda c: [])
    if seq["key"] == "optimizer":
        kinds = dict(zip(seq["values"], seq["kinds"]))
        labels = col("value")
        beta = {"measured": optimizer_ordering(labels, col("beta_min"), rtol), "claimed": claim.beta,
                "agrees": ordering_agrees([kinds[v] for v in labels], col("beta_min"))}
        alpha_claim = NA
    else:
        measured = classify_direction(col("beta_min"), rtol)
        alpha_claim = claim.beta
        shown = claim.beta
        if claim.beta == FOLLOWS_LOSS:
            alpha_claim = classify_direction(col("final_full_loss_mean"), rtol)
            shown = f"{alpha_claim} (as the final loss)"
        beta = {"measured": measured, "claimed": shown, "agrees": agreement(measured, alpha_claim)}
    term = classify_direction(col("nonvanishing_term"), rtol)
    alpha = classify_direction(col("alpha_min"), rtol)
    return [{"quantity": "smallest β", **beta},
            {"quantity": "2βσ²/(α−β) at smallest α", "measured": term, "claimed": claim.term,
             "agrees": agreement(term, claim.term)},
            {"quantity": "smallest α", "measured": alpha, "claimed": alpha_claim,
             "agrees": agreement(alpha, alpha_claim)}]


# ----------------------------------------------------------------------------------- page
VALUE_COLUMNS = [("value", "sweep value"), ("alpha_min", "smallest α"), ("beta_at_alpha_min", "β at smallest α"),
                 ("beta_min", "smallest β"), ("sigma_int_sq", "σ_int²"),
                 ("nonvanishing_term", "2βσ²/(α−β) at smallest α"), ("final_full_loss_mean", "final full loss")]
DIRECTION_COLUMNS = [("quantity", "quantity"), ("measured", "measured along the sweep"),
                     ("claimed", "the paper"), ("agrees", "agrees")]
INTRO = """<p class=note>For every experiment whose sweep varies width, CNN channels, depth, batch
size, optimizer or the model (ResNet18 vs ResNet34): the smallest feasible constants of the
&alpha;-&beta;-condition, &sigma;<sub>int</sub><sup>2</sup> and the non-vanishing term
2&beta;&sigma;<sub>int</sub><sup>2</sup>/(&alpha; &minus; &beta;) of the SGD bound at the smallest
feasible &alpha;, per sweep value in the order of the configuration. <i>Measured</i> directions are
computed (changes within {rtol:.0%} of the largest value count as flat); beside them, what the paper
claims. Runs are scaled down from the paper's (see each experiment's page), so agreement is evidence
at this scale only.</p>"""


def sequence_chart(seq: dict, rows: pl.DataFrame) -> alt.HConcatChart:
    """Smallest beta and the non-vanishing term against the sweep value (config order)."""
    long = rows.select("value", "beta_min", "nonvanishing_term").unpivot(
        index="value", variable_name="quantity", value_name="v").filter(pl.col("v").is_finite())
    panels = []
    for q, title in (("beta_min", "smallest β"), ("nonvanishing_term", "2βσ²/(α−β)")):
        panels.append(alt.Chart(long.filter(pl.col("quantity") == q)).mark_line(point=True).encode(
            x=alt.X("value:O", sort=seq["values"], title=seq["key"]),
            y=alt.Y("v:Q", title=title, scale=alt.Scale(zero=False)),
            tooltip=["value:N", alt.Tooltip("v:Q", format=".4g")]).properties(width=220, height=150, title=title))
    return alt.hconcat(*panels)


def _sequence_html(seq: dict, rows: pl.DataFrame, cid: str) -> str:
    """Heading, claim, values and directions of one sequence, and the <div> of its chart."""
    title = html.escape(seq["title"] or seq["experiment"])
    fig = f" &middot; paper figure {html.escape(str(seq['figure']))}" if seq.get("figure") else ""
    fixed = f" (with {html.escape(seq['fixed'])})" if seq["fixed"] else ""
    head = (f"<h2><a href=\"{html.escape(base.page_href(seq['experiment']))}\">{title}</a></h2>"
            f"<p class=note>experiment <code>{html.escape(seq['experiment'])}</code>{fig}; varies "
            f"<code>{html.escape(seq['key'])}</code>{fixed}. "
            f"{html.escape(TABLE2_KEYS[seq['key']].text)}</p>")
    if rows.is_empty():
        return head + "<p class=note>No condition summary yet.</p>"
    dirs = pl.DataFrame(directions(seq, rows), schema={c: pl.String for c, _ in DIRECTION_COLUMNS})
    return (head + base.html_table(rows, VALUE_COLUMNS) + base.html_table(dirs, DIRECTION_COLUMNS)
            + f"<div class=chart id='{cid}'></div>")


def write_table2(results: str | Path, sequences: list[dict], out_html: str | Path,
                 rtol: float = RTOL) -> Path:
    """Write reports/table2.html: one table, directions and chart per sweep sequence."""
    con = store.connect(results)
    try:
        data = [(seq, sequence_rows(con, seq)) for seq in sequences]
    finally:
        con.close()
    parts = ["<p><a href='index.html'>&larr; all experiments</a></p>",
             "<h1>Table 2: constants along width, depth, batch size, optimizer and model</h1>",
             INTRO.format(rtol=rtol)]
    charts = []
    for i, (seq, rows) in enumerate(data):
        cid = "table" + base.letters(i)
        parts.append(_sequence_html(seq, rows, cid))
        if not rows.is_empty():
            charts.append(base.Section(f"{seq['experiment']}: {seq['key']}", sequence_chart(seq, rows), id=cid))
    if not sequences:
        parts.append("<p class=note>No experiment of this study varies width, channels, depth, batch "
                     "size, optimizer or model.</p>")
    return base.write_html(out_html, base.html_page("Table 2", "\n".join(parts), charts))
