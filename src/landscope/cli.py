"""The ``landscope`` command: query results with SQL, validate configs, rebuild the database file."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  landscope sql "SELECT experiment, run, count(*) AS steps FROM steps GROUP BY ALL ORDER BY ALL"
  landscope sql --format csv "SELECT * FROM condition_summary"
  landscope runs
  landscope tables
  landscope validate config/config.yaml
"""


READ_ONLY = {"SELECT", "EXPLAIN"}


def _fmt(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def print_table(columns: list[str], rows: list[tuple], out=sys.stdout, max_rows: int = 200) -> None:
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
    import duckdb

    from landscope.store import connect

    results = Path(args.results)
    if not (results / "tables").is_dir():
        print(f"landscope sql: no results in {results}/tables; run `snakemake --cores all` first "
              "or pass --results DIR", file=sys.stderr)
        return 2
    con = connect(results, confine=True)
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
    from landscope.store import SCHEMAS, _duck_type

    for name, cols in SCHEMAS.items():
        print(f"{name}: " + ", ".join(f"{c} {_duck_type(t)}" for c, t in cols.items()))
    return 0


def cmd_db(args) -> int:
    from landscope.store import write_database

    print(write_database(args.results))
    return 0


def cmd_validate(args) -> int:
    from landscope.config import ConfigError, load_study

    try:
        study = load_study(args.config)
    except (ConfigError, OSError) as exc:
        print(f"landscope: {exc}", file=sys.stderr)
        return 1
    for exp in study.experiments.values():
        segs = sum(r.n_segments for r in exp.runs)
        print(f"{exp.name}: {len(exp.runs)} runs, {segs} replay segments, "
              f"{sum(r.steps for r in exp.runs)} steps")
    for name, why in study.skipped.items():
        print(f"{name}: skipped ({why})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landscope", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
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
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # `landscope sql ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
