"""Exact alpha-beta region + 50x50 min-T heatmap on 10^6 step rows: convex-hull path vs brute-force DuckDB.

Both read the same Parquet file in the same run; prints seconds and the ratio, writes JSON.
Usage: python benchmarks/conditions_bench.py [--rows 1000000] [--grid 50] [--out benchmarks/out/conditions.json]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from landscope.measures import conditions as C


def make_rows(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    loss = rng.gamma(2.0, 0.5, n)
    at_min = loss * rng.uniform(0.2, 1.2, n)
    star = np.zeros(n)
    a = 2.0 * (loss - at_min) - 1.0 * (loss - star) + rng.exponential(0.3, n)
    return pa.table({"batch_loss": loss, "batch_loss_at_min": at_min, "batch_loss_star": star, "grad_dot_dir": a})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--grid", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/out/conditions.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "steps.parquet"
        pq.write_table(make_rows(args.rows), path)
        con = duckdb.connect()

        t0 = time.perf_counter()
        arr = con.sql(f"""SELECT batch_loss - batch_loss_at_min AS u, batch_loss - batch_loss_star AS v,
                          grad_dot_dir AS a FROM read_parquet('{path}')""").fetchnumpy()
        reg = C.analyze_region(arr["u"], arr["v"], arr["a"], margin=0.1, alpha_max=5.0)
        A, B, T, valid = C.grid(arr["u"], arr["v"], arr["a"], reg, args.grid, 0.1)
        hull_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        brute = con.sql(f"""
            WITH g AS (SELECT a.i * 5.0 / {args.grid - 1} AS alpha, b.j * 5.0 / {args.grid - 1} AS beta
                       FROM range({args.grid}) a(i), range({args.grid}) b(j)),
                 s AS (SELECT batch_loss - batch_loss_at_min AS u, batch_loss - batch_loss_star AS v,
                              grad_dot_dir AS a FROM read_parquet('{path}'))
            SELECT alpha, beta, min(s.a - alpha * s.u + beta * s.v) AS min_t
            FROM g, s WHERE alpha >= beta + 0.1 - 1e-12 GROUP BY alpha, beta ORDER BY alpha, beta""").fetchnumpy()
        duck_s = time.perf_counter() - t0

    ours = {(round(a, 9), round(b, 9)): t for a, b, t, ok in zip(A, B, T, valid) if ok}
    worst = max(abs(ours[(round(a, 9), round(b, 9))] - t) for a, b, t in
                zip(brute["alpha"], brute["beta"], brute["min_t"]))
    res = {"rows": args.rows, "grid": args.grid, "hull_points": reg.hull_points,
           "hull_region_plus_grid_s": round(hull_s, 3), "duckdb_brute_grid_s": round(duck_s, 3),
           "speedup": round(duck_s / hull_s, 1), "max_abs_difference": worst,
           "alpha_min": reg.alpha_min}
    print(f"{args.rows:,} rows, {args.grid}x{args.grid} grid: hull region+grid {hull_s:.3f} s "
          f"({reg.hull_points} hull points), DuckDB brute-force grid {duck_s:.3f} s, "
          f"ratio {duck_s / hull_s:.1f}x, max |difference| {worst:.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
