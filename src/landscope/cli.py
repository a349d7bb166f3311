"""The ``landscope`` command: run the study with readable progress, query results with SQL, validate configs,
rebuild the database file, find and export reports, and list, check or fetch datasets."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import webbrowser
from pathlib import Path

import vl_convert
import yaml

from landscope import store
from landscope.config import load_study
from landscope.factories import ConfigError
from landscope.problem import catalog
from landscope.problem.sources import SOURCES, availability_problem, fetch_dataset, verify_files
from landscope.progress import run_snakemake

EXAMPLES = """examples:
  landscope run --configfile config/smoke.yaml --cores 2
  landscope sql "SELECT experiment, run, count(*) AS steps FROM steps GROUP BY ALL ORDER BY ALL"
  landscope sql --format csv "SELECT * FROM condition_summary"
  landscope runs
  landscope tables
  landscope validate config/config.yaml
  landscope report --open halfspace
  landscope figures --format png --out figs halfspace
  landscope data list
  landscope data check fashion_mnist
  landscope data fetch cifar10
  landscope data fetch wikitext2 --dest /data --url https://my.mirror/datasets
"""


READ_ONLY = {"SELECT", "EXPLAIN"}


def _fmt(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def print_table(columns: list[str], rows: list[tuple], out=None, max_rows: int = 200) -> None:
    """Aligned text table (numbers right-aligned) on ``out`` (default: the current sys.stdout)."""
    out = out or sys.stdout
    cells = [[_fmt(v) for v in r] for r in rows[:max_rows]]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)), file=out)
    if len(rows) > max_rows:
        print(f"... {len(rows) - max_rows} more rows (use --limit or --format csv)", file=out)
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=out)


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def cmd_sql(args) -> int:
    import duckdb  # ~0.1 s: only the SQL commands need it

    results = Path(args.results)
    if not (results / "tables").is_dir():
        print(f"landscope sql: no results in {results}/tables; run `snakemake --cores all` first "
              "or pass --results DIR", file=sys.stderr)
        return 2
    con = store.connect(results, confine=True)
    try:
        kinds = {st.type.name for st in con.extract_statements(args.query)}
        if not kinds or not kinds <= READ_ONLY:
            print(f"landscope sql: only read-only queries (SELECT, DESCRIBE, SHOW, EXPLAIN) are allowed; "
                  f"got {', '.join(sorted(kinds)) or 'nothing'}", file=sys.stderr)
            return 2
        rel = con.sql(args.query)
        if rel is None:
            print("landscope sql: the statement returned no result (only queries are allowed)", file=sys.stderr)
            return 2
        columns, rows = rel.columns, rel.fetchall()
    except duckdb.Error as exc:
        print(f"landscope sql: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
    elif args.format == "json":
        json.dump([dict(zip(columns, r)) for r in rows], sys.stdout, default=str, indent=1)
        print()
    else:
        print_table(columns, rows, max_rows=args.limit)
    return 0


RUNS_QUERY = """SELECT r.experiment, r.run, r.point, r.seed, r.status, r.diverged_step, r.steps, r.n_params,
       m.method AS minimizer, m.step AS minimizer_step, d.max_drift, round(r.train_wall_s, 2) AS train_s
FROM runs r LEFT JOIN minimizers m USING (experiment, run)
LEFT JOIN (SELECT experiment, run, max(max_abs_drift) AS max_drift FROM drift GROUP BY ALL) d USING (experiment, run)
ORDER BY r.experiment, r.point, r.seed"""


def cmd_runs(args) -> int:
    args.query = RUNS_QUERY
    return cmd_sql(args)


def cmd_tables(args) -> int:
    for name, cols in store.SCHEMAS.items():
        print(f"{name}: " + ", ".join(f"{c} {store.duck_type(t)}" for c, t in cols.items()))
    with tempfile.TemporaryDirectory() as empty:  # the derived views' columns, as DuckDB types them (no results)
        con = store.connect(empty, confine=False)
    for name in store.DERIVED_VIEWS:
        print(f"{name} (view): " + ", ".join(f"{c} {t}" for c, t, *_ in con.sql(f"DESCRIBE {name}").fetchall()))
    return 0


def cmd_db(args) -> int:
    results = Path(args.results)
    if not (results / "tables").is_dir():
        print(f"landscope db: no results in {results}/tables; run `snakemake --cores all` first "
              "or pass --results DIR", file=sys.stderr)
        return 2
    print(store.write_database(results))
    return 0


def cmd_validate(args) -> int:
    try:
        study = load_study(args.config)
    except (ConfigError, OSError) as exc:
        print(f"landscope: {exc}", file=sys.stderr)
        return 1
    except yaml.YAMLError as exc:
        print(f"landscope validate: {args.config} is not valid YAML: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for exp in study.experiments.values():
        segs = sum(r.n_segments for r in exp.runs)
        print(f"{exp.name}: {len(exp.runs)} runs, {segs} replay segments, "
              f"{sum(r.steps for r in exp.runs)} steps")
    for name, why in study.skipped.items():
        print(f"{name}: skipped ({why})")
    return 0


def cmd_run(args) -> int:
    if args.snakemake_args in (["-h"], ["--help"]):
        print(args.run_help(), end="")
        return 0
    return run_snakemake(args.snakemake_args)


# ----------------------------------------------------------------------------------- reports
def report_path(reports: Path, experiment: str | None) -> Path:
    """The page to show: reports/index.html, or reports/<experiment>.html. Raises FileNotFoundError
    saying how to build it (and which experiment pages exist) when it is not there."""
    page = reports / (f"{experiment}.html" if experiment else "index.html")
    if page.is_file():
        return page
    if experiment and (reports / "index.html").is_file():
        built = sorted(p.stem for p in reports.glob("*.html") if p.name != "index.html")
        raise FileNotFoundError(f"no report for experiment {experiment!r} in {reports}/ (built: "
                                f"{', '.join(built) or 'none'}); is it in the config? run `snakemake --cores all` "
                                "to build it")
    raise FileNotFoundError(f"{page} does not exist: the reports were not built yet; run snakemake --cores all "
                            "first (or pass --reports DIR)")


def cmd_report(args) -> int:
    try:
        page = report_path(Path(args.reports), args.experiment)
    except FileNotFoundError as exc:
        print(f"landscope report: {exc}", file=sys.stderr)
        return 2
    print(page)
    if args.open and not webbrowser.open(page.resolve().as_uri()):
        print("landscope report: no web browser could be started here; open the file above yourself",
              file=sys.stderr)
        return 1
    return 0


def known_experiments(con) -> list[str]:
    """Experiments that have any run or condition summary in the results."""
    rows = con.sql("SELECT experiment FROM runs UNION SELECT experiment FROM condition_summary "
                   "ORDER BY 1").fetchall()
    return [r[0] for r in rows if r[0] is not None]


def export_figures(results: Path, experiment: str, out: Path, fmt: str = "svg", scale: float = 2.0):
    """Write every chart of the experiment's page (report.page_charts) to ``out`` as
    ``<experiment>-<chart id>.<fmt>``. Returns (written [(path, heading)], headings with no data).
    Raises LookupError when the results hold no such experiment."""
    from landscope.report import base  # altair: only figure export draws charts
    from landscope.report import page as report  # altair, like report.base

    con = store.connect(results)
    try:
        known = known_experiments(con)
        if experiment not in known:
            raise LookupError(f"no experiment {experiment!r} in {results} (known: {', '.join(known) or 'none'})")
        sections = report.page_charts(con, experiment, results)
    finally:
        con.close()
    out.mkdir(parents=True, exist_ok=True)
    written, empty = [], []
    for section in sections:
        if section.chart is None:
            empty.append(section.heading)
            continue
        path = out / f"{experiment}-{section.id}.{fmt}"
        if fmt == "svg":
            base.chart_to_svg(section.chart, path)
        else:
            _chart_to_png(section.chart, path, scale)
        written.append((path, section.heading))
    return written, empty


def _chart_to_png(chart, path: Path, scale: float) -> None:
    """PNG through vl-convert (no browser, no network), written atomically."""
    store.atomic_write_bytes(path, vl_convert.vegalite_to_png(chart.to_dict(), scale=scale, allowed_base_urls=[]))


def cmd_figures(args) -> int:
    results = Path(args.results)
    if not (results / "tables").is_dir():
        print(f"landscope figures: no results in {results}/tables; run `snakemake --cores all` first "
              "or pass --results DIR", file=sys.stderr)
        return 2
    if not args.scale > 0:
        print(f"landscope figures: --scale must be a positive number of pixels per unit, got {args.scale}",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("reports") / "figures" / args.experiment
    try:
        written, empty = export_figures(results, args.experiment, out, args.format, args.scale)
    except LookupError as exc:
        print(f"landscope figures: {exc.args[0]}", file=sys.stderr)
        return 2
    for path, heading in written:
        print(f"{path}\t{heading}")
    for heading in empty:
        print(f"(no data, not written)\t{heading}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------- datasets
CHECK_LOADS = {  # the loader calls that `data check` makes: each reads and verifies one split
    "fashion_mnist": [{"split": "train"}, {"split": "test"}],
    "cifar10": [{"split": "train"}, {"split": "test"}],
    "cifar100": [{"split": "train"}, {"split": "test"}],
}


def _dataset_names(name: str | None) -> list[str]:
    if name is None:
        return list(SOURCES)
    if name not in SOURCES:
        raise LookupError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    return [name]


def dataset_rows(data_dir: str | None, names: list[str]) -> list[tuple[str, str, str]]:
    """(name, 'yes'/'no', where it was found, or where we looked and how to get it) per dataset."""
    rows = []
    for name in names:
        src = SOURCES[name]
        problem = availability_problem({"name": name}, data_dir)
        rows.append((name, "no", problem) if problem else (name, "yes", src.locate(data_dir) or src.howto()))
    return rows


def source_rows(names: list[str]) -> list[tuple[str, str, int, str, str]]:
    """(dataset, file, bytes, URL, published checksum) per file a dataset of ``names`` is downloaded as."""
    rows = []
    for name in names:
        row = catalog.source(name)
        for r in row.remotes if row else ():
            urls = row.urls(r)
            where = urls[0] + "".join(f" (mirror {u})" for u in urls[1:])
            rows.append((name, r.file, r.size, where, f"sha256:{r.sha256}" if r.sha256 else f"md5:{r.md5}"))
    return rows


def check_dataset(name: str, data_dir: str | None) -> tuple[str, str]:
    """('ok' | 'missing' | 'FAILED', detail): load the dataset's splits with verification on, and compare
    every file with its published MD5 where the registry has one."""
    from landscope.problem.data import load_dataset  # torch: only `data check` loads

    src = SOURCES[name]
    where = src.locate(data_dir)
    if where is None:
        return "missing", src.howto()
    if name == "mnist1d" and not Path(where).is_file():
        return "missing", f"{where}; `landscope data fetch mnist1d` generates and caches it"
    try:
        for kwargs in CHECK_LOADS.get(name, [{}]):
            load_dataset({"name": name, **kwargs}, data_dir)
    except (ValueError, OSError, EOFError) as exc:
        return "FAILED", f"{where}: {exc}"
    bad = verify_files(name, Path(where))
    if bad:
        return "FAILED", "; ".join(bad) + "; not the published files: delete them and fetch again"
    return "ok", f"{where} (verified: {src.verifies})"


def cmd_data(args) -> int:
    try:
        names = _dataset_names(args.name)
    except LookupError as exc:
        print(f"landscope data: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.action == "list":
        print_table(["dataset", "available", "where / how to get it"], dataset_rows(args.data_dir, names))
        downloads = source_rows(names)
        if downloads:
            print()
            print_table(["dataset", "file", "bytes", "source", "published checksum"], downloads)
        return 0
    if args.action == "check":
        return _data_check(names, args.data_dir, named=args.name is not None)
    if args.name is None:
        print("landscope data fetch: name a dataset, e.g. `landscope data fetch shakespeare`", file=sys.stderr)
        return 2
    return _data_fetch(args.name, args.data_dir, args.dest, args.url)


def _data_check(names: list[str], data_dir: str | None, named: bool) -> int:
    bad = 0
    for name in names:
        status, detail = check_dataset(name, data_dir)
        print(f"{name}: {status}: {detail}")
        bad += status == "FAILED" or (named and status == "missing")
    return 1 if bad else 0


def _data_fetch(name: str, data_dir: str | None, dest: str | None, url: str | None) -> int:
    """Fetch into --dest (else the first of --data-dir, $LANDSCOPE_DATA and the user cache); a copy
    already found is kept when neither --dest nor --url is given. Progress and messages go to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("landscope")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        record = fetch_dataset(name, data_dir, url, dest)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"landscope data fetch {name}: {exc}", file=sys.stderr)
        return 1
    finally:
        log.removeHandler(handler)
    if record["found"]:
        print(f"{name}: already here (nothing downloaded); pass --dest DIR to fetch another copy", file=sys.stderr)
    print(record["path"])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landscope", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    # prefix "+": every argument, "-n" and "--cores 4" included, goes on to Snakemake untouched
    rn = sub.add_parser("run", prefix_chars="+", add_help=False, usage="landscope run [SNAKEMAKE ARGS ...]",
                        help="run Snakemake (default --cores all): a line per finished stage with an ETA, "
                        "the full output in logs/", description="Run the study with Snakemake, passing every "
                        "argument on (default: --cores all). Prints the planned jobs, one line per finished "
                        "stage with an ETA, and what failed; the full output goes to logs/snakemake-TIME.log.")
    rn.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="Snakemake's arguments (`snakemake -h`)")
    rn.set_defaults(fn=cmd_run, run_help=rn.format_help)
    s = sub.add_parser("sql", help="run a read-only SQL query over the result tables")
    s.add_argument("query")
    s.add_argument("--results", default="results", help="results folder (default: results)")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--limit", type=int, default=200, help="rows shown in table format")
    s.set_defaults(fn=cmd_sql)
    r = sub.add_parser("runs", help="one line per run: status, divergence, x_K choice, replay drift")
    r.add_argument("--results", default="results")
    r.add_argument("--format", choices=["table", "csv", "json"], default="table")
    r.add_argument("--limit", type=int, default=200)
    r.set_defaults(fn=cmd_runs)
    t = sub.add_parser("tables", help="list the tables and their typed columns")
    t.set_defaults(fn=cmd_tables)
    d = sub.add_parser("db", help="(re)write results/landscope.duckdb with a view per table")
    d.add_argument("--results", default="results")
    d.set_defaults(fn=cmd_db)
    v = sub.add_parser("validate", help="validate a study config and list what it would run")
    v.add_argument("config")
    v.set_defaults(fn=cmd_validate)
    rp = sub.add_parser("report",
                        help="print the path of reports/index.html (or an experiment's page); --open opens it")
    rp.add_argument("experiment", nargs="?", help="an experiment's page instead of the index")
    rp.add_argument("--open", action="store_true", help="open it in the web browser")
    rp.add_argument("--reports", default="reports", help="reports folder (default: reports)")
    rp.set_defaults(fn=cmd_report)
    f = sub.add_parser("figures", help="export every chart of an experiment's page as SVG or PNG files")
    f.add_argument("experiment")
    f.add_argument("--format", choices=["svg", "png"], default="svg")
    f.add_argument("--out", help="output folder (default: reports/figures/EXPERIMENT)")
    f.add_argument("--scale", type=float, default=2.0, help="PNG pixels per chart unit (default: 2)")
    f.add_argument("--results", default="results")
    f.set_defaults(fn=cmd_figures)
    dt = sub.add_parser("data", help="list the datasets (available here or how to get them), check or fetch them")
    dt.add_argument("action", choices=["list", "check", "fetch"])
    dt.add_argument("name", nargs="?", help="one dataset (default: all; fetch needs one)")
    dt.add_argument("--data-dir", help="the config's data_dir (also searched: $LANDSCOPE_DATA and system locations)")
    dt.add_argument("--dest", help="fetch: the data directory to put it in (default: --data-dir, else "
                    "$LANDSCOPE_DATA, else ~/.cache/landscope; the loaders look in all three)")
    dt.add_argument("--url", help="fetch: a mirror's base URL (or file:// folder) holding the publisher's files "
                    "(`data list` names them); they are verified against the same checksums")
    dt.set_defaults(fn=cmd_data)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # `landscope sql ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
