"""The "Table 2" page: how the smallest feasible constants and the non-vanishing term move along
sweeps of width, channels, depth, batch size, optimizer and model, beside what the paper claims
(landscope.report.claims).

* ``sequence_rows`` queries condition_summary for one sequence's points, in sequence order, with the seed
  spread of the smallest beta from seed_conditions;
* ``directions`` compares what the sequence does with the claim, per quantity: "undetermined at this scale"
  where a constraint sets a point's smallest pair, "not resolved with N seeds" where a step does not exceed
  the seed spread;
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
    MIN_SEEDS,
    NA,
    PAIR_CONVENTION,
    RTOL,
    TABLE2_KEYS,
    TERM_CONVENTION,
    UNDETERMINED,
    agreement,
    classify_direction,
    constrained_points,
    not_resolved,
    optimizer_ordering,
    ordering_resolved,
    spread_direction,
)
from landscope.report.semantics import spread_text, with_quoted


def sequence_rows(con, seq: dict) -> pl.DataFrame:
    """condition_summary of the sequence's points, in sequence order, with its sweep value and the smallest
    beta's seed spread (beta_min_seed_lo/hi: min and max over the point's runs in seed_conditions)."""
    df = con.sql("""SELECT s.*, b.beta_min_seed_lo, b.beta_min_seed_hi FROM condition_summary s
                    LEFT JOIN (SELECT point, min(beta_min) AS beta_min_seed_lo, max(beta_min) AS beta_min_seed_hi
                               FROM seed_conditions WHERE experiment = $e AND isfinite(beta_min)
                               GROUP BY point) b USING (point)
                    WHERE s.experiment = $e""", params={"e": seq["experiment"]}).pl()
    pos = {p: i for i, p in enumerate(seq["points"])}
    df = df.filter(pl.col("point").is_in(list(pos)))
    if df.is_empty():
        return df
    value = dict(zip(seq["points"], seq["values"]))
    return (df.with_columns(_pos=pl.col("point").replace_strict(pos, return_dtype=pl.Int64),
                            value=pl.col("point").replace_strict(value, return_dtype=pl.String))
            .sort("_pos").drop("_pos"))


def _n_seeds(rows: pl.DataFrame) -> int:
    """The fewest seeds behind any point of the sequence (n_seeds, else n_runs where n_seeds is missing)."""
    n = [s if s is not None else r for s, r in zip(rows["n_seeds"].to_list(), rows["n_runs"].to_list())]
    return min((int(x) for x in n if x is not None), default=0)


QUANTITIES = {"beta_min": "smallest β", "nonvanishing_term": "min 2βσ²/(α−β)", "alpha_min": "smallest α"}


def directions(seq: dict, rows: pl.DataFrame, rtol: float = RTOL) -> list[dict]:
    """[quantity, measured, claimed, agrees] for beta_min, the non-vanishing term and alpha_min.

    A verdict is reached in this order:
    1. when the constraints, not the data, set a quantity at some point of the sequence, it is a convention
       there: "undetermined at this scale", and ``measured`` names how many points are so. For the smallest
       alpha and beta that is the corner (alpha, beta) = (margin, 0) (``binding`` corner; on the margin line
       a step row still chooses beta); for the term, its pair on the margin line (``nonvanishing_binding``
       margin or corner: the term then moves with the margin);
    2. else a direction is called from the seed intervals [seed_lo, seed_hi] (min and max over the point's
       runs): a step between consecutive sweep values counts only when the two intervals do not overlap
       (``claims.spread_direction``); when some step's intervals overlap, or fewer than ``MIN_SEEDS`` seeds
       were run, the verdict is "not resolved with N seeds" (N: the fewest seeds of any point) and
       ``measured`` shows the direction of the quoted values (min over all seeds) for information;
    3. else the direction is compared with the claim (``claims.agreement``, ``claims.ordering_resolved``).
    The final loss that the model sweep's claim follows has no seed spread; it is classified within ``rtol``.
    """
    claim = TABLE2_KEYS[seq["key"]]
    def col(c):  # a column older tables lack reads as missing
        return rows[c].to_list() if c in rows.columns else [None] * rows.height
    n_seeds = _n_seeds(rows) if not rows.is_empty() else 0
    fixed_pair = constrained_points(col("point"), col("binding"), PAIR_CONVENTION)
    fixed_term = constrained_points(col("point"), col("nonvanishing_binding"), TERM_CONVENTION)
    optimizer = seq["key"] == "optimizer"
    claimed = {"beta_min": claim.beta, "nonvanishing_term": claim.term, "alpha_min": claim.beta}
    shown = dict(claimed)
    if optimizer:
        claimed["alpha_min"] = shown["alpha_min"] = NA
    elif claim.beta == FOLLOWS_LOSS:
        loss = classify_direction(col("final_full_loss_mean"), rtol)
        claimed["beta_min"] = claimed["alpha_min"] = shown["alpha_min"] = loss
        shown["beta_min"] = f"{loss} (as the final loss)"
    out = []
    for q, label in QUANTITIES.items():
        intervals = list(zip(col(f"{q}_seed_lo"), col(f"{q}_seed_hi")))
        if optimizer and q == "beta_min":
            kinds = dict(zip(seq["values"], seq["kinds"]))
            measured = optimizer_ordering(col("value"), col(q), rtol)
            agrees = ordering_resolved([kinds[v] for v in col("value")], intervals, n_seeds)
        else:
            measured = spread_direction(intervals, n_seeds)
            agrees = agreement(measured, claimed[q])
            if measured == not_resolved(n_seeds):
                naive = classify_direction(col(q), rtol)
                measured, agrees = f"{naive} (within the seed spread)", (None if claimed[q] == NA else measured)
        fixed = fixed_term if q == "nonvanishing_term" else fixed_pair
        if fixed and agrees is not None:
            measured, agrees = f"{len(fixed)} of {rows.height} points set by a constraint", UNDETERMINED
        out.append({"quantity": label, "measured": measured, "claimed": shown[q], "agrees": agrees})
    return out


# ----------------------------------------------------------------------------------- page
VALUE_COLUMNS = [("value", "sweep value"), ("n_seeds", "seeds"), ("alpha_min", "smallest α"),
                 ("alpha_spread", "smallest α per seed"), ("beta_at_alpha_min", "β at smallest α"),
                 ("binding_text", "smallest pair"), ("beta_min", "smallest β"), ("beta_spread", "smallest β per seed"),
                 ("sigma_int_sq", "σ_int²"), ("nonvanishing_term", "min 2βσ²/(α−β)"), ("term_pair", "at (α, β)"),
                 ("term_spread", "min 2βσ²/(α−β) per seed"), ("final_full_loss_mean", "final full loss")]
DIRECTION_COLUMNS = [("quantity", "quantity"), ("measured", "measured along the sweep"),
                     ("claimed", "the paper"), ("agrees", "agrees")]
INTRO = """<p class=note>For every experiment whose sweep varies width, CNN channels, depth, batch
size, optimizer or the model (ResNet18 vs ResNet34): the smallest feasible constants of the
&alpha;-&beta;-condition, &sigma;<sub>int</sub><sup>2</sup> and the non-vanishing term
2&beta;&sigma;<sub>int</sub><sup>2</sup>/(&alpha; &minus; &beta;) of the SGD bound (its minimum over the
feasible region, with the pair that attains it), per sweep value in the order of the configuration. Each
constant is the paper's min over all seeds; beside it, its range over the seeds, each run computed alone.
<b>How a direction is called.</b> (1) When the constraints, not the data, set a quantity at some point, that
quantity is <i>undetermined at this scale</i> along the sequence: a convention, neither agreement nor
disagreement. The smallest &alpha; and &beta; are so at the corner (&alpha;, &beta;) = (margin, 0); the term
is so where its pair lies on the margin line (it then moves with the margin). (2) Otherwise a step between consecutive sweep values
counts as a rise or a fall only when the two values' seed intervals [min, max over seeds] do not overlap;
when some step's intervals overlap, or fewer than {min_seeds} seeds were run, the direction is <i>not
resolved with N seeds</i> (N: the fewest seeds of any point), and the direction of the quoted values is
shown for information only. (3) Otherwise the measured direction is compared with the paper's claim. The
final loss that the model sweep's claim follows is compared within {rtol:.0%} of its largest value. Runs are
scaled down from the paper's (see each experiment's page), so agreement is evidence at this scale only.</p>"""


def sequence_chart(seq: dict, rows: pl.DataFrame) -> alt.HConcatChart:
    """Smallest beta and the non-vanishing term against the sweep value (config order)."""
    long = rows.select("value", "beta_min", "nonvanishing_term").unpivot(
        index="value", variable_name="quantity", value_name="v").filter(pl.col("v").is_finite())
    panels = []
    for q, title in (("beta_min", "smallest β"), ("nonvanishing_term", "min 2βσ²/(α−β)")):
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
    shown = with_quoted(rows).with_columns(beta_spread=pl.Series([
        spread_text(lo, hi) for lo, hi in zip(rows["beta_min_seed_lo"], rows["beta_min_seed_hi"])], dtype=pl.String))
    return (head + base.html_table(shown, VALUE_COLUMNS) + base.html_table(dirs, DIRECTION_COLUMNS)
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
             INTRO.format(rtol=rtol, min_seeds=MIN_SEEDS)]
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
