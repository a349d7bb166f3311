"""The words around an experiment page's numbers: what x_K, f_i* and the measurement modes were (the
"Measurement semantics" box), how to read the heatmaps, and the paper figure and scale note.

``setup_items`` takes the config's choices as the pipeline passes them and falls back on what the results
record, so a page written outside the pipeline says the same.
"""

from __future__ import annotations

import html
import json

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
box. &beta; = 0 is quasar-convexity; if (&alpha;, &beta;) works so does (&alpha; + d, &beta; + d). The
non-vanishing term 2&beta;&sigma;<sub>int</sub><sup>2</sup>/(&alpha; &minus; &beta;) of the SGD bound is
given at the smallest feasible &alpha;. The <b>Aiming</b> coefficient is &lang;&nabla;f(x<sub>k</sub>),
x<sub>k</sub> &minus; x<sub>K</sub>&rang;/f(x<sub>k</sub>) on the full batch (negative: Aiming fails there).
The <b>PL</b> panel shows log<sub>10</sub> of the PL constant estimated at each checkpoint with
f* &asymp; f(x<sub>K</sub>); the admissible constant is the minimum over the trajectory. Dropout is off
while measuring; runs are scaled down from the paper's lengths by the configuration.</p>"""


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
    return items


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
