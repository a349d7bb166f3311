"""One experiment's self-contained HTML page: the paper figure and scale, the measurement semantics, the
summary, which classical conditions hold and what they promise, the condition charts, the optional parts
(x_K comparison, analytic surfaces, curvature, loss surfaces), the runs and the provenance. The page carries
the Vega JavaScript once, inlined, so it opens offline.

Every chart of the page is a :class:`~landscope.report.base.Section`; ``page_charts`` lists them in page
order (``landscope figures`` exports them).
"""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path

import polars as pl

from landscope import store
from landscope.report.base import (
    NO_DATA,
    Section,
    html_cell,
    html_page,
    html_table,
    kv_table,
    letters,
    query_df,
    sections_html,
    sort_points,
    write_html,
)
from landscope.report.conditions import (
    condition_sections,
    condition_summary,
    margin_sensitivity,
    minimizer_comparison,
    region_vertices,
    seed_conditions,
)
from landscope.report.curvature import curvature_charts, plateau_section
from landscope.report.diffusion import diffusion_part
from landscope.report.promises import promise_part
from landscope.report.semantics import (
    binding_text,
    figure_html,
    how_to_read,
    model_names,
    pair_text,
    semantics_html,
    setup_items,
    with_quoted,
)
from landscope.report.surfaces import surface_charts

SUMMARY_COLUMNS = [
    ("point", "sweep point"), ("n_seeds", "seeds"), ("feasible", "some pair works"),
    ("alpha_min", "smallest α"), ("alpha_spread", "smallest α per seed"), ("beta_at_alpha_min", "β at smallest α"),
    ("binding_text", "smallest pair"), ("beta_min", "smallest β"), ("nonvanishing_term", "min 2βσ²/(α−β)"),
    ("term_pair", "at (α, β)"), ("term_spread", "min 2βσ²/(α−β) per seed"), ("sigma_int_sq", "σ_int²"),
    ("sigma_int_sq_method", "σ_int² method")]
FULL_BATCH_COLUMNS = [
    ("point", "sweep point"), ("sampling", "full-batch points"), ("pl_log10_mu_min", "log10 PL μ (min)"),
    ("aiming_min", "Aiming min"), ("aiming", "Aiming"), ("cos_angle_min", "cos angle (min)"),
    ("qcvx_theta_min", "QCvx θ (min)"), ("final_full_loss_mean", "final full loss"),
    ("max_abs_drift", "replay drift (max)")]
MARGIN_COLUMNS = [("point", "sweep point"), ("margin_label", "margin"), ("feasible", "some pair works"),
                  ("alpha_min", "smallest α"), ("beta_at_alpha_min", "β at smallest α"),
                  ("nonvanishing_term", "min 2βσ²/(α−β)"), ("binding_text", "smallest pair")]
SEED_COLUMNS = [("point", "sweep point"), ("seed", "seed"), ("run", "run"), ("n_steps", "steps"),
                ("feasible", "some pair works"), ("alpha_min", "smallest α"), ("beta_at_alpha_min", "β at smallest α"),
                ("beta_min", "smallest β"), ("nonvanishing_term", "min 2βσ²/(α−β)"),
                ("term_pair", "at (α, β)"), ("binding_text", "smallest pair")]
PROMISES_HEADING = "Which conditions hold here, and what they promise"
MARGIN_NOTE = """<p class=note>The smallest feasible &alpha; and the non-vanishing term recomputed with other
margins (&alpha; &ge; &beta; + margin), all seeds together. Where the margin line, &beta; &ge; 0 or their
corner sets the smallest pair, it moves with the margin: that part is convention, not data. The margin the
rest of the page uses is marked.</p>"""


def margin_html(table: pl.DataFrame) -> str:
    """The margin-sensitivity table (the configured margin marked), or a note when there is none."""
    if table.is_empty():
        return "<p class=note>No margin sensitivity recorded.</p>"
    label = [f"{html.unescape(html_cell(m))}{' (configured)' if c else ''}"
             for m, c in zip(table["margin"], table["is_configured"])]
    shown = table.with_columns(margin_label=pl.Series(label, dtype=pl.String),
                               binding_text=pl.Series([binding_text(b) for b in table["binding"]], dtype=pl.String))
    return MARGIN_NOTE + html_table(shown, MARGIN_COLUMNS)


def seeds_html(table: pl.DataFrame) -> str:
    """The per-run constants (seed_conditions) in a collapsed <details> element ('' without rows)."""
    if table.is_empty():
        return ""
    shown = table.with_columns(
        binding_text=pl.Series([binding_text(b) for b in table["binding"]], dtype=pl.String),
        term_pair=pl.Series([pair_text(a, b) for a, b in zip(table["nonvanishing_alpha"], table["nonvanishing_beta"])],
                            dtype=pl.String))
    return ("<details><summary>Every run on its own (the constants the seed spread is made of)</summary>"
            + html_table(shown, SEED_COLUMNS) + "</details>")


def run_table(con, experiment: str) -> pl.DataFrame:
    """One row per run with its setup and the chosen x_K (minimizer method and step)."""
    return sort_points(query_df(con, """
        SELECT r.point, r.seed, r.run, r.model, r.dataset, r.optimizer, r.lr, r.batch_size, r.steps,
               r.n_params, r.n_train, m.method AS x_k_method, m.step AS x_k_step, r.status,
               r.train_wall_s, r.device
        FROM runs r LEFT JOIN minimizers m ON m.experiment = r.experiment AND m.run = r.run
        WHERE r.experiment = $experiment ORDER BY r.point, r.seed, r.run""", experiment))


def _views(con) -> set[str]:
    return {r[0] for r in con.sql("SELECT view_name FROM duckdb_views()").fetchall()}


def curvature_sections(con, experiment: str) -> list[Section]:
    """The sections of landscope.report.curvature, ids curva, curvb, ...: every curvature panel when the
    curvature table has rows for the experiment, else the plateaus panel alone when the plateaus table
    has rows (plateaus come from the replay, curvature or not)."""
    views = _views(con)

    def rows(view: str) -> int:
        if view not in views:
            return 0
        return con.sql(f"SELECT count(*) FROM {view} WHERE experiment = $e", params={"e": experiment}).fetchall()[0][0]

    if rows("curvature"):
        sections = curvature_charts(con, experiment)
    elif rows("plateaus"):
        sections = [plateau_section(con, experiment)]
    else:
        return []
    return [replace(s, id=f"curv{letters(i)}") for i, s in enumerate(sections)]


def promise_sections(con, experiment: str) -> tuple[str, list[Section]]:
    """The section "Which conditions hold here, and what they promise" (landscope.report.promises): its HTML
    (heading, note, table, charts) and its sections, ids promisea, promiseb, ... (none when the results have
    no condition_constants rows: the HTML then says so)."""
    text, sections = promise_part(con, experiment)
    sections = [replace(s, id=f"promise{letters(i)}") for i, s in enumerate(sections)]
    return f"<h2 id=promises>{PROMISES_HEADING}</h2>{text}{sections_html(sections)}", sections


def surface_sections(con, experiment: str) -> list[Section]:
    """The sections of landscope.report.surfaces, ids lsurfa, lsurfb, ..., when the surface tables have rows
    for the experiment (else [])."""
    if not {"surface_1d", "surface_2d"} <= _views(con):
        return []
    n = con.sql("SELECT (SELECT count(*) FROM surface_1d WHERE experiment = $e) + "
                "(SELECT count(*) FROM surface_2d WHERE experiment = $e)", params={"e": experiment}).fetchall()[0][0]
    if not n:
        return []
    return [replace(s, id=f"lsurf{letters(i)}") for i, s in enumerate(surface_charts(con, experiment))]


def analytic_surfaces(con, results, experiment: str, runs: pl.DataFrame) -> list[Section]:
    """The f(x, y) surfaces of the analytic examples, ids surfacea, surfaceb, ... ([] for other models)."""
    if "analytic" not in model_names(runs):
        return []
    from landscope.report import analytic  # torch: the analytic pages only

    return [replace(s, id=f"surface{letters(i)}")
            for i, s in enumerate(analytic.analytic_sections(con, results, experiment))]


def optional_parts(con, results, experiment: str, summary: pl.DataFrame,
                   runs: pl.DataFrame) -> tuple[str, list[Section]]:
    """(HTML, sections with a chart) of the page's optional parts: the x_K comparison of a minimizer sweep,
    the surfaces of analytic examples, the curvature charts and the loss surfaces. ``summary`` and ``runs``:
    the experiment's condition_summary and run_table."""
    parts, charted = [], []
    comparison = minimizer_comparison(summary, region_vertices(con, experiment))
    if comparison:
        table, chart = comparison
        parts.append("<h2>Choice of x<sub>K</sub></h2><p class=note>The exact feasible region of every "
                     "x<sub>K</sub> choice of this sweep, overlaid (dots: the smallest feasible &alpha;).</p>")
        parts.append(("<div class=chart id='xkregion'></div>" if chart is not None else NO_DATA) + table)
        charted.append(Section("Choice of x_K", chart, id="xkregion"))
    surfaces = analytic_surfaces(con, results, experiment, runs)
    if surfaces:
        parts.append("<h2>Surface</h2><p class=note>f(x, y) around the trajectories (as the paper's "
                     "Figure 3): the set of minimizers S in red, each seed's checkpoints joined in step "
                     "order, x<sub>K</sub> as a cross. Between checkpoints the path is drawn straight.</p>"
                     + sections_html(surfaces))
        charted += surfaces
    curvature = curvature_sections(con, experiment)
    if curvature:
        parts.append(f"<h2>{'Curvature' if len(curvature) > 1 else 'Plateaus'}</h2>" + sections_html(curvature))
        charted += curvature
    loss_surfaces = surface_sections(con, experiment)
    if loss_surfaces:
        parts.append("<h2>Loss surfaces around x<sub>K</sub></h2>" + sections_html(loss_surfaces))
        charted += loss_surfaces
    diffusion_html, diffusion = diffusion_part(con, experiment)  # ('', []) without diffusion rows
    parts.append(diffusion_html)
    charted += diffusion
    return "".join(parts), [s for s in charted if s.chart is not None]


def page_charts(con, experiment: str, results: str | Path = "results") -> list[Section]:
    """Every chart of the experiment's page, in page order: the classical conditions' bounds and constants,
    the condition charts (heatmaps, loss, gradient norm, angle, Aiming, PL; chart None where the page says 'no
    data'), then the optional parts' charts (x_K comparison, analytic surfaces, curvature, loss surfaces).
    ``results``: the folder ``con`` reads (the analytic surfaces also read its checkpoints)."""
    _, extra = optional_parts(con, results, experiment, condition_summary(con, experiment),
                              run_table(con, experiment))
    return promise_sections(con, experiment)[1] + condition_sections(con, experiment) + extra


def _provenance(results: str | Path, experiment: str) -> tuple[str, dict]:
    """Parquet key-value metadata of one of the experiment's files (condition_summary preferred)."""
    for table in ("condition_summary", "ab_grid", "runs", "train", "snapshots"):
        parts = sorted(store.table_dir(results, table, experiment).rglob("part-*.parquet"))
        if parts:
            return str(parts[0].relative_to(Path(results))), store.read_meta(parts[0])
    return "", {}


def write_experiment_report(results: str | Path, experiment: str, out_html: str | Path,
                            title: str | None = None, notes: str | None = None,
                            runs: list[str] | None = None, figure: str | None = None,
                            scale_note: str | None = None, setup: dict | None = None) -> Path:
    """Write one experiment's self-contained HTML page (paper figure and scale, measurement
    semantics, summary, charts, runs, provenance).

    ``runs`` restricts the page to those runs (the pipeline passes the runs of the current config);
    ``setup`` ({"models": [...], "minimizers": [...], "f_i_star": [...]}) states the config's choices
    for the measurement-semantics box (what it leaves out is read from the results).
    """
    con = store.connect(results, runs=runs, experiments=[experiment])
    try:
        summary = condition_summary(con, experiment)
        runs = run_table(con, experiment)
        promises_html, promises = promise_sections(con, experiment)
        charts = condition_sections(con, experiment)
        margins, seeds = margin_sensitivity(con, experiment), seed_conditions(con, experiment)
        extra_html, extra_charts = optional_parts(con, results, experiment, summary, runs)
    finally:
        con.close()
    source, prov = _provenance(results, experiment)
    quoted = with_quoted(summary)
    summary_html = (html_table(quoted, SUMMARY_COLUMNS, {"sigma_int_sq_method": "small"})
                    + "<h3>Full-batch verdicts</h3>" + html_table(quoted, FULL_BATCH_COLUMNS)
                    if not summary.is_empty() else "<p class=note>No condition summary yet.</p>")
    runs_html = (html_table(runs, [(c, c) for c in runs.columns])
                 if not runs.is_empty() else "<p class=note>No runs recorded.</p>")
    prov_html = (f"<p class=note>From <code>{html.escape(source)}</code>.</p>{kv_table(prov)}"
                 if source else "<p class=note>No files, so no provenance.</p>")
    margin = summary["margin"].drop_nulls() if "margin" in summary.columns else pl.Series([])
    margin_txt = f" Margin here: {html_cell(margin[0])}." if len(margin) else ""
    body = "".join([
        "<p><a href='index.html'>&larr; all experiments</a></p>",
        f"<h1>{html.escape(title or experiment)}</h1>",
        f"<p class=note>experiment <code>{html.escape(experiment)}</code></p>",
        figure_html(figure, scale_note),
        f"<p>{html.escape(notes)}</p>" if notes else "",
        semantics_html(setup_items(setup, runs, summary)),
        how_to_read(runs),
        (f"<h2>Summary</h2>{summary_html}<p class=note>One row per sweep point, all seeds together (the "
         f"paper's min over all seeds); <i>per seed</i>: the range of the same constant over the runs, each "
         f"computed alone.{margin_txt}</p>"), seeds_html(seeds),
        "<h2>Margin sensitivity</h2>", margin_html(margins), promises_html,
        "<h2>Charts</h2>", sections_html(charts), extra_html,
        f"<h2>Runs</h2>{runs_html}",
        f"<h2>Provenance</h2>{prov_html}"])
    return write_html(out_html, html_page(title or experiment, body, promises + charts + extra_charts))
