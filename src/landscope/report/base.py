"""Parts every report page shares: point order, SQL binning, colours, band charts, HTML tables, the page
section and the page shell."""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert

from landscope import store

STOCHASTIC, FULL, HELDOUT = "stochastic (binned)", "full batch", "held-out (test)"
MAX_BINS = 400  # step bins per sweep point for per-step series (train)
MAX_ROWS = 5000  # rows of one chart's dataset (Altair refuses more)
NO_DATA = "<p class=nodata>no data</p>"


@dataclass(frozen=True)
class Section:
    """One chart of a page under its own heading: the chart (None: the page says "no data"), a caption
    (plain text, may be empty) and ``id``, which names the chart's <div> and its exported file
    (``landscope figures``). Chart modules leave ``id`` empty; the page that places a section sets it."""

    heading: str
    chart: object | None = None
    caption: str = ""
    id: str = ""


def sections_html(sections: list[Section]) -> str:
    """Per section: an h3 heading, the caption as a note, and the chart's <div> (or "no data")."""
    parts = []
    for s in sections:
        note = f"<p class=note>{html.escape(s.caption)}</p>" if s.caption else ""
        inner = NO_DATA if s.chart is None else f"<div class=chart id='{s.id}'></div>"
        parts.append(f"<h3>{html.escape(s.heading)}</h3>{note}{inner}")
    return "".join(parts)


_NUMBER = re.compile(r"((?<![^=,;:\s])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def natural_key(text: str) -> tuple:
    """Sort key that compares the numbers inside a label by value: width=16 < width=128.

    A sign counts as part of a number only at the start or after '=', ',', ';', ':' or a space,
    so 'resnet-18' is 'resnet', '-', 18 (not minus eighteen).
    """
    parts = []
    for tok in _NUMBER.split(str(text)):
        if not tok:
            continue
        if _NUMBER.fullmatch(tok):
            parts.append((0, float(tok), ""))
        else:
            parts.append((1, 0.0, tok))
    return tuple(parts), str(text)


def point_order(points) -> list[str]:
    """The distinct sweep points, naturally sorted."""
    return sorted({str(p) for p in points if p is not None}, key=natural_key)


def sort_points(df: pl.DataFrame) -> pl.DataFrame:
    """Rows ordered by the natural order of ``point`` (stable within a point)."""
    if df.is_empty():
        return df
    rank = {p: i for i, p in enumerate(point_order(df["point"].to_list()))}
    key = pl.col("point").replace_strict(rank, return_dtype=pl.Int64)
    return df.with_columns(_rank=key).sort("_rank", maintain_order=True).drop("_rank")


def query_df(con, query: str, experiment: str) -> pl.DataFrame:
    """Run ``query`` with ``$experiment`` bound (never formatted into the SQL)."""
    return con.sql(query, params={"experiment": experiment}).pl()


def n_points(con, experiment: str) -> int:
    got = con.sql("SELECT count(DISTINCT point) FROM runs WHERE experiment = $experiment",
                  params={"experiment": experiment}).fetchall()
    return int(got[0][0] or 0)


def bins_per_point(n_points: int, series: int = 1, max_bins: int = MAX_BINS,
                   max_rows: int = MAX_ROWS) -> int:
    """Bins per point so that ``series`` series of ``n_points`` points stay within ``max_rows``."""
    return max(1, min(max_bins, max_rows // (max(1, series) * max(1, n_points))))


def binned_sql(source: str, bins: int) -> str:
    """SQL binning a (point, run, step, v) source: per-run mean in each bin, then mean/min/max
    over runs (seeds). A bin is labelled by its first step; bins are equal-width per point."""
    return f"""
        WITH src AS ({source}),
        w AS (SELECT point, min(step) AS s0,
                     greatest(1, ceil((max(step) - min(step) + 1) / {int(bins)}))::BIGINT AS width
              FROM src GROUP BY point),
        per_run AS (SELECT s.point, s.run, (s.step - w.s0) // w.width AS bin, min(s.step) AS step,
                           avg(s.v) AS v
                    FROM src s JOIN w USING (point) GROUP BY s.point, s.run, bin)
        SELECT point, min(step) AS step, avg(v) AS mean, min(v) AS lo, max(v) AS hi,
               count(*) AS n_runs
        FROM per_run GROUP BY point, bin ORDER BY point, step"""


def run_source(table: str, column: str, where: str = "true", positive: bool = False) -> str:
    """(point, run, step, v) rows of one column of a run-level table, the point taken from runs."""
    keep = f"isfinite(t.{column}) AND ({where})" + (f" AND t.{column} > 0" if positive else "")
    if "point" in store.SCHEMAS[table]:
        return (f"SELECT t.point, t.run, t.step, t.{column} AS v FROM {table} t "
                f"WHERE t.experiment = $experiment AND {keep}")
    return (f"SELECT r.point, t.run, t.step, t.{column} AS v FROM {table} t "
            f"JOIN runs r ON r.experiment = t.experiment AND r.run = t.run "
            f"WHERE t.experiment = $experiment AND {keep}")


def point_color(order: list[str]) -> alt.Color:
    """Colour by sweep point in natural order; the legend shows line symbols."""
    guide = alt.Legend(symbolType="stroke", symbolStrokeWidth=3, symbolOpacity=1)
    return alt.Color("point:N", sort=order, scale=alt.Scale(domain=order), title="sweep point", legend=guide)


def band_layers(df: pl.DataFrame, y_title: str, scale: alt.Scale, order: list[str],
                 dash: str | None = None, opacity: float = 0.2) -> list[alt.Chart]:
    """[min-max band, mean line] over seeds, coloured by point. Sparse series get point markers."""
    per_point = df.height / max(1, df["point"].n_unique())
    base = alt.Chart(df).encode(x=alt.X("step:Q", title="step"))
    band = base.mark_area(opacity=opacity).encode(
        y=alt.Y("lo:Q", scale=scale, title=y_title), y2="hi:Q", color=point_color(order))
    line = base.mark_line(point=per_point <= 60).encode(
        y=alt.Y("mean:Q", scale=scale, title=y_title), color=point_color(order),
        tooltip=["point:N", "step:Q", alt.Tooltip("mean:Q", format=".4g"),
                 alt.Tooltip("lo:Q", format=".4g"), alt.Tooltip("hi:Q", format=".4g"), "n_runs:Q"])
    if dash:
        line = line.encode(strokeDash=alt.StrokeDash(
            "kind:N", title=None,
            scale=alt.Scale(domain=[STOCHASTIC, FULL, HELDOUT], range=[[1, 0], [6, 3], [2, 2]]),
            legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#444", symbolStrokeWidth=2,
                              symbolSize=300)))
    return [band, line]


def zero_rule(y: float = 0.0) -> alt.Chart:
    return alt.Chart(pl.DataFrame({"y": [y]})).mark_rule(color="#666", strokeDash=[4, 3]).encode(y="y:Q")


def band_chart(df: pl.DataFrame, title: str, y_title: str, log: bool = False,
               domain: list[float] | None = None, rule_at: float | None = None,
               order: list[str] | None = None) -> alt.LayerChart:
    """Mean line with a min-max band over seeds per sweep point, against the step."""
    order = order or point_order(df["point"].to_list())
    if log:
        scale = alt.Scale(type="log")
    elif domain:
        scale = alt.Scale(domain=domain, zero=False)
    else:
        scale = alt.Scale(zero=False)
    layers = band_layers(df, y_title, scale, order)
    if rule_at is not None:
        layers.append(zero_rule(rule_at))
    return alt.layer(*layers).properties(title=title, width=460, height=260)


def spacing(values: list[float]) -> float:
    """The median gap between sorted distinct values (1 when there is a single value)."""
    v = sorted(set(values))
    gaps = sorted(b - a for a, b in zip(v, v[1:]))
    return gaps[len(gaps) // 2] if gaps else 1.0


def no_data_chart(text: str) -> alt.Chart:
    return alt.Chart(pl.DataFrame({"t": [text]})).mark_text(size=14).encode(text="t:N").properties(
        width=260, height=60)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
.note{color:#555;max-width:62em}.chart{margin:1em 0 2em}.nodata{color:#999;font-style:italic}
code{background:#f5f5f5;padding:0 3px}
td.small{font-size:0.8em;color:#555;max-width:28em;text-align:left}
.semantics{background:#f7f9fc;border:1px solid #d5deea;padding:0.2em 1em;max-width:62em}
.semantics h2{font-size:1.1em}.figure{font-size:1.05em}"""


def html_cell(x, fmt: str = ".4g") -> str:
    """One table cell's text: numbers formatted, missing values as a dash, strings escaped."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return format(x, fmt)
    return html.escape(str(x))


def html_table(df: pl.DataFrame, columns: list[tuple[str, str]], classes: dict[str, str] | None = None) -> str:
    """An HTML table of ``columns`` [(column, header)] of ``df``; the first column left-aligned."""
    classes = {columns[0][0]: "l", **(classes or {})} if columns else {}
    cls = {c: f" class={classes[c]}" if c in classes else "" for c, _ in columns}
    head = "".join(f"<th{cls[c]}>{html.escape(label)}</th>" for c, label in columns)
    rows = ("<tr>" + "".join(f"<td{cls[c]}>{html_cell(row.get(c))}</td>" for c, _ in columns) + "</tr>"
            for row in df.iter_rows(named=True))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def kv_table(items: dict) -> str:
    """Key/value rows; non-string values as compact JSON."""
    rows = []
    for k, v in sorted(items.items()):
        text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
        rows.append(f"<tr><td class=l>{html.escape(str(k))}</td><td class=l><code>{html.escape(text)}</code></td></tr>")
    return f"<table>{''.join(rows)}</table>"


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (from the vl-convert wheel: no network);
    defines window.vegaEmbed. About 900 KB; building it takes ~4 s, so it is kept in the user cache
    per vl-convert version (written atomically; rebuilt when missing or unreadable)."""
    cache = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landscope"
             / f"vega-bundle-{metadata.version('vl-convert-python')}.js")
    try:
        text = cache.read_text(encoding="utf-8")
        if "vegaEmbed" in text:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    text = vl_convert.javascript_bundle()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        store.atomic_write_bytes(cache, text.encode("utf-8"))
    except OSError:  # a read-only home: build it every time
        pass
    return text


def spec_json(chart) -> str:
    """The chart's Vega-Lite spec as a JavaScript literal safe inside <script>: every '<' is
    written as \\u003c, so no string in the data can close the tag or open a comment."""
    return json.dumps(chart.to_dict(), separators=(",", ":")).replace("<", "\\u003c")


def html_page(title: str, body: str, sections: list[Section] = ()) -> str:
    """A complete page. When a section has a chart, the Vega bundle is inlined once and each chart embedded
    into the <div> its section's id names (ids are made by the report modules, never from user text)."""
    script = ""
    charts = [s for s in sections if s.chart is not None]
    if charts:
        embeds = "\n".join(f"vegaEmbed('#{s.id}', {spec_json(s.chart)}, {{actions: false}});" for s in charts)
        script = f"<script>{vega_bundle()}</script>\n<script>\n{embeds}\n</script>"
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n{script}\n</body></html>\n")


def write_html(out_html: str | Path, text: str) -> Path:
    out = Path(out_html)
    store.atomic_write_bytes(out, text.encode("utf-8"))
    return out


def page_href(name: str) -> str:
    """Link target of an experiment page: percent-encode only what would break a relative URL."""
    return re.sub(r"[%#?\x00-\x20]", lambda m: f"%{ord(m.group()):02X}", name) + ".html"


def chart_to_svg(chart, path: str | Path) -> Path:
    """Export one chart as SVG through vl-convert (no browser, no network)."""
    svg = vl_convert.vegalite_to_svg(chart.to_dict(), allowed_base_urls=[])
    return write_html(path, svg)


def letters(i: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: chart ids made of letters only."""
    s, i = "", i + 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(97 + r) + s
    return s
