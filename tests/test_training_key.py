"""Runs keyed by what determines their training: one train job (and one snapshot job) per training key,
whichever experiments and sweep points share it; measurement-only settings re-run only measurement."""

import dataclasses
import json
import subprocess

import polars as pl
import pytest
import yaml
from conftest import job_stats, make_study, run_snakemake, snakemake_cmd

from landscope.trajectory import rundir

BASE = {"model": {"name": "halfspace_logistic"}, "dataset": {"name": "halfspace", "n_per_class": 10},
        "optimizer": {"name": "sgd", "lr": 0.25}, "batch_size": 1, "steps": 40, "snapshot_every": 20,
        "seeds": [0, 1], "f_i_star": "exact",
        "curvature": {"enabled": False}, "surfaces": {"enabled": False}}
# Two experiments trained identically: one takes the paper's x_K, the other sweeps three minimizers.
STUDY = {"device": "cpu", "experiments": {
    "plain": {**BASE, "title": "x_K = last"},
    "minimizers": {**BASE, "title": "three x_K", "directions_every": 5,
                   "sweep": {"minimizer": ["last", "best", "tail_average"]}},
}}


def run(**kw):
    return make_study({**BASE, **kw}).experiments["t"].runs[0]


def test_measurement_only_settings_keep_the_training_key():
    spec = run()
    same = [dataclasses.replace(spec, experiment="other", run="r", point="p", sweep={"minimizer": "best"}),
            dataclasses.replace(spec, minimizer="tail_average"), dataclasses.replace(spec, directions_every=3),
            dataclasses.replace(spec, drift_tolerance=1e-3),
            dataclasses.replace(spec, f_i_star=0.0)]  # SGD never reads f_i*
    assert {s.training_key() for s in same} == {spec.training_key()}
    assert all(s.config_hash() != spec.config_hash() for s in same)  # each is measured on its own
    other = [dataclasses.replace(spec, seed=1), dataclasses.replace(spec, steps=41),
             dataclasses.replace(spec, optimizer={**spec.optimizer, "lr": 0.5}),
             dataclasses.replace(spec, batch_size=2), dataclasses.replace(spec, snapshot_every=10),
             dataclasses.replace(spec, model={**spec.model, "l2": 0.5})]
    keys = {s.training_key() for s in other}
    assert len(keys) == len(other) and spec.training_key() not in keys


def test_f_star_is_training_for_polyak_steps_and_names_are_for_recorded_runs():
    sps = run(optimizer={"name": "sps_max", "c": 0.5})
    assert dataclasses.replace(sps, f_i_star=0.0).training_key() != sps.training_key()
    rec = run(source="recorded")
    assert dataclasses.replace(rec, run="elsewhere").training_key() != rec.training_key()
    assert rec.training_key() != dataclasses.replace(rec, source="train").training_key()


def test_the_train_job_gets_the_same_spec_from_every_run_of_a_key():
    a = run()
    b = dataclasses.replace(a, experiment="x", run="y", point="z", minimizer="best", directions_every=2)
    assert a.for_training() == b.for_training()
    assert a.for_training().training_key() == a.training_key()
    assert a.for_training().to_dict()["run"] == a.training_key()
    sps = run(optimizer={"name": "sps_max", "c": 0.5})
    assert sps.for_training().f_i_star == "exact"  # kept where it decides the trajectory


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def test_shared_training_plans_one_train_job_per_training_key(tmp_path, study):
    out = subprocess.run(snakemake_cmd(tmp_path / "w", study, "-n"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    stats = job_stats(out.stdout + out.stderr)
    # 2 seeds: 2 trajectories; 1 + 3 sweep points per seed: 8 runs measured on them
    assert (stats["train"], stats["snapshot"], stats["select_minimizer"], stats["evaluate"]) == (2, 2, 8, 16)
    rules = subprocess.run(snakemake_cmd(tmp_path / "w", study, "--list-rules"), capture_output=True, text=True,
                           timeout=300)
    listed = set(rules.stdout.split())
    assert {"train", "snapshot", "select_minimizer", "evaluate", "conditions", "report"} <= listed


@pytest.mark.slow
def test_shared_training_runs_once_and_a_measurement_change_retrains_nothing(tmp_path, study):
    work = tmp_path / "w"
    run_snakemake(work, study, "--until", "conditions")
    results = work / "results"
    assert len(list((results / "benchmarks" / "train").glob("*.tsv"))) == 2  # trained twice, not 8 times
    runs = pl.read_parquet(f"{results}/tables/runs/**/*.parquet", hive_partitioning=False)
    assert len(runs) == 8 and runs["training_key"].n_unique() == 2
    for key, group in runs.group_by("training_key"):
        assert group["seed"].n_unique() == 1 and len(group) == 4
        manifest = json.loads((rundir.key_dir(results, key[0]) / "manifest.json").read_text())
        assert manifest["training_key"] == key[0]
    # every run of a key reads the same trajectory: identical train rows and snapshots under its own names
    for table in ("train", "snapshots"):
        df = pl.read_parquet(f"{results}/tables/{table}/**/*.parquet", hive_partitioning=False)
        df = df.join(runs.select("experiment", "run", "training_key"), on=["experiment", "run"])
        per_run = df.drop("experiment", "run").group_by("training_key", "step").agg(pl.all().n_unique())
        assert (per_run.drop("training_key", "step").max_horizontal() == 1).all(), table
    # x_K per minimizer: 'best' is the lowest full loss of the shared snapshots, 'last' the last checkpoint
    mins = pl.read_parquet(f"{results}/tables/minimizers/**/*.parquet", hive_partitioning=False)
    snaps = pl.read_parquet(f"{results}/tables/snapshots/experiment=plain/**/*.parquet", hive_partitioning=False)
    seed0 = mins.filter(pl.col("run").str.contains("seed-0"))
    best = snaps.filter(pl.col("run") == "seed-0").sort(["full_loss", "step"], descending=[False, True]).row(
        0, named=True)
    assert seed0.filter(pl.col("method") == "best")["step"].to_list() == [best["step"]]
    assert set(seed0.filter(pl.col("method") == "last")["step"]) == {40}
    # a measurement-only change (the plain experiment's x_K and its direction rows) re-trains nothing
    changed = json.loads(json.dumps(STUDY))
    changed["experiments"]["plain"].update(minimizer="best", directions_every=10)
    study.write_text(yaml.safe_dump(changed))
    out = subprocess.run(snakemake_cmd(work, study, "-n", "--until", "conditions"), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    stats = job_stats(out.stdout + out.stderr)
    assert stats["train"] == stats["snapshot"] == 0
    assert stats["select_minimizer"] == 2 and stats["evaluate"] == 4  # the plain experiment's two runs


def test_a_results_folder_of_the_earlier_layout_is_refused_with_what_to_do(tmp_path, study):
    old = tmp_path / "w" / "results" / "checkpoints" / "experiment=plain" / "run=seed-0"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    out = subprocess.run(snakemake_cmd(tmp_path / "w", study, "-n"), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "layout of an earlier landscope" in out.stderr and "--directory" in out.stderr
    assert (old / "manifest.json").read_text() == "{}"  # nothing was touched
