"""The page section "Which conditions hold here, and what they promise": each classical condition's best
constant along the trajectories (table ``condition_constants``, both scopes), the bound its standard theorem
gives with those constants beside what the run achieved (``condition_bounds``, ``condition_bound_curve``),
the constants across sweep points, and the index's one line per experiment saying which conditions hold.

* queries (``constant_table``, ``bound_curves``, ``constant_points``, ``condition_verdicts``) read the
  ``run = 'all'`` rows (all seeds of a point together), pivot, join and thin them in SQL and return small
  Polars frames;
* ``promise_table`` words a ``constant_table`` frame for the page, ``holds_line`` a ``condition_verdicts``
  frame for the index;
* charts (``bound_chart``, ``constants_chart``) are pure: a frame in, an Altair chart out;
* ``promise_part`` puts them together for the page (landscope.report.page).
"""

from __future__ import annotations

import math
import re
from html import escape

import altair as alt
import polars as pl

from landscope.report.base import MAX_ROWS, Section, html_table, point_color, point_order, query_df, sort_points

# condition: (short name, name in the table, the constant's symbol)
CONDITIONS = {
    "alpha_beta": ("α-β", "α-β-condition", "α"),
    "pl": ("PL", "Polyak-Łojasiewicz (PL)", "μ"),
    "aiming": ("Aiming", "Aiming", "θ"),
    "qcvx": ("QCvx", "quasar-convexity (QCvx)", "θ"),
    "star_convexity": ("star-convexity", "star-convexity (QCvx, θ = 1)", "θ − 1"),
    "rsi": ("RSI", "restricted secant inequality (RSI)", "μ"),
    "eb": ("EB", "error bound (EB)", "μ"),
    "qg": ("QG", "quadratic growth (QG)", "μ"),
}
SCOPES = {"full_batch": "full batch", "mini_batch": "mini-batch"}
# the scope the index quotes: alpha-beta is a condition on each f_i (the step's batch), the others on f
INDEX_SCOPE = {"alpha_beta": "mini_batch"}
SERIES = ["bound", "achieved"]
VACUOUS = 0.99  # a bound at least this share of the initial gap promises almost nothing

TABLE_COLUMNS = [
    ("point", "sweep point"), ("name", "condition"), ("full_constant", "constant, full batch"),
    ("full_fails", "fails from, full batch"), ("mini_constant", "constant, mini-batch"),
    ("mini_fails", "fails from, mini-batch"), ("share", "rows where it holds (full / mini-batch)"),
    ("bound_text", "bound after K steps, or why none"), ("achieved", "achieved"), ("smoothness", "L used"),
    ("violated_steps", "steps above the bound")]
TABLE_CLASSES = {**{c: "l" for c in ("name", "full_constant", "full_fails", "mini_constant", "mini_fails", "share")},
                 "bound_text": "small"}
# one row per condition below the table: the long texts every point shares
THEOREM_COLUMNS = [("name", "condition"), ("theorem", "theorem"), ("formula", "bound"),
                   ("achieved_what", "achieved is"), ("noise_source", "noise σ² estimated as")]
THEOREM_CLASSES = {c: "small" for c, _ in THEOREM_COLUMNS[1:]}

NOTE = """<p class=note>A condition's <b>constant</b> is the largest &mu; (or &theta;) for which its inequality
holds at every measured row of the trajectories, all seeds of a point together (the minimum over the rows of
the per-row ratio; docs/conditions.md). x<sub>K</sub> stands in for the minimizer, so <i>holds</i> means: along
these paths, towards this x<sub>K</sub>, at the measured rows, not on the whole landscape. <i>Full batch</i>: the
full loss and gradient at the checkpoints and every <code>directions_every</code> steps; <i>mini-batch</i>: each
replayed step on its own batch (the stochastic versions, as the &alpha;-&beta;-condition is). <i>Fails from</i>
is the first step where the per-row ratio is &le; 0 (<i>never</i>: the condition holds). PL's &mu; is written in
scientific notation: a &mu; of 1e-9 holds formally and promises almost nothing. The <b>bound</b> is the
condition's standard theorem evaluated with the measured constant, the run's step size and the smoothness L
estimated from the measured sharpness (&lambda;<sub>max</sub> along the path, a lower estimate of the true L, so a
step-size condition lr &le; c/L may pass where the true L would fail it), beside what the run achieved; the bound
is also put against the initial gap (a bound near it promises nothing). Where a theorem's assumptions do not hold
(a constant that failed, a step size above its range, momentum, Adam), the table says which instead of a
number.</p>"""
ABSENT = ("<p class=note>These results have no <code>condition_constants</code> rows (written by an older "
          "landscope, or the conditions job has not run): re-run the conditions job to measure them.</p>")


def _name(condition: str, which: int = 0) -> str:
    return CONDITIONS.get(condition, (condition, condition, "constant"))[which]


def _rank(condition: str) -> int:
    return list(CONDITIONS).index(condition) if condition in CONDITIONS else len(CONDITIONS)


def _name_expr(which: int = 0) -> pl.Expr:
    """The condition column's short (0) or table (1) name; unknown conditions keep their own."""
    return pl.col("condition").replace({c: v[which] for c, v in CONDITIONS.items()})


def _rank_expr() -> pl.Expr:
    return pl.col("condition").replace_strict({c: i for i, c in enumerate(CONDITIONS)}, default=len(CONDITIONS),
                                              return_dtype=pl.Int64)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x, fmt: str = ".3g") -> str:
    """A number as the table shows it ('—' when missing or not finite)."""
    return format(x, fmt) if _finite(x) else "—"


# ----------------------------------------------------------------------------------- queries
_CONSTANTS_SQL = """
WITH c AS (SELECT * FROM condition_constants WHERE experiment = $experiment AND run = 'all'),
p AS (SELECT point, condition,
             {pivot}
      FROM c GROUP BY point, condition),
b AS (SELECT point, condition, scope AS bound_scope, pair_alpha, pair_beta, theorem, formula, applicable,
             why_not, smoothness, smoothness_source, noise_source, gap0, steps, bound, achieved, achieved_what,
             violated_steps
      FROM condition_bounds WHERE experiment = $experiment AND run = 'all')
SELECT * FROM p FULL JOIN b USING (point, condition)
"""
_PIVOT = ("constant", "holds", "first_fail_step", "fraction_positive", "n_rows", "note")


def constant_table(con, experiment: str) -> pl.DataFrame:
    """One row per (point, condition) of the run 'all' rows: each scope's constant, holds, first failing step,
    share of rows and note (``full_*``, ``mini_*``) beside the condition's bound row; points in natural order,
    conditions in CONDITIONS order."""
    pivot = ",\n             ".join(
        f"any_value({col}) FILTER (WHERE scope = '{scope}') AS {prefix}_{col}"
        for scope, prefix in (("full_batch", "full"), ("mini_batch", "mini")) for col in _PIVOT)
    df = query_df(con, _CONSTANTS_SQL.format(pivot=pivot), experiment)
    if df.is_empty():
        return df
    return sort_points(df.sort(_rank_expr(), "condition"))


def bound_curves(con, experiment: str, max_rows: int = MAX_ROWS) -> pl.DataFrame:
    """point, condition, step, series ('bound' or 'achieved'), value: condition_bound_curve's run 'all' rows,
    every (point, condition) thinned to an even stride of its steps (the last step kept) so that both series
    of every pair stay within ``max_rows`` rows together. Missing values (no bound) are left out; the rest,
    non-positive ones included, are kept (the chart drops those its log axis cannot show)."""
    pairs = con.sql("""SELECT count(*) FROM (SELECT DISTINCT point, condition FROM condition_bound_curve
                       WHERE experiment = $e AND run = 'all')""", params={"e": experiment}).fetchall()[0][0]
    per = max(1, max_rows // (2 * max(1, pairs)) - 1)
    df = query_df(con, f"""
        WITH c AS (SELECT point, condition, step, bound, achieved,
                          row_number() OVER (PARTITION BY point, condition ORDER BY step) - 1 AS i,
                          count(*) OVER (PARTITION BY point, condition) AS n
                   FROM condition_bound_curve WHERE experiment = $experiment AND run = 'all'),
        kept AS (SELECT * FROM c WHERE i % ceil(n / {per})::BIGINT = 0 OR i = n - 1)
        SELECT point, condition, step, 'bound' AS series, bound AS value FROM kept WHERE bound IS NOT NULL
        UNION ALL
        SELECT point, condition, step, 'achieved' AS series, achieved AS value FROM kept
        WHERE achieved IS NOT NULL
        ORDER BY point, condition, series, step""", experiment)
    return df.with_columns(name=_name_expr())


def constant_points(con, experiment: str) -> pl.DataFrame:
    """point, condition, name, scope (as worded), constant, holds: the run 'all' constants, one row per point,
    condition and scope (NULL constants left out)."""
    df = query_df(con, """SELECT point, condition, scope, constant, holds FROM condition_constants
                          WHERE experiment = $experiment AND run = 'all' AND constant IS NOT NULL
                          ORDER BY point, condition, scope""", experiment)
    return sort_points(df.with_columns(
        name=_name_expr(), scope=pl.col("scope").replace(SCOPES)))


def condition_verdicts(con, experiment: str) -> pl.DataFrame:
    """Per condition, over the experiment's points, in the scope the index quotes (INDEX_SCOPE, else the full
    batch; the other scope where that one has no rows at a point): n_points (points with a row), n_hold,
    mu_min (the smallest constant among the points where it holds), first_fail (the earliest failing step),
    other_scope (the other scope stood in somewhere), and total (the experiment's points)."""
    scope = "CASE condition " + " ".join(f"WHEN '{c}' THEN '{s}'" for c, s in INDEX_SCOPE.items()) + \
        " ELSE 'full_batch' END"
    df = query_df(con, f"""
        WITH c AS (SELECT point, condition, scope, constant, holds, first_fail_step, ({scope}) AS wanted
                   FROM condition_constants
                   WHERE experiment = $experiment AND run = 'all' AND coalesce(n_rows, 0) > 0),
        pick AS (SELECT *, row_number() OVER (PARTITION BY point, condition ORDER BY scope = wanted DESC) AS r
                 FROM c)
        SELECT condition, count(*) AS n_points, count(*) FILTER (WHERE holds) AS n_hold,
               min(constant) FILTER (WHERE holds) AS mu_min, min(first_fail_step) AS first_fail,
               bool_or(scope <> wanted) AS other_scope,
               (SELECT count(DISTINCT point) FROM condition_constants
                WHERE experiment = $experiment AND run = 'all') AS total
        FROM pick WHERE r = 1 GROUP BY condition""", experiment)
    return df.sort(_rank_expr(), "condition")


# ----------------------------------------------------------------------------------- wording
def constant_text(condition: str, value, holds, note: str | None = None) -> str:
    """One scope's constant as the table shows it: PL's mu in scientific notation with its log10, the
    alpha-beta pair (beta from the note), star-convexity as holds / fails."""
    if condition == "star_convexity":
        if holds is None:
            return "—"
        return f"{'holds' if holds else 'fails'} (θ − 1 = {num(value)})"
    if not _finite(value):
        return "—" if condition != "alpha_beta" or holds is None else "no pair"
    if condition == "pl":
        return f"μ = {value:.2e} (log10 μ = {math.log10(value):.2f})" if value > 0 else f"μ = {num(value)}"
    if condition == "alpha_beta":
        beta = re.search(r"beta = ([-+0-9.eE]+)\)", note or "")
        return f"α = {num(value)}" + (f", β = {num(float(beta.group(1)))}" if beta else "")
    return f"{_name(condition, 2)} = {num(value)}"


def fails_text(holds, first_fail, n_rows) -> str:
    """'never' when the condition holds, 'step N' from where it fails, '—' without rows."""
    if holds is None or not n_rows:
        return "—"
    if holds:
        return "never"
    return f"step {first_fail}" if first_fail is not None else "fails"


def share_text(full, mini) -> str:
    return " / ".join(format(x, ".0%") if _finite(x) else "—" for x in (full, mini))


def bound_text(row: dict) -> str:
    """The bound after the run's steps (with its share of the initial gap), or why there is none."""
    if row.get("applicable") is None:
        return "not computed"
    if not row["applicable"]:
        return f"none: {row.get('why_not') or 'the theorem does not apply'}"
    bound, gap0 = row.get("bound"), row.get("gap0")
    if not _finite(bound):
        return "—"
    scope = SCOPES.get(row.get("bound_scope") or "", row.get("bound_scope") or "")
    text = f"{num(bound)} after {row.get('steps')} steps" + (f" ({scope} constant)" if scope else "")
    pair = row.get("pair_alpha"), row.get("pair_beta")
    if pair[0] is not None:  # alpha-beta: the pair the bound takes (infinite: approached, never attained)
        a, b = (("∞" if math.isinf(x) else format(x, ".3g")) if x is not None else "—" for x in pair)
        text += f" at (α, β) = ({a}, {b})" + (", approached, not attained" if math.isinf(pair[0]) else "")
    if _finite(gap0) and gap0 > 0:
        ratio = bound / gap0
        text += (f"; {ratio:.3g} × the initial gap {num(gap0)}: promises almost nothing" if ratio >= VACUOUS
                 else f"; {ratio:.3g} × the initial gap {num(gap0)}")
    return text


def promise_table(df: pl.DataFrame) -> pl.DataFrame:
    """The page table's text: one row per point and condition (columns TABLE_COLUMNS)."""
    rows = []
    for r in df.iter_rows(named=True):
        c = r["condition"]
        rows.append({
            "point": r["point"], "name": _name(c, 1),
            "full_constant": constant_text(c, r["full_constant"], r["full_holds"], r["full_note"]),
            "full_fails": fails_text(r["full_holds"], r["full_first_fail_step"], r["full_n_rows"]),
            "mini_constant": constant_text(c, r["mini_constant"], r["mini_holds"], r["mini_note"]),
            "mini_fails": fails_text(r["mini_holds"], r["mini_first_fail_step"], r["mini_n_rows"]),
            "share": share_text(r["full_fraction_positive"], r["mini_fraction_positive"]),
            "bound_text": bound_text(r), "achieved": num(r.get("achieved")),
            "smoothness": num(r.get("smoothness")),
            "violated_steps": str(r["violated_steps"]) if r.get("violated_steps") is not None else "—"})
    return pl.DataFrame(rows, schema={c: pl.String for c, _ in TABLE_COLUMNS})


def theorem_table(df: pl.DataFrame) -> pl.DataFrame:
    """One row per condition that has a bound row (columns THEOREM_COLUMNS): its theorem, formula, what the
    achieved value is and how the noise was estimated (the first point's, the same at every point)."""
    if "theorem" not in df.columns:
        return pl.DataFrame(schema={c: pl.String for c, _ in THEOREM_COLUMNS})
    rows = df.filter(pl.col("theorem").is_not_null()).unique("condition", keep="first", maintain_order=True)
    return rows.with_columns(name=_name_expr(1)).sort(_rank_expr())


def smoothness_note(df: pl.DataFrame) -> str:
    """How L was estimated, each distinct wording once ('' without any)."""
    if "smoothness_source" not in df.columns:
        return ""
    sources = df["smoothness_source"].drop_nulls().unique(maintain_order=True).to_list()
    more = f"; and {len(sources) - 3} more" if len(sources) > 3 else ""
    return f"L used: {'; '.join(sources[:3])}{more}." if sources else ""


def holds_line(df: pl.DataFrame) -> str:
    """The index's plain-text line from ``condition_verdicts``: which conditions hold at every point, at some,
    and which fail (from which step), PL with its smallest mu, e.g. 'hold: α-β, QCvx, PL (μ ≥ 3.1e-09);
    fail: Aiming (from step 12), RSI (from step 0)'. '' without rows."""
    if df.is_empty():
        return ""
    hold, some, fail = [], [], []
    for r in df.iter_rows(named=True):
        name = _name(r["condition"]) + (" (mini-batch)" if r["other_scope"] and r["condition"] not in INDEX_SCOPE
                                        else "")
        mu = f" (μ ≥ {r['mu_min']:.2g})" if r["condition"] == "pl" and _finite(r["mu_min"]) else ""
        if r["n_hold"] and r["n_hold"] == r["total"]:
            hold.append(name + mu)
        elif r["n_hold"]:
            some.append(f"{name}{mu} ({r['n_hold']} of {r['total']} points)")
        else:
            fail.append(name + (f" (from step {r['first_fail']})" if r["first_fail"] is not None else ""))
    parts = [f"{label}: {', '.join(names)}" for label, names in
             (("hold", hold), ("hold at some points", some), ("fail", fail)) if names]
    return "; ".join(parts)


# ----------------------------------------------------------------------------------- charts
def _condition_facet(names: list[str]) -> alt.Facet:
    order = [n for n in (_name(c) for c in CONDITIONS) if n in names] + sorted(set(names) - {
        _name(c) for c in CONDITIONS})
    return alt.Facet("name:N", sort=order, title=None, header=alt.Header(labelFontSize=12, labelFontWeight="bold"))


def bound_chart(df: pl.DataFrame, columns: int = 4) -> alt.FacetChart:
    """One panel per condition (its own log y axis): each sweep point's bound (solid) and achieved value
    (dashed) against the step, coloured by point. Non-positive values are left out (log axis)."""
    df = df.filter(pl.col("value").is_finite() & (pl.col("value") > 0))
    order = point_order(df["point"].to_list())
    dash = alt.StrokeDash("series:N", scale=alt.Scale(domain=SERIES, range=[[1, 0], [6, 4]]), title=None,
                          legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#444", symbolStrokeWidth=2,
                                            symbolSize=300))
    line = alt.Chart(df).mark_line(point=df.height / max(1, df.select("point", "name", "series").n_unique()) <= 30)
    line = line.encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="bound / achieved",
                axis=alt.Axis(tickCount=5, format="~g")),
        color=point_color(order), strokeDash=dash,
        tooltip=["name:N", "point:N", "series:N", "step:Q", alt.Tooltip("value:Q", format=".4g")])
    return line.properties(width=230, height=170).facet(
        facet=_condition_facet(df["name"].to_list()), columns=columns).resolve_scale(y="independent").properties(
        title="What each condition's theorem promises (solid) against what the runs achieved (dashed)")


def constants_chart(df: pl.DataFrame, columns: int = 4) -> alt.FacetChart:
    """One panel per condition: |constant| per sweep point on a log axis, colour by scope, the shape the
    sign (a cross: zero or negative, i.e. the condition fails with that constant). Zeros are left out."""
    df = df.filter(pl.col("constant").is_finite() & (pl.col("constant") != 0)).with_columns(
        magnitude=pl.col("constant").abs(),
        sign=pl.when(pl.col("constant") > 0).then(pl.lit("positive")).otherwise(pl.lit("negative")))
    order = point_order(df["point"].to_list())
    points = alt.Chart(df).mark_point(size=70, filled=True).encode(
        x=alt.X("point:N", sort=order, title="sweep point"),
        y=alt.Y("magnitude:Q", scale=alt.Scale(type="log"), title="|constant|",
                axis=alt.Axis(tickCount=5, format="~g")),
        xOffset=alt.XOffset("scope:N", scale=alt.Scale(domain=list(SCOPES.values()))),
        color=alt.Color("scope:N", scale=alt.Scale(domain=list(SCOPES.values())), title="scope"),
        shape=alt.Shape("sign:N", scale=alt.Scale(domain=["positive", "negative"], range=["circle", "cross"]),
                        title="sign"),
        tooltip=["name:N", "point:N", "scope:N", alt.Tooltip("constant:Q", format=".4g"), "holds:N"])
    return points.properties(width=200, height=150).facet(
        facet=_condition_facet(df["name"].to_list()), columns=columns).resolve_scale(y="independent").properties(
        title="Each condition's constant across sweep points (cross: negative, the condition fails)")


# ----------------------------------------------------------------------------------- the page part
def bound_section(curves: pl.DataFrame, table: pl.DataFrame) -> Section:
    """'Bounds against achieved' with a caption naming the conditions drawn without a bound and the values
    the log axis leaves out (chart None without curve rows)."""
    heading = "Bounds against what was achieved"
    if curves.is_empty():
        computed = "applicable" in table.columns and table["applicable"].is_not_null().any()
        return Section(heading, None, "No bound curves in these results" + (
            "." if computed else ": the bounds job has not run, or the results predate it."))
    positive = curves.filter(pl.col("value").is_finite() & (pl.col("value") > 0))
    if positive.is_empty():
        return Section(heading, None, "No positive bound or achieved value to draw on a log axis.")
    drawn = set(positive.filter(pl.col("series") == "bound")["condition"].to_list())
    unbound = [_name(c) for c in sorted(set(positive["condition"].to_list()) - drawn, key=_rank)]
    dropped = curves.height - positive.height
    caption = ("All seeds of a point together (the worst case over its runs). Each panel has its own log axis. "
               + (f"Achieved only, no bound: {', '.join(unbound)} (the table says why). " if unbound else "")
               + (f"{dropped} zero, negative or infinite values are left out of the log axis." if dropped else ""))
    return Section(heading, bound_chart(positive), caption.strip())


def promise_part(con, experiment: str) -> tuple[str, list[Section]]:
    """(HTML: the note and the table, or a note that the tables are absent; the sections: the bound chart and,
    with several sweep points, the constants across them). Sections have no id: the page sets them."""
    table = constant_table(con, experiment)
    if table.is_empty():
        return ABSENT, []
    html = NOTE + html_table(promise_table(table), TABLE_COLUMNS, TABLE_CLASSES)
    theorems = theorem_table(table)
    if not theorems.is_empty():
        smooth = smoothness_note(table)
        html += ("<details><summary>The theorems: sources, bounds and what each bounds</summary>"
                 + html_table(theorems, THEOREM_COLUMNS, THEOREM_CLASSES)
                 + (f"<p class=note>{escape(smooth)}</p>" if smooth else "") + "</details>")
    sections = [bound_section(bound_curves(con, experiment), table)]
    points = constant_points(con, experiment)
    if points["point"].n_unique() > 1:
        sections.append(Section("Constants across sweep points", constants_chart(points),
                                "The run 'all' constant of every condition and scope per sweep point; a "
                                "condition whose constant is 0 (or missing) at a point has no mark there."))
    return html, sections
