"""Cluster-style execution: the smoke DAG through Snakemake's cluster-generic executor, with a
submit script that starts every job as its own detached process (as sbatch would), and a status
script that reads each job's exit code (as sacct would). Passing proves that no rule relies on
state held in memory by the Snakemake process or by another job, that every submitted job
carries the resources its rule declares, and that the numbers equal those of the library run
in-process. Also: the SLURM and Kubernetes profiles hold only options this Snakemake knows.
"""

import re
from collections import Counter

import polars as pl
import pytest
import yaml
from conftest import ROOT, run_pipeline, run_snakemake

SUBMIT = """#!/bin/bash
# usage: submit.sh SPOOL RULE MEM_MB RUNTIME JOBSCRIPT -> starts JOBSCRIPT detached; prints its job id
set -eu
spool=$1; rule=$2; mem=$3; runtime=$4; jobscript=$5
job=$(mktemp -p "$spool" job-XXXXXX)
printf '%s\\t%s\\t%s\\n' "$rule" "$mem" "$runtime" > "$job.meta"
setsid bash -c 'echo $$ > "$2.pid"; bash "$1" > "$2.out" 2>&1; echo $? > "$2.rc.part"; mv "$2.rc.part" "$2.rc"' \\
    _ "$jobscript" "$job" < /dev/null > /dev/null 2>&1 &
basename "$job"
"""

STATUS = """#!/bin/bash
# usage: status.sh SPOOL JOBID -> running | success | failed
f="$1/$2"
if [ ! -f "$f.rc" ]; then echo running; elif [ "$(cat "$f.rc")" = 0 ]; then echo success; else echo failed; fi
"""

# keys that name a plugin this test environment lacks (the executor, a storage provider)
PLUGIN_KEYS = {"executor", "default-storage-provider", "default-storage-prefix"}


def declared_resources() -> dict[str, tuple[int, int]]:
    """rule -> (mem_mb, runtime) as written in workflow/rules/*.smk."""
    out = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), flags=re.M | re.S):
            mem, runtime = re.search(r"mem_mb=(\d+)", body), re.search(r"runtime=(\d+)", body)
            if mem and runtime:
                out[name] = (int(mem.group(1)), int(runtime.group(1)))
    return out


def job_stats(text: str) -> Counter:
    """The 'Job stats' table Snakemake prints before running: rule -> number of jobs."""
    block = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^(\w+)\s+(\d+)$", block, flags=re.M)
    return Counter({rule: int(n) for rule, n in rows if rule != "total"})


@pytest.fixture(scope="module")
def cluster_study(tmp_path_factory):
    pytest.importorskip("snakemake_executor_plugin_cluster_generic",
                        reason="pip install snakemake-executor-plugin-cluster-generic (in the test extra)")
    work = tmp_path_factory.mktemp("cluster")
    spool = work / "spool"
    spool.mkdir()
    (work / "smoke.yaml").write_text((ROOT / "config" / "smoke.yaml").read_text())
    for name, text in (("submit.sh", SUBMIT), ("status.sh", STATUS)):
        (work / name).write_text(text)
        (work / name).chmod(0o755)
    profile = work / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump({
        "executor": "cluster-generic",
        "cluster-generic-submit-cmd": f"{work}/submit.sh {spool} {{rule}} {{resources.mem_mb}} {{resources.runtime}}",
        "cluster-generic-status-cmd": f"{work}/status.sh {spool}",
        "jobs": 4, "latency-wait": 5, "rerun-incomplete": True}))
    out = run_snakemake(work, work / "smoke.yaml", "--workflow-profile", str(profile), cores=None,
                        timeout=1800, check=False)
    logs = {p.name: p.read_text()[-1500:] for p in spool.glob("*.out")}
    assert out.returncode == 0, f"snakemake failed:\n{out.stderr[-5000:]}\njob logs: {logs}"
    return work, spool, out.stdout + out.stderr


@pytest.mark.slow
def test_every_job_ran_as_its_own_process_with_its_declared_resources(cluster_study):
    work, spool, text = cluster_study
    planned = job_stats(text)
    planned.pop("all")  # the target rule is local: nothing to submit
    metas = sorted(spool.glob("*.meta"))
    submitted = Counter(p.read_text().split("\t")[0] for p in metas)
    assert submitted == planned and sum(planned.values()) >= 20
    declared = declared_resources()
    pids = set()
    for meta in metas:
        rule, mem, runtime = meta.read_text().split()
        assert (int(mem), int(runtime)) == declared[rule], rule
        job = meta.with_suffix("")
        assert (job.parent / f"{job.name}.rc").read_text().strip() == "0"
        pids.add((job.parent / f"{job.name}.pid").read_text().strip())
        log = (job.parent / f"{job.name}.out").read_text()
        assert "--mode remote" in log and re.findall(r"^localrule (\w+):", log, flags=re.M) == [rule]
    assert len(pids) == len(metas)  # one process per job
    assert (work / "reports" / "index.html").is_file() and (work / "results" / "landscope.duckdb").is_file()


@pytest.mark.slow
def test_cluster_results_equal_the_in_process_library(cluster_study, tmp_path):
    from landscope.config import load_study
    from landscope.store import connect

    work, _, _ = cluster_study
    study = load_study(str(work / "smoke.yaml"))
    spec = next(r for r in study.experiments["halfspace"].runs if r.run == "seed-0")
    local, _, drifts = run_pipeline(spec, tmp_path)
    cols = ["step", "lr", "batch_loss", "batch_loss_at_min", "batch_loss_star", "grad_dot_dir", "grad_norm",
            "dist_to_min"]
    part = "tables/steps/experiment=halfspace/run=seed-0/*.parquet"
    mine = pl.read_parquet(f"{local}/{part}").sort("step").select(cols)
    theirs = pl.read_parquet(f"{work}/results/{part}").sort("step").select(cols)
    assert len(mine) == spec.steps and mine.equals(theirs)  # bit for bit
    con = connect(work / "results")
    assert con.sql("SELECT count(*), max(max_abs_drift) FROM drift").fetchall() == [(12, 0.0)]
    assert con.sql("SELECT count(*) FROM condition_summary").fetchall() == [(3,)]
    assert drifts == [0.0] * spec.n_segments


@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_cluster_profiles_hold_only_options_this_snakemake_knows(name, tmp_path):
    """Each profile, without the keys that need its plugin, plans the smoke DAG (a dry run)."""
    profile = yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())
    assert profile["executor"] == name
    assert {"mem_mb", "runtime"} <= set(profile["default-resources"])
    rest = {k: v for k, v in profile.items() if k not in PLUGIN_KEYS}
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.yaml").write_text(yaml.safe_dump(rest))
    (tmp_path / "smoke.yaml").write_text((ROOT / "config" / "smoke.yaml").read_text())
    out = run_snakemake(tmp_path, tmp_path / "smoke.yaml", "--workflow-profile", str(tmp_path / "p"), "-n",
                        cores=None, timeout=300)
    assert job_stats(out.stdout + out.stderr)["evaluate"] == 12
