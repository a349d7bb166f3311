"""Parquet store: typed views, schema evolution, atomic writes, read-only SQL."""

import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LANDSCOPE

from landscope import store


def test_views_are_typed_and_tolerate_files_from_an_older_schema(tmp_path):
    results = tmp_path / "results"
    # a runs part as an older landscope wrote it: no diverged_step column, seed stored as int32
    old = pa.table({"experiment": ["e"], "run": ["r"], "seed": pa.array([3], pa.int32()), "status": ["completed"]})
    path = store.part_path(results, "runs", "e", "r")
    path.parent.mkdir(parents=True)
    pq.write_table(old, path)
    con = store.connect(results)
    rows = con.sql("SELECT seed, status, diverged_step, typeof(seed) FROM runs").fetchall()
    assert rows == [(3, "completed", None, "BIGINT")]
    # tables with no file at all are empty, typed views
    assert con.sql("SELECT count(*) FROM steps").fetchall() == [(0,)]
    types = {r[0]: r[1] for r in con.sql("DESCRIBE steps").fetchall()}
    assert types["grad_dot_dir"] == "DOUBLE" and types["step"] == "BIGINT"


def test_views_of_some_experiments_read_only_their_files(tmp_path):
    """A page of experiment a lists only a's files (not those of a_b, which a prefix would match): a
    file of another experiment that a re-running job deletes meanwhile is never opened by it."""
    results = tmp_path / "results"
    for exp, seed in (("a", 1), ("b", 2), ("a_b", 3)):
        columns = {c: [None] for c in store.SCHEMAS["runs"]} | {"experiment": [exp], "run": ["r"], "seed": [seed]}
        store.write_table(store.part_path(results, "runs", exp, "r"), "runs", columns)
    page = store.connect(results, experiments=["a"])
    assert page.sql("SELECT experiment, seed FROM runs").fetchall() == [("a", 1)]
    assert page.sql("SELECT count(*) FROM steps").fetchall() == [(0,)]  # no file of a: an empty, typed view
    assert "experiment=b" not in page.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'runs'").fetchall()[0][0]
    everything = store.connect(results)
    assert everything.sql("SELECT count(*) FROM runs").fetchall() == [(3,)]


def test_write_table_checks_columns_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "t" / "part-00000.parquet"
    with pytest.raises(ValueError, match="missing columns"):
        store.write_table(path, "drift", {"experiment": ["e"]})
    assert not path.exists()
    # a write interrupted while the file is being produced leaves only the old part (or none)
    good = {"experiment": ["e"], "run": ["r"], "segment": [0], "step": [1], "max_abs_drift": [0.0],
            "tolerance": [0.0], "replay_wall_s": [1.0]}
    store.write_table(path, "drift", good)
    with pytest.raises(pa.ArrowInvalid):
        store.write_table(path, "drift", {**good, "step": ["not a number"]})
    assert pq.read_table(path).column("step").to_pylist() == [1]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_sql_is_read_only(tmp_path):
    results = tmp_path / "results"
    store.write_table(store.part_path(results, "drift", "e", "r"), "drift", {
        "experiment": ["e"], "run": ["r"], "segment": [0], "step": [5], "max_abs_drift": [0.0],
        "tolerance": [0.0], "replay_wall_s": [1.0]})
    run = lambda q: subprocess.run([*LANDSCOPE, "sql", "--results", str(results), q],
                                   capture_output=True, text=True, timeout=60)
    ok = run("SELECT step FROM drift")
    assert ok.returncode == 0 and "5" in ok.stdout
    for q, needle in [(f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", "only read-only"),
                      ("CREATE TABLE x AS SELECT 1", "only read-only"),
                      ("ATTACH 'x.db'", "only read-only"),
                      ("SELECT * FROM read_csv('/etc/passwd')", "Permission"),
                      (f"SELECT * FROM read_text('{tmp_path}/../../etc/hostname')", "Permission")]:
        out = run(q)
        assert out.returncode != 0 and needle in out.stderr, (q, out.stderr)
    assert not (tmp_path / "x.csv").exists()
