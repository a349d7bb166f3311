"""The "Table 2" page: how the smallest feasible constants and the non-vanishing term move along
sweeps of width, channels, depth, batch size, optimizer and model, beside what the paper claims.

Three layers, each usable alone:

* ``sweep_sequences(exp)`` turns an ExperimentSpec into JSON-able sequences: one per swept key of
  ``TABLE2_KEYS`` and per combination of the experiment's other sweep values, points in config order;
* ``classify_direction`` / ``optimizer_ordering`` / ``agreement`` say what a sequence of numbers
  does (``rises``, ``falls``, ``rises then falls``, ...) and whether that matches the claim;
* ``write_table2(results, sequences, out_html)`` queries condition_summary and writes the page.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import polars as pl

from landscope import store
from landscope.report import base

RTOL = 0.05  # changes within RTOL * max|value| of a sequence count as flat
RISES, FALLS, FLAT, MIXED, NA = "rises", "falls", "flat", "mixed", "n/a"
RISES_FALLS, FALLS_RISES = "rises then falls", "falls then rises"
OPTIMIZER_CLAIM = ("adam", "sgdm", "sgd")  # the paper: Adam < SGDM < SGD (smallest beta first)
FOLLOWS_LOSS = "follows the final loss"


@dataclass(frozen=True)
class Claim:
    """What the paper says happens along one kind of sweep."""

    beta: str  # claimed direction of the smallest feasible beta (or OPTIMIZER_CLAIM / FOLLOWS_LOSS)
    term: str  # claimed direction of the non-vanishing term 2 beta sigma_int^2 / (alpha - beta)
    text: str  # the claim in words, with where it comes from


_WIDTH = Claim(RISES_FALLS, FALLS, "Minimal feasible α, β rise from small to medium width, then fall as "
               "the model grows (Figs. 4, 5, 11-14); Table 2: βσ²_int decreases with width.")
TABLE2_KEYS: dict[str, Claim] = {
    "model.width": _WIDTH,
    "model.channels": _WIDTH,
    "model.depth": Claim(FALLS, FALLS, "α, β fall with depth; Table 2: βσ²_int decreases with depth."),
    "batch_size": Claim(FALLS, FALLS, "α, β fall with batch size (Figs. 6, 15); Table 2: βσ²_int decreases "
                        "with batch size."),
    "optimizer": Claim("Adam < SGDM < SGD", NA, "Smallest feasible β: Adam < SGDM < SGD (Fig. 16); "
                       "the paper states no ordering of the non-vanishing term."),
    "model.name": Claim(FOLLOWS_LOSS, FALLS, "Larger models with higher final loss need larger α, β "
                        "(Fig. 17); Table 2: βσ²_int decreases with depth (ResNet18 → ResNet34)."),
}


# ----------------------------------------------------------------------------------- directions
def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def classify_direction(values, rtol: float = RTOL) -> str:
    """What a sequence does along the sweep: rises, falls, rises then falls, falls then rises,
    flat or mixed. Missing and non-finite entries are dropped; a step smaller than
    ``rtol * max|value|`` counts as no change; fewer than two values give ``n/a``."""
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}; pass a relative tolerance such as 0.05")
    v = _finite(values)
    if len(v) < 2:
        return NA
    tol = rtol * max(abs(x) for x in v)
    signs = [1 if b - a > tol else -1 for a, b in zip(v, v[1:]) if abs(b - a) > tol]
    runs = [s for i, s in enumerate(signs) if i == 0 or s != signs[i - 1]]
    return {(): FLAT, (1,): RISES, (-1,): FALLS, (1, -1): RISES_FALLS,
            (-1, 1): FALLS_RISES}.get(tuple(runs), MIXED)


def optimizer_kind(section: dict) -> str:
    """adam (Adam, AdamW, NAdamW), sgdm (SGD with momentum, normalized SGD-M) or the optimizer's name."""
    name = str(section.get("name", ""))
    if name in ("adam", "adamw", "nadamw"):
        return "adam"
    if name == "nsgdm" or (name == "sgd" and float(section.get("momentum") or 0) > 0):
        return "sgdm"
    return name


def optimizer_ordering(labels: list[str], values, rtol: float = RTOL) -> str:
    """The labels sorted by value, smallest first: 'adam < sgdm < sgd' ('≈' within tolerance)."""
    pairs = sorted(((float(v), str(lab)) for lab, v in zip(labels, values)
                    if v is not None and math.isfinite(float(v))))
    if len(pairs) < 2:
        return NA
    tol = rtol * max(abs(v) for v, _ in pairs)
    text = pairs[0][1]
    for (a, _), (b, lab) in zip(pairs, pairs[1:]):
        text += (" ≈ " if b - a <= tol else " < ") + lab
    return text


def ordering_agrees(kinds: list[str], values, claim: tuple[str, ...] = OPTIMIZER_CLAIM) -> str | None:
    """'yes' when every pair of kinds ranked by ``claim`` is ordered that way by value, 'no' when
    some pair is reversed, None when fewer than two claimed kinds were measured."""
    ranked = [(claim.index(k), float(v)) for k, v in zip(kinds, values)
              if k in claim and v is not None and math.isfinite(float(v))]
    if len({r for r, _ in ranked}) < 2:
        return None
    ok = all(va < vb for ra, va in ranked for rb, vb in ranked if ra < rb)
    return "yes" if ok else "no"


def agreement(measured: str, claimed: str) -> str | None:
    """'yes' (same), 'partly' (one side of a claimed rise-then-fall), 'no', or None (nothing to compare)."""
    if NA in (measured, claimed):
        return None
    if measured == claimed:
        return "yes"
    if claimed == RISES_FALLS and measured in (RISES, FALLS):
        return "partly"
    return "no"


# ----------------------------------------------------------------------------------- sequences
def _label(value) -> str:
    """A sweep value as it appears in points: the label of a mapping, else the value itself."""
    return value["label"] if isinstance(value, dict) else str(value)


def sweep_sequences(exp) -> list[dict]:
    """JSON-able sequences of one ExperimentSpec: for each swept key of TABLE2_KEYS and each
    combination of the other sweep values, the points in the order the config lists the values."""
    out = []
    for key in (k for k in exp.sweep_keys if k in TABLE2_KEYS):
        values = exp.raw["sweep"][key]
        labels = [_label(v) for v in values]
        kinds = {_label(v): optimizer_kind(v) for v in values if isinstance(v, dict)} if key == "optimizer" else {}
        groups: dict[tuple, dict[str, str]] = {}
        for r in exp.runs:
            fixed = tuple((k, str(v)) for k, v in r.sweep.items() if k != key)
            groups.setdefault(fixed, {})[str(r.sweep[key])] = r.point
        for fixed, by_value in groups.items():
            order = [lab for lab in labels if str(lab) in by_value]
            out.append({"experiment": exp.name, "title": exp.title, "figure": exp.raw.get("figure"),
                        "key": key, "fixed": ", ".join(f"{k.split('.')[-1]}={v}" for k, v in fixed),
                        "values": [str(lab) for lab in order], "points": [by_value[str(lab)] for lab in order],
                        "kinds": [kinds.get(str(lab), str(lab)) for lab in order]})
    return out


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


def _section(seq: dict, rows: pl.DataFrame, cid: str) -> str:
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
        parts.append(_section(seq, rows, cid))
        if not rows.is_empty():
            charts.append((cid, sequence_chart(seq, rows)))
    if not sequences:
        parts.append("<p class=note>No experiment of this study varies width, channels, depth, batch "
                     "size, optimizer or model.</p>")
    return base.write_html(out_html, base.html_page("Table 2", "\n".join(parts), charts))
