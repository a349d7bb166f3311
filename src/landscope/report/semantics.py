"""The words around an experiment page's numbers: what x_K, f_i* and the measurement modes were (the
"Measurement semantics" box), how to read the heatmaps, the paper figure and scale note, and the phrases
the pages, the index and Table 2 quote beside a number (which constraint sets a pair, the seed spread, how
densely a full-batch verdict was sampled: ``with_quoted``).

``setup_items`` takes the config's choices as the pipeline passes them and falls back on what the results
record, so a page written outside the pipeline says the same.
"""

from __future__ import annotations

import html
import json
import math

import polars as pl

from landscope.report.base import html_cell

HOW_TO_READ = """<p class=note><b>How to read this.</b> Every run is replayed step by step against its
own reference point x<sub>K</sub> (the stand-in for the projection onto the minimizers; which one is
listed per run below: {x_k}). At step k, with mini-batch i<sub>k</sub>, the slack of the
&alpha;-&beta;-condition is T<sub>k</sub>(&alpha;, &beta;) = &lang;&nabla;f<sub>i<sub>k</sub></sub>(x<sub>k</sub>),
x<sub>k</sub> &minus; x<sub>K</sub>&rang; &minus; &alpha;(f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) &minus;
f<sub>i<sub>k</sub></sub>(x<sub>K</sub>)) + &beta;(f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) &minus;
f<sub>i<sub>k</sub></sub>*), from the condition &lang;&nabla;f<sub>i</sub>(x), x &minus; x<sub>p</sub>&rang; &ge;
&alpha;(f<sub>i</sub>(x) &minus; f<sub>i</sub>(x<sub>p</sub>)) &minus; &beta;(f<sub>i</sub>(x) &minus; f<sub>i</sub>*).
Following the paper only pairs with &alpha; &ge; &beta; + margin count; a pair
<i>works</i> when T &ge; 0 at every step of every seed. The <b>heatmaps</b> colour the minimum of T over
all steps and seeds (blue: works, red: violated; the colour saturates so that the sign stays
visible); the black outline is the exact <b>feasible region</b>, a convex polygon clipped to the plotted
box. If (&alpha;, &beta;) works so does (&alpha; + d, &beta; + d). The smallest feasible &alpha; (and the
&beta; there) is a vertex of the region; the summary names the constraint that sets it: a step row (the
data), or, <i>not the data</i>, the margin line &alpha; = &beta; + margin, &beta; &ge; 0, or their corner
(margin, 0), where the number is a convention (see how it moves with the margin below). The non-vanishing
term 2&beta;&sigma;<sub>int</sub><sup>2</sup>/(&alpha; &minus; &beta;) of the SGD bound is quoted as its
minimum over the whole feasible region, with the pair (&alpha;, &beta;) that attains it. Every constant is
the paper's &ldquo;min over all seeds&rdquo; (a pair must work for every seed); beside it, the spread of
the same constant computed for each run alone. The <b>Aiming</b> coefficient is &lang;&nabla;f(x<sub>k</sub>),
x<sub>k</sub> &minus; x<sub>K</sub>&rang;/f(x<sub>k</sub>) on the full batch (negative: Aiming fails there).
The <b>PL</b> panel shows log<sub>10</sub> of the PL constant estimated at each checkpoint with
f* &asymp; f(x<sub>K</sub>); the admissible constant is the minimum over the trajectory. The full-batch
verdicts (PL, Aiming, angle, QCvx) are measured at the steps the configuration's
<code>directions_every</code> picks: each is quoted with the number of measured points per run and their
spacing, and reads &ldquo;holds at the N measured points&rdquo; unless every step was measured. Dropout is
off while measuring; runs are scaled down from the paper's lengths by the configuration.</p>"""


def how_to_read(runs: pl.DataFrame) -> str:
    """The "How to read this" note, naming the x_K methods the runs table records."""
    methods = sorted({m for m in runs["x_k_method"].to_list() if m}) if not runs.is_empty() else []
    return HOW_TO_READ.format(x_k=", ".join(f"<code>{html.escape(m)}</code>" for m in methods) or "not recorded")


MINIMIZER_TEXT = {
    "last": "x<sub>K</sub> = the last iterate (the paper's choice)",
    "best": "x<sub>K</sub> = the checkpoint with the lowest full-batch loss",
    "tail_average": "x<sub>K</sub> = the mean of the parameters of the checkpoints in the last quarter of training",
    "projection": ("x<sub>K</sub> = the exact projection Proj(x<sub>k</sub>, S) of every iterate onto the set "
                   "of minimizers (known for the analytic examples)"),
}
LANGUAGE_MODELS = ("lstm_lm", "transformer_lm")


def model_names(runs: pl.DataFrame) -> list[str]:
    """The distinct model names of a run table (its ``model`` column holds the model's JSON)."""
    names = set()
    for text in runs["model"].to_list() if "model" in runs.columns else []:
        try:
            spec = json.loads(text or "")
        except json.JSONDecodeError:
            spec = text
        names.add(str(spec.get("name")) if isinstance(spec, dict) else str(spec))
    return sorted(n for n in names if n and n != "None")


def has_batchnorm(name: str) -> bool:
    """Whether a built-in model normalises with BatchNorm (the ResNets of landscope.problem.models)."""
    return name.startswith("resnet")


def _f_i_star_text(value) -> str:
    if value == "exact":
        return "f<sub>i</sub>* = the exact per-sample minimum of the loss, computed from the data"
    return (f"f<sub>i</sub>* = {html.escape(str(value))} for every sample (a constant from the configuration; "
            "the paper takes 0 for non-negative losses)")


CONVENTIONS = [
    ("PL: landscope plots and quotes log<sub>10</sub> &mu;, with &mu; the largest constant such that "
    "&frac12;&Vert;&nabla;f(x)&Vert;<sup>2</sup> &ge; &mu;(f(x) &minus; f*)<sup>2/&delta;</sup> at every "
    "checkpoint (&delta; = 2: the usual PL inequality); the paper's "
    "PL axis is log<sub>10</sub> 2&mu;, which is log<sub>10</sub> 2 &asymp; 0.301 higher."),
    ("&beta; = 0 here means quasar-convexity of <i>every mini-batch loss</i> f<sub>i</sub> along the "
    "trajectory (the condition is checked per step on the step's batch), which is stronger than the paper's "
    "quasar-convexity (QCvx) of the full loss f; the QCvx column is measured on the full batch."),
]


def semantics_items(models: list[str], minimizers: list[str], f_i_star: list, f_i_star_mean=None) -> list[str]:
    """The measurement conventions that hold for this experiment, one HTML sentence each."""
    items = [MINIMIZER_TEXT.get(m, f"x<sub>K</sub> method <code>{html.escape(str(m))}</code>") + "."
             for m in minimizers] or ["x<sub>K</sub> choice not recorded."]
    if f_i_star:
        items += [_f_i_star_text(v) + "." for v in f_i_star]
    else:
        mean = f" (mean over the replayed steps: {html_cell(f_i_star_mean)})" if f_i_star_mean is not None else ""
        items.append(f"f<sub>i</sub>* choice not recorded in the results{mean}.")
    items.append("Dropout is switched off while measuring (the trajectory itself trained with it, if any).")
    if any(has_batchnorm(m) for m in models):
        items.append("BatchNorm: the per-step f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) and "
                     "f<sub>i<sub>k</sub></sub>(x<sub>K</sub>) normalise with the statistics of that same "
                     "batch i<sub>k</sub> and never touch the running statistics; the full-batch quantities "
                     "(loss, gradient, angle, Aiming, PL) use evaluation mode, i.e. the running statistics.")
    if any(m in LANGUAGE_MODELS for m in models):
        items.append("Language model: f<sub>i<sub>k</sub></sub>(x<sub>k</sub>) and "
                     "f<sub>i<sub>k</sub></sub>(x<sub>K</sub>) are measured on the same token windows "
                     "(the mini-batch i<sub>k</sub> of step k), the loss being the mean next-token "
                     "cross-entropy of each window.")
    return items + CONVENTIONS


def semantics_html(items: list[str]) -> str:
    """The "Measurement semantics" box."""
    lis = "".join(f"<li>{i}</li>" for i in items)
    return f"<div class=semantics><h2>Measurement semantics</h2><ul>{lis}</ul></div>"


def figure_html(figure: str | None, scale_note: str | None) -> str:
    """The paper figure group and the scale note, escaped."""
    parts = []
    if figure:
        parts.append(f"<p class=figure>Paper figure group: <b>{html.escape(str(figure))}</b></p>")
    if scale_note:
        parts.append(f"<p class=note><b>Scale.</b> {html.escape(str(scale_note))}</p>")
    return "".join(parts)


def setup_items(setup: dict | None, runs: pl.DataFrame, summary: pl.DataFrame) -> list[str]:
    """Measurement-semantics sentences from the config's ``setup`` (models, minimizers, f_i_star),
    falling back on what the results record (the runs table, condition_summary's mean f_i*)."""
    setup = setup or {}
    models = setup.get("models") or model_names(runs)
    minimizers = setup.get("minimizers") or (sorted({m for m in runs["x_k_method"].to_list() if m})
                                             if not runs.is_empty() else [])
    fmean = summary["f_i_star_mean"].drop_nulls() if "f_i_star_mean" in summary.columns else pl.Series([])
    return semantics_items(models, minimizers, setup.get("f_i_star") or [],
                           fmean.mean() if len(fmean) else None)


# ----------------------------------------------------------------------------------- quoted phrases
BINDING_TEXT = {
    "data": "set by the data",
    "margin": "set by the margin, not by the data",
    "beta_nonneg": "set by β ≥ 0, not by the data",
    "corner": "at the corner α = margin, β = 0: set by the constraints, not by the data",
}
# A full-batch verdict about a run quantifies over every iterate; a step that was not measured is an iterate
# it says nothing about (one SGD step can turn Aiming negative between two samples), so any spacing above one
# step is sparse and the verdict is worded as holding at the measured points only.
DENSE_SPACING = 1


def binding_text(binding) -> str | None:
    """Which constraint sets the smallest pair, in words (None when infeasible or not recorded)."""
    return BINDING_TEXT.get(binding, f"set by {binding}") if binding else None


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x) -> str:
    return html.unescape(html_cell(x))


def pair_text(alpha, beta) -> str | None:
    """'(alpha, beta)' in 4 significant digits (None when either is missing)."""
    if any(_missing(v) for v in (alpha, beta)):
        return None
    return f"({_num(alpha)}, {_num(beta)})"


def _on_line(pair: str | None, binding) -> str | None:
    """The term's pair, marked when the margin line holds it (the term then moves with the margin)."""
    if pair is None or binding not in ("margin", "corner"):
        return pair
    return f"{pair}, on the margin line"


def spread_text(lo, hi) -> str | None:
    """The seed spread 'lo – hi' (one number when equal; None when missing)."""
    if any(_missing(v) for v in (lo, hi)):
        return None
    return _num(lo) if lo == hi else f"{_num(lo)} – {_num(hi)}"


def is_sparse(points, spacing) -> bool:
    """Whether the full-batch rows leave steps unmeasured (see DENSE_SPACING); unknown counts as sparse."""
    return points is None or spacing is None or points < 2 or spacing > DENSE_SPACING


def sampling_text(points, spacing) -> str | None:
    """How densely the full-batch verdicts were sampled: 'N per run, every step' or '..., up to S steps apart'."""
    if points is None:
        return None
    if points < 2 or spacing is None:
        return f"{points} per run"
    return f"{points} per run, " + ("every step" if spacing <= DENSE_SPACING else f"up to {spacing} steps apart")


def holds_text(points, spacing) -> str:
    """'holds' when every step was measured, else 'holds at the N measured points'."""
    if not is_sparse(points, spacing):
        return "holds"
    return f"holds at the {points} measured points" if points is not None else "holds at the measured points"


def aiming_verdict(aiming_min, points, spacing) -> str | None:
    """Aiming: 'fails somewhere' (a measured point is negative), holds_text otherwise, None when not measured."""
    if _missing(aiming_min):
        return None
    return "fails somewhere" if aiming_min < 0 else holds_text(points, spacing)


def with_quoted(summary: pl.DataFrame) -> pl.DataFrame:
    """condition_summary with the phrases the pages quote as text columns: ``binding_text``, ``term_pair``
    (the pair attaining the non-vanishing term), ``alpha_spread`` and ``term_spread`` (min – max over
    seeds), ``sampling`` and ``aiming`` (the Aiming verdict). Columns an older table lacks read as missing."""
    if summary.is_empty():
        return summary

    def col(name):
        return summary[name].to_list() if name in summary.columns else [None] * summary.height

    points, spacings = col("directions_points"), col("directions_spacing")
    text = {
        "binding_text": [binding_text(b) for b in col("binding")],
        "term_pair": [_on_line(pair_text(a, b), nb) for a, b, nb in zip(col("nonvanishing_alpha"),
                                                                          col("nonvanishing_beta"),
                                                                          col("nonvanishing_binding"))],
        "alpha_spread": [spread_text(lo, hi) for lo, hi in zip(col("alpha_min_seed_lo"), col("alpha_min_seed_hi"))],
        "term_spread": [spread_text(lo, hi) for lo, hi in zip(col("nonvanishing_term_seed_lo"),
                                                                col("nonvanishing_term_seed_hi"))],
        "sampling": [sampling_text(n, s) for n, s in zip(points, spacings)],
        "aiming": [aiming_verdict(a, n, s) for a, n, s in zip(col("aiming_min"), points, spacings)],
    }
    return summary.with_columns(**{k: pl.Series(k, v, dtype=pl.String) for k, v in text.items()})
