"""The smoke study through the real SLURM executor plugin (snakemake-executor-plugin-slurm, and its
jobstep plugin inside each job) and the shipped profiles/slurm, with only SLURM itself replaced: this
file, run as a script, is a stub for sbatch, squeue, sacct, scancel, sinfo, scontrol, sacctmgr and
srun. The stub sbatch starts each job script as a detached local process in the directory it was
given, writes its output where --output says, and the stub sacct/squeue answer in SLURM's formats
(`JOBID|STATE`). Every sbatch call is kept, so the tests read what a real cluster would have been
asked for: the number of submissions, --mem, -t, --gpus.
"""

import argparse
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

SPOOL_ENV = "STUB_SLURM_SPOOL"  # not SLURM_*: the jobstep plugin clears those before srun
NO_RUN_ENV = "STUB_SLURM_NO_RUN"  # set: sbatch records the job and marks it FAILED without running it
TOOLS = ("sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol", "sacctmgr", "srun")
ACCOUNT = "landscope_test"


# ------------------------------------------------------------------------------------- the stub
def _spool() -> Path:
    return Path(os.environ[SPOOL_ENV])


def _new_job_id() -> str:
    with open(_spool() / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 1000) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return str(n)


def _set_state(job_id: str, state: str, rc: int | None = None) -> None:
    tmp = _spool() / f"{job_id}.state.part"
    tmp.write_text(json.dumps({"state": state, "rc": rc}))
    tmp.replace(_spool() / f"{job_id}.state")


def _state(job_id: str) -> str:
    return json.loads((_spool() / f"{job_id}.state").read_text())["state"]


def sbatch(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sbatch", allow_abbrev=False)
    for opt in ("--job-name", "--output", "--comment", "--mem", "--mem-per-cpu", "--cpus-per-task", "--gpus",
                "--gres", "--ntasks", "--wrap"):
        p.add_argument(opt)
    p.add_argument("-A", dest="account")
    p.add_argument("-p", dest="partition")
    p.add_argument("-t", dest="time")
    p.add_argument("-D", dest="workdir", default=os.getcwd())
    p.add_argument("--parsable", action="store_true")
    p.add_argument("script", nargs="?")
    args, unknown = p.parse_known_args(argv)
    job_id = _new_job_id()
    script = args.wrap if args.wrap is not None else sys.stdin.read()
    record = {**vars(args), "id": job_id, "script": script, "unknown": unknown, "argv": argv}
    no_run = bool(os.environ.get(NO_RUN_ENV))
    _set_state(job_id, "FAILED" if no_run else "RUNNING", 1 if no_run else None)
    part = _spool() / f"{job_id}.json.part"  # a concurrent sacct lists *.json: each one whole, with its state
    part.write_text(json.dumps(record))
    part.replace(_spool() / f"{job_id}.json")
    if not no_run:
        subprocess.Popen([sys.executable, __file__, "_run", job_id], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job_id)
    return 0


def run_job(job_id: str) -> int:
    """The job's allocation: its script under /bin/sh with SLURM's variables, output to --output."""
    job = json.loads((_spool() / f"{job_id}.json").read_text())
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": job["job_name"],
           "SLURM_CPUS_PER_TASK": job["cpus_per_task"] or "1", "SLURM_SUBMIT_DIR": job["workdir"]}
    if job["gpus"]:
        env["SLURM_GPUS"] = job["gpus"]
    log = Path(job["output"].replace("%j", job_id))
    with open(log, "w") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", job["script"]], cwd=job["workdir"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        (_spool() / f"{job_id}.pid").write_text(str(proc.pid))
        rc = proc.wait()
    if _state(job_id) == "RUNNING":  # scancel may have marked it CANCELLED meanwhile
        _set_state(job_id, "COMPLETED" if rc == 0 else "FAILED", rc)
    return 0


def _named(argv: list[str]) -> list[tuple[str, str]]:
    """(id, state) of every job whose --job-name is the one after --name."""
    name = argv[argv.index("--name") + 1]
    jobs = [json.loads(p.read_text()) for p in _spool().glob("*.json")]
    return [(j["id"], _state(j["id"])) for j in jobs if j["job_name"] == name]


def query(tool: str, argv: list[str]) -> int:
    if tool == "sacct" and "-j" in argv:  # `sacct -j ID.STEP --format=Reason`: why a job failed
        job_id = argv[argv.index("-j") + 1].split(".")[0]
        state = json.loads((_spool() / f"{job_id}.state").read_text())
        print(f"NonZeroExitCode:{state['rc']}" if argv[argv.index("-j") + 1].endswith(".0") else "")
        return 0
    if tool == "sacct" and "--name" not in argv:  # `sacct -nu USER -o Account`: the account of your latest job
        print(ACCOUNT)
        return 0
    for job_id, state in _named(argv):
        print(f"{job_id}|{state}")
    return 0


def scancel(argv: list[str]) -> int:
    for job_id in (a for a in argv if a.isdigit()):
        pid = _spool() / f"{job_id}.pid"
        _set_state(job_id, "CANCELLED")
        if pid.is_file():
            try:
                os.killpg(int(pid.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    return 0


def srun(argv: list[str]) -> int:
    """A job step: the command after srun's own options, run in place."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    os.execvp(argv[i], argv[i:])


def stub_main(tool: str, argv: list[str]) -> int:
    if tool == "_run":
        return run_job(argv[0])
    with open(_spool() / "calls.log", "a") as f:
        f.write(json.dumps([tool, *argv]) + "\n")
    if tool == "sbatch":
        return sbatch(argv)
    if tool in ("sacct", "squeue"):
        return query(tool, argv)
    if tool == "scancel":
        return scancel(argv)
    if tool == "sinfo":  # `sinfo -o %P`: the partitions, the default one starred
        print("PARTITION\ncompute*\ngpu")
        return 0
    if tool == "scontrol":  # `scontrol show config`
        print("MinJobAge               = 300 sec\nMaxArraySize            = 1001")
        return 0
    if tool == "sacctmgr":  # the accounts of this user
        print(ACCOUNT)
        return 0
    if tool == "srun":
        return srun(argv)
    raise SystemExit(f"slurm stub: unknown tool {tool}")


if __name__ == "__main__":
    sys.exit(stub_main(sys.argv[1], sys.argv[2:]))


# ------------------------------------------------------------------------------------- the tests
import polars as pl  # noqa: E402 (the stub above runs on every sacct call: it imports only the stdlib)
import pytest  # noqa: E402
from conftest import ROOT, chain_rules, job_stats, local_rules, run_pipeline, snakemake_cmd  # noqa: E402

LOCAL_RULES = local_rules()
CHAIN = [r for r in chain_rules() if r != "diffusion"]  # the chain's rules that the smoke study runs
# a group job's name: the group's, then its rules (Snakemake names at most 5, then "...")
CHAIN_JOB = "_".join(["run", *CHAIN[:5], *(["..."] if len(CHAIN) > 5 else [])])
SMOKE_RUNS = 4  # halfspace seed-0/1, digits_mlp width-8/32
STEPS_COLUMNS = ["step", "lr", "batch_loss", "batch_loss_at_min", "grad_dot_dir", "grad_norm", "dist_to_min"]


def install_stub(work: Path) -> dict:
    """The stub executables in work/bin, first on PATH; the environment for Snakemake."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[test]' (the SLURM plugin)")
    spool, bindir = work / "spool", work / "bin"
    spool.mkdir()
    bindir.mkdir()
    for tool in TOOLS:
        (bindir / tool).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {tool} "$@"\n')
        (bindir / tool).chmod(0o755)
    (work / "smoke.yaml").write_text((ROOT / "config" / "smoke.yaml").read_text())
    return {**os.environ, "PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            SPOOL_ENV: str(spool)}


def submissions(work: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (work / "spool").glob("*.json")), key=lambda j: int(j["id"]))


def submitted_rule(job: dict) -> str:
    """The job's name from its sbatch --comment, rule_<name>_wildcards_<values>: a rule's name, or for a
    group job the group's name and its rules (CHAIN_JOB)."""
    return job["comment"].removeprefix("rule_").split("_wildcards_")[0]


def run_slurm(work: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The smoke study in `work` through the shipped profiles/slurm; the plugin's first status query
    after 1 s instead of 40 s (the stub's jobs are short)."""
    cmd = snakemake_cmd(work, work / "smoke.yaml", "--workflow-profile", str(ROOT / "profiles" / "slurm"),
                        "--slurm-init-seconds-before-status-checks", "1", *args, cores=None)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, check=False)
    if check and out.returncode != 0:
        logs = {p.name: p.read_text()[-2000:] for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")}
        raise AssertionError(f"snakemake failed:\n{out.stderr[-6000:]}\njob logs: {logs}")
    return out


def declared_resources() -> dict[str, tuple[int, int]]:
    """rule -> (mem_mb, runtime) as written in workflow/rules/*.smk."""
    out = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        rules = re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), flags=re.MULTILINE | re.DOTALL)
        for name, body in rules:
            mem, runtime = re.search(r"mem_mb=(\d+)", body), re.search(r"runtime=(\d+)", body)
            if mem and runtime:  # fetch_data declares neither (a localrule)
                out[name] = (int(mem.group(1)), int(runtime.group(1)))
    return out


@pytest.fixture(scope="module")
def slurm_ungrouped(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm")
    out = run_slurm(work, install_stub(work))
    return work, out.stdout + out.stderr


@pytest.fixture(scope="module")
def slurm_grouped(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_grouped")
    out = run_slurm(work, install_stub(work), "--profile", str(ROOT / "profiles" / "cluster"))
    return work, out.stdout + out.stderr


@pytest.mark.slow
def test_slurm_profile_runs_the_smoke_study_one_sbatch_job_per_rule_job(slurm_ungrouped):
    work, text = slurm_ungrouped
    planned = job_stats(text)
    jobs = submissions(work)
    assert Counter(submitted_rule(j) for j in jobs) == {r: n for r, n in planned.items() if r not in LOCAL_RULES}
    # 2 experiments x (conditions, plateaus, bounds, report) + table2, database, generalization, report_index,
    # report_site, all
    assert sum(planned[r] for r in LOCAL_RULES) == 14
    declared = declared_resources()
    for job in jobs:
        rule = submitted_rule(job)
        assert (int(job["mem"]), int(job["time"])) == declared[rule], rule
        assert job["account"] == ACCOUNT and job["partition"] == "compute"  # guessed: sacct, then sinfo's '*'
        assert job["gpus"] is None and job["gres"] is None  # device: cpu asks for no GPU
        assert _state_of(work, job) == "COMPLETED"
    assert (work / "reports" / "index.html").is_file() and (work / "results" / "landscope.duckdb").is_file()


@pytest.mark.slow
def test_slurm_study_database_opens_in_the_duckdb_cli_from_pypi(slurm_ungrouped):
    """results/landscope.duckdb as a colleague opens it on the login node: the `duckdb` command of
    the duckdb-cli package (1.x, older than the duckdb library that wrote the file)."""
    work, _ = slurm_ungrouped
    cli = Path(sys.executable).parent / "duckdb"
    if not cli.is_file():
        pytest.skip("pip install -e '.[test]' (duckdb-cli)")
    out = subprocess.run([str(cli), "-readonly", "-csv", "-noheader", str(work / "results" / "landscope.duckdb"),
                          "-c", "SELECT count(*), max(max_abs_drift) FROM drift; SELECT count(*) FROM runs"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["12,0.0", "4"]  # 4 runs x 3 segments, replayed bit for bit


@pytest.mark.slow
def test_slurm_results_equal_the_in_process_library(slurm_ungrouped, tmp_path):
    from landscope.config import load_study  # here: the stub part of this file imports only the stdlib

    work, _ = slurm_ungrouped
    spec = next(r for r in load_study(str(work / "smoke.yaml")).experiments["halfspace"].runs if r.run == "seed-0")
    local, _, drifts = run_pipeline(spec, tmp_path)
    part = "tables/steps/experiment=halfspace/run=seed-0/*.parquet"
    mine = pl.read_parquet(f"{local}/{part}").sort("step").select(STEPS_COLUMNS)
    theirs = pl.read_parquet(f"{work}/results/{part}").sort("step").select(STEPS_COLUMNS)
    assert len(mine) == spec.steps and mine.equals(theirs)  # bit for bit
    assert drifts == [0.0] * spec.n_segments


@pytest.mark.slow
def test_slurm_cluster_preset_submits_one_sbatch_job_per_run(slurm_grouped, slurm_ungrouped):
    """profiles/slurm with profiles/cluster: each run's train, replay segments, curvature and surfaces
    in one sbatch job sized for running them one after another (one CPU, the largest mem_mb, the sum
    of the runtimes); the same numbers as one job per rule job."""
    work, text = slurm_grouped
    jobs = submissions(work)
    stats = job_stats(text)
    assert len(jobs) == SMOKE_RUNS == stats["train"]
    declared = declared_resources()
    per_run = {rule: stats[rule] // SMOKE_RUNS for rule in CHAIN}
    assert per_run == {"train": 1, "snapshot": 1, "select_minimizer": 1, "evaluate": 3, "curvature": 1, "surfaces": 1}
    runtime = sum(n * declared[rule][1] for rule, n in per_run.items())
    for job in jobs:
        assert submitted_rule(job) == CHAIN_JOB  # the group's name, its rules
        assert (job["cpus_per_task"], int(job["mem"]), int(job["time"])) == ("1", 2000, runtime)
        assert _state_of(work, job) == "COMPLETED"
    assert (work / "reports" / "index.html").is_file() and (work / "results" / "landscope.duckdb").is_file()
    part = "results/tables/steps/experiment=halfspace/run=seed-0"
    grouped = pl.read_parquet(f"{work}/{part}/*.parquet").sort("step").select(STEPS_COLUMNS)
    alone = pl.read_parquet(f"{slurm_ungrouped[0]}/{part}/*.parquet").sort("step").select(STEPS_COLUMNS)
    assert len(grouped) == 120 and grouped.equals(alone)  # bit for bit, whichever way the jobs were packed


def _state_of(work: Path, job: dict) -> str:
    return json.loads((work / "spool" / f"{job['id']}.state").read_text())["state"]


@pytest.mark.parametrize(("device", "args", "gpus"), [
    ("cpu", (), None),
    ("cuda", (), "1"),
    ("cuda", ("--set-resources", "train:gpu_model=a100"), "a100:1"),
    ("cuda", ("--profile", str(ROOT / "profiles" / "cluster")), "1"),
], ids=["cpu", "cuda", "cuda-gpu_model", "cuda-cluster-preset"])
def test_slurm_sbatch_asks_for_a_gpu_only_when_the_device_is_cuda(device, args, gpus, tmp_path):
    """The first jobs' sbatch calls (the stub records them and runs nothing, so Snakemake then stops)."""
    env = {**install_stub(tmp_path), NO_RUN_ENV: "1"}
    out = run_slurm(tmp_path, env, "--config", f"device={device}", "--retries", "0", *args, check=False)
    jobs = submissions(tmp_path)
    assert out.returncode != 0 and len(jobs) == SMOKE_RUNS  # the first job of each run
    assert all(j["gpus"] == gpus and j["gres"] is None for j in jobs)
    assert [submitted_rule(j) for j in jobs] == [CHAIN_JOB if args[:1] == ("--profile",) else "train"] * len(jobs)
