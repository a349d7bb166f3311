"""Scale: 100 runs and 10^6 step rows; conditions and report give the known answer within 2 GB."""

import sys

import numpy as np
import polars as pl
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import scale_bench  # noqa: E402

POINTS, SEEDS, STEPS = 10, 10, 10_000
RSS_BOUND_MB = 2048


@pytest.mark.slow
def test_million_step_rows_give_the_exact_region_within_memory(tmp_path):
    results = tmp_path / "results"
    expected = scale_bench.generate(results, POINTS, SEEDS, STEPS)
    assert sum(e["n_steps"] for e in expected.values()) >= 10**6
    assert sum(e["n_runs"] for e in expected.values()) == 100
    cond = scale_bench.measure("conditions", results, POINTS, SEEDS, STEPS)
    assert cond["peak_rss_mb"] < RSS_BOUND_MB, cond
    summary = pl.read_parquet(results / "tables/condition_summary/**/*.parquet")
    assert sorted(summary["point"]) == sorted(expected)
    for row in summary.iter_rows(named=True):
        e = expected[row["point"]]
        assert row["feasible"] and row["n_runs"] == e["n_runs"] and row["n_steps"] == e["n_steps"]
        for key in ("alpha_min", "beta_at_alpha_min", "beta_min"):
            assert row[key] == pytest.approx(e[key], rel=1e-9, abs=1e-9), (row["point"], key)
        assert row["aiming_min"] == pytest.approx(e["aiming_min"], rel=1e-12)
    # the min-T grid: feasible exactly where the three binding half-planes hold (off the boundary)
    grid = pl.read_parquet(results / "tables/ab_grid/**/*.parquet").filter(pl.col("min_t").is_not_null())
    for point, cells in grid.group_by("point"):
        e = expected[point[0]]
        a, b = cells["alpha"].to_numpy(), cells["beta"].to_numpy()
        slack = np.column_stack([a - e["amin"], b - e["bmin"], e["c"] - (a - b)])
        clear = (np.abs(slack) > 1e-9).all(axis=1)
        inside = (slack >= 0).all(axis=1)
        assert clear.sum() > 100
        assert np.array_equal(cells["feasible"].to_numpy()[clear], inside[clear]), point
    rep = scale_bench.measure("report", results, POINTS, SEEDS, STEPS)
    assert rep["peak_rss_mb"] < RSS_BOUND_MB, rep
    page = (tmp_path / "scale.html").read_text()
    assert "width-80_seed-9" in page and page.rstrip().endswith("</html>")
