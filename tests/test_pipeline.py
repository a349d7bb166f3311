"""The whole DAG on config/smoke.yaml: tables, SQL, reports, and exact re-run behaviour."""

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import LANDSCOPE, ROOT, run_snakemake
from conftest import landscope_sql as sql

from landscope.config import load_study
from landscope.spec import ExperimentSpec, RunSpec

SMOKE = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def snakemake(workdir: Path, *args, config: Path | None = None, check=True):
    return run_snakemake(workdir, config or workdir / "smoke.yaml", *args, check=check)


def landscope_sql(workdir: Path, query: str, fmt="json"):
    return sql(workdir / "results", query, fmt)


def test_specs_cross_the_snakemake_boundary_through_to_dict_and_from_dict():
    """What common.smk hands a job (``to_dict``, then JSON as Snakemake's params travel) comes back as the
    same spec (``from_dict``); ``raw`` stays behind (each rule gets the slice of it that it reads)."""
    study = load_study(SMOKE)
    for exp in study.experiments.values():
        d = json.loads(json.dumps(exp.to_dict()))
        assert list(d) == ["name", "title", "conditions", "sweep_keys", "runs"]  # the params common.smk passed
        back = ExperimentSpec.from_dict(d)
        assert back == dataclasses.replace(exp, raw={}) and back.runs == exp.runs and exp.raw
        for run in exp.runs:
            assert RunSpec.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert sum(len(e.runs) for e in study.experiments.values()) == 4


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    (work / "smoke.yaml").write_text(yaml.safe_dump(SMOKE))
    snakemake(work)
    return work


def test_steps_table_has_one_row_per_training_step(study):
    rows = landscope_sql(study, "SELECT experiment, run, count(*) AS n, min(step) AS lo, max(step) AS hi "
                                "FROM steps GROUP BY ALL ORDER BY ALL")
    expected = {}
    for name, exp in SMOKE["experiments"].items():
        widths = exp.get("sweep", {}).get("model.width")
        for seed in exp["seeds"]:
            for w in widths or [None]:
                run = f"width-{w}_seed-{seed}" if w else f"seed-{seed}"
                expected[(name, run)] = exp["steps"]
    got = {(r["experiment"], r["run"]): r["n"] for r in rows}
    assert got == expected
    assert all(r["lo"] == 0 and r["hi"] == r["n"] - 1 for r in rows)
    train = landscope_sql(study, "SELECT count(*) AS n FROM train")[0]["n"]
    assert train == sum(expected.values())


def test_replay_was_exact_and_tables_are_consistent(study):
    drift = landscope_sql(study, "SELECT max(max_abs_drift) AS d, count(*) AS n FROM drift")[0]
    assert drift["d"] == 0.0 and drift["n"] == 3 * 2 + 3 * 2  # segments: halfspace 2 runs x 3, digits 2 x 3
    # the replayed stochastic loss is the training loss, step by step
    diff = landscope_sql(study, "SELECT count(*) AS n FROM steps s JOIN train t USING (experiment, run, step) "
                                "WHERE s.batch_loss <> t.batch_loss")[0]["n"]
    assert diff == 0
    # x_K is the last checkpoint: distance to it is zero there, and the directions table has every checkpoint
    d = landscope_sql(study, "SELECT experiment, run, max(step) AS last, count(*) AS n, "
                             "min(dist_to_min) FILTER (WHERE step = 120 OR step = 60) AS d0 FROM directions GROUP BY ALL")
    for r in d:
        assert r["d0"] == 0.0 and r["n"] == 4


def test_condition_summary(study):
    rows = landscope_sql(study, "SELECT * FROM condition_summary ORDER BY experiment, point")
    assert [(r["experiment"], r["point"]) for r in rows] == [
        ("digits_mlp", "width=32"), ("digits_mlp", "width=8"), ("halfspace", "all")]
    for r in rows:
        assert r["n_steps"] == {"digits_mlp": 60, "halfspace": 240}[r["experiment"]]
        if r["feasible"]:
            assert r["alpha_min"] >= r["beta_at_alpha_min"] + r["margin"] - 1e-9
        assert r["sigma_int_sq"] > 0 and "f(x_K)" in r["sigma_int_sq_method"]
    # the region's vertices all satisfy T >= 0 at every step (checked in SQL, independently of numpy)
    worst = landscope_sql(study, """
        SELECT min(s.grad_dot_dir - g.alpha * (s.batch_loss - s.batch_loss_at_min)
                   + g.beta * (s.batch_loss - s.batch_loss_star)) AS t
        FROM ab_region g JOIN runs r ON r.experiment = g.experiment AND r.point = g.point
        JOIN steps s ON s.experiment = r.experiment AND s.run = r.run""")[0]["t"]
    assert worst >= -1e-9


def test_reports_are_self_contained(study):
    index = (study / "reports" / "index.html").read_text()
    for name in SMOKE["experiments"]:
        assert f'href="{name}.html"' in index
        page = (study / "reports" / f"{name}.html").read_text()
        assert not re.search(r"<script[^>]+src=", page)
        assert "vegaEmbed" in page
    con = duckdb.connect(str(study / "results" / "landscope.duckdb"), read_only=True)
    assert con.sql("SELECT count(*) FROM condition_summary").fetchall()[0][0] == 3
    table2 = (study / "reports" / "table2.html").read_text()
    assert 'href="table2.html"' in index and 'href="digits_mlp.html"' in table2  # the width sweep is on it


def test_nothing_to_redo_and_a_changed_setting_reruns_only_what_depends_on_it(study):
    out = snakemake(study, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr
    changed = json.loads(json.dumps(SMOKE))
    changed["experiments"]["digits_mlp"]["conditions"]["margin"] = 0.2
    path = study / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    text = (lambda o: o.stdout + o.stderr)(snakemake(study, "-n", config=path))
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    assert jobs.get("conditions") == "1" and jobs.get("report") == "1"
    assert "train" not in jobs and "evaluate" not in jobs and "snapshot" not in jobs


def test_parquet_files_carry_provenance(study):
    from landscope.store import read_meta

    part = study / "results/tables/steps/experiment=halfspace/run=seed-0/part-00000.parquet"
    meta = read_meta(part)
    for key in ("git_sha", "config_hash", "torch_version", "landscope_version", "device"):
        assert meta.get(key), key
    assert meta["device"] == "cpu" and len(meta["config_hash"]) == 16


def test_runs_command(study):
    out = subprocess.run([*LANDSCOPE, "runs", "--results", str(study / "results"), "--format", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert all(r["max_drift"] == 0.0 and r["minimizer"] == "last" for r in rows)


def test_every_query_of_the_sql_cookbook_runs(study):
    """docs/sql.md's queries run from the study folder and return rows on the smoke study."""
    text = (ROOT / "docs" / "sql.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(queries) >= 8
    empty_ok = {"WHERE status <> 'completed'", "WHERE d.aiming_coef < 0"}
    for q in queries:
        out = subprocess.run([*LANDSCOPE, "sql", "--results", "results", "--format", "json", q],
                             capture_output=True, text=True, timeout=60, cwd=study)
        assert out.returncode == 0, (q, out.stderr)
        rows = json.loads(out.stdout)
        assert rows or any(s in q for s in empty_ok), q
