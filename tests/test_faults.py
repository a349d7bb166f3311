"""Faults: killed jobs, truncated files, failed writes and diverging runs cost a re-run, never a
wrong number. Every test compares the final tables with those of an uninterrupted run.

(test_trajectory.py covers SIGKILL during training, a flipped byte in a checkpoint, divergence in
the library and the drift error; here: the same faults inside real Snakemake runs and the gaps.)
"""

import glob
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import conftest
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import EXPLODING_MODULE, ROOT, make_study, run_pipeline

from landscope import store
from landscope.measures import conditions
from landscope.report import index as index_page
from landscope.report import page as report
from landscope.trajectory import replay, rundir, train


def tables(results: Path) -> dict[str, pl.DataFrame]:
    """Every part file below results/tables, by relative path, without wall-time (*wall_s) columns."""
    out = {}
    for path in sorted(Path(results, "tables").rglob("part-*.parquet")):
        df = pl.read_parquet(path)
        out[str(path.relative_to(results))] = df.drop([c for c in df.columns if c.endswith("wall_s")])
    return out


def assert_same_tables(got: Path, want: Path) -> None:
    a, b = tables(got), tables(want)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].equals(b[name]), name


# ----------------------------------------------------------------------------------- atomic writes
DRIFT_ROW = {"experiment": ["e"], "run": ["r"], "segment": [0], "step": [1], "max_abs_drift": [0.0],
             "tolerance": [0.0], "replay_wall_s": [1.0]}


def test_a_write_that_fails_midway_leaves_the_previous_part(tmp_path, monkeypatch):
    """The writer dies after half the bytes (disk full): readers still see the old part, whole."""
    path = store.part_path(tmp_path, "drift", "e", "r")
    store.write_table(path, "drift", DRIFT_ROW)
    real = pq.write_table

    def half_then_fail(table, where, **kw):
        real(table, where, **kw)
        data = Path(where).read_bytes()
        Path(where).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.write_table(path, "drift", {**DRIFT_ROW, "step": [2]})
    monkeypatch.setattr(store.pq, "write_table", real)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    con = store.connect(tmp_path)
    assert con.sql("SELECT step FROM drift").fetchall() == [(1,)]
    # with no previous part, nothing at all becomes visible
    fresh = store.part_path(tmp_path, "drift", "e", "r2")
    monkeypatch.setattr(store.pq, "write_table", half_then_fail)
    with pytest.raises(OSError):
        store.write_table(fresh, "drift", DRIFT_ROW)
    assert list(fresh.parent.iterdir()) == []


# ----------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def small_run(tmp_path, spec_factory):
    spec = spec_factory()
    clean, _, _ = run_pipeline(spec, tmp_path / "clean")
    results, ckpt, _ = run_pipeline(spec, tmp_path / "faulty")
    return spec, clean, results, ckpt


def test_truncated_checkpoint_is_detected_and_recomputed(small_run):
    spec, clean, results, ckpt = small_run
    path = rundir.checkpoint_path(ckpt, 8)
    path.write_bytes(path.read_bytes()[:100])  # a copy cut short
    with pytest.raises(rundir.CheckpointError,
                       match=r"step=0000008.pt is corrupted: SHA-256 .* differs from the recorded .*re-run training"):
        replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", 1, results)
    train.train_run(spec, ckpt)  # recomputes from step 4
    train.snapshot_and_select(spec, ckpt, ckpt / "minimizer.pt", results)
    for j in range(spec.n_segments):
        assert replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, results)["drift"] == 0.0
    assert_same_tables(results, clean)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no sidecar"])
def test_damaged_minimizer_is_reported(small_run, damage):
    spec, _, results, ckpt = small_run
    path = ckpt / "minimizer.pt"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 3])
    elif damage == "flip":
        path.write_bytes(raw[:200] + bytes([raw[200] ^ 1]) + raw[201:])
    else:
        path.with_suffix(".json").unlink()
    needle = "is missing; re-run the train rule" if damage == "no sidecar" else (
        r"minimizer .*minimizer.pt is corrupted: SHA-256 .* differs from the recorded .* re-run the train rule")
    with pytest.raises(rundir.CheckpointError, match=needle):
        replay.replay_segment(spec, ckpt, path, 0, results)


# ----------------------------------------------------------------------------------- divergence


def test_diverged_run_shows_in_the_report_while_the_others_finish(tmp_path, monkeypatch):
    (tmp_path / "exploding_ls.py").write_text(EXPLODING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    study = make_study({"model": {"name": "exploding_ls:make"}, "dataset": {"name": "digits", "n_train": 200},
                        "batch_size": 16, "steps": 40, "snapshot_every": 10, "seeds": [0],
                        "sweep": {"optimizer.lr": [0.01, 50.0]}})
    exp = study.experiments["t"]
    for spec in exp.runs:
        results, _, _ = run_pipeline(spec, tmp_path)  # one results folder, one checkpoint folder per run
        os.rename(tmp_path / "ckpt", tmp_path / f"ckpt-{spec.run}")
    files = {t: sorted(glob.glob(f"{results}/tables/{t}/experiment=t/*/*.parquet")) for t in ("steps", "directions", "drift")}
    out = conditions.experiment_conditions(exp, results, files["steps"], files["directions"], files["drift"])
    by_point = {row["point"]: row for row in out["points"]}
    assert by_point["lr=0.01"]["n_runs"] == 1 and by_point["lr=0.01"]["n_steps"] == 40
    assert by_point["lr=50.0"]["n_runs"] == 0 and by_point["lr=50.0"]["feasible"] is False
    runs = pl.read_parquet(f"{results}/tables/runs/**/*.parquet").sort("run")
    assert runs.select("run", "status").rows() == [("lr-0.01_seed-0", "completed"), ("lr-50.0_seed-0", "diverged")]
    step = runs["diverged_step"][1]
    page = report.write_experiment_report(results, "t", tmp_path / "t.html",
                                          runs=[r.run for r in exp.runs]).read_text()
    assert "lr-50.0_seed-0" in page and "diverged" in page and "completed" in page
    index = index_page.write_index(results, ["t"], tmp_path / "index.html").read_text()
    assert "no measured run (diverged?)" in index
    assert index.count("<tr>") >= 3  # header and both points
    assert step is not None and 0 <= step < 40


# ----------------------------------------------------------------------------------- SIGKILL in Snakemake
def smoke_subset() -> dict:
    """config/smoke.yaml's half-space experiment: train, 6 evaluate segments, conditions, reports."""
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    return {**smoke, "experiments": {"halfspace": smoke["experiments"]["halfspace"]}}


SMOKE_SUBSET = smoke_subset()  # read once: every run of this module sees the same config


def snakemake_cmd(work: Path, *args) -> list[str]:
    return conftest.snakemake_cmd(work, work / "smoke.yaml", *args)


def run_snakemake(work: Path, *args) -> str:
    out = conftest.run_snakemake(work, work / "smoke.yaml", *args)
    return out.stdout + out.stderr


def kill_when(work: Path, ready, *args, timeout_s: float = 600) -> None:
    """Start Snakemake and SIGKILL it with all its jobs (one process group) once ``ready()``."""
    with open(work / "killed.log", "w") as log:
        proc = subprocess.Popen(snakemake_cmd(work, *args), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before the fault; see killed.log"
            assert time.monotonic() < deadline, "the fault point was never reached"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def same_page(a: Path, b: Path) -> bool:
    """Two report pages are the same up to measured wall times (decimal numbers are masked; the
    tables behind them are compared exactly by assert_same_tables)."""
    mask = lambda p: re.sub(r"\d+\.\d+", "#", p.read_text())  # noqa: E731
    return mask(a) == mask(b)


def rerun_after_kill(work: Path) -> str:
    """What a user does after a killed run: remove the stale lock, then run again."""
    run_snakemake(work, "--unlock")
    return run_snakemake(work)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp("clean")
    (work / "smoke.yaml").write_text(yaml.safe_dump(SMOKE_SUBSET))
    run_snakemake(work)
    return work


@pytest.mark.slow
def test_sigkill_during_evaluate_then_rerun_equals_uninterrupted(uninterrupted, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "smoke.yaml").write_text(yaml.safe_dump(SMOKE_SUBSET))
    drift_parts = lambda: glob.glob(f"{work}/results/tables/drift/**/part-*.parquet", recursive=True)
    kill_when(work, lambda: len(drift_parts()) >= 1)
    assert len(drift_parts()) < 6 and not (work / "reports" / "halfspace.html").exists()  # mid-evaluation
    rerun_after_kill(work)
    assert_same_tables(work / "results", uninterrupted / "results")
    for page in ("halfspace.html", "index.html"):
        assert same_page(work / "reports" / page, uninterrupted / "reports" / page)


@pytest.mark.slow
def test_sigkill_during_report_then_rerun_equals_uninterrupted(uninterrupted, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(uninterrupted, work, symlinks=True)  # a finished study whose reports are redone
    shutil.rmtree(work / "logs")
    page = work / "reports" / "halfspace.html"
    log = work / "logs" / "report" / "halfspace.log"
    kill_when(work, lambda: log.exists() and "start report" in log.read_text(), "--forcerun", "report")
    # atomic write: the page is the old complete one or absent, never a partial file
    assert not page.exists() or same_page(page, uninterrupted / "reports" / "halfspace.html")
    text = rerun_after_kill(work)
    ran = set(re.findall(r"^(?:local)?rule (\w+):", text, flags=re.M))
    # Snakemake re-runs the killed report unless its (atomically replaced, hence complete) page
    # survived the kill and is newer than its inputs; either way nothing upstream is redone
    assert "evaluate" not in ran and "train" not in ran, text[-3000:]
    assert_same_tables(work / "results", uninterrupted / "results")
    assert same_page(page, uninterrupted / "reports" / "halfspace.html")
