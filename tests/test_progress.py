"""`landscope run`'s progress stream (landscope.progress): parsed from real Snakemake 9.27 output, with ETAs checked
against hand-computed values, and run end to end on the smoke study.

tests/data/snakemake9_smoke.log is the stderr of `snakemake --cores 2 --configfile config/smoke.yaml` (37 jobs,
job output interleaved, tqdm bars with carriage returns); snakemake9_failed.log is a run of the same study that
failed in an evaluate job. Both are trimmed of the long `input:`/`output:`/`reason:`/`resources:` lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

from landscope.progress import (
    Progress,
    benchmark_means,
    eta_seconds,
    fmt_duration,
    job_estimates,
    log_path,
    snakemake_args,
)

DATA = Path(__file__).parent / "data"
SMOKE_PLAN = {"train": 4, "curvature": 4, "evaluate": 12, "conditions": 2, "plateaus": 2, "surfaces": 4,
              "bounds": 2, "table2": 1, "database": 1, "report": 2, "report_index": 1, "report_site": 1, "all": 1}
# the overall job count at which each rule's last job finished, read off the log's "Finished jobid" lines
SMOKE_STAGE_ENDS = {"train": 11, "curvature": 16, "evaluate": 23, "plateaus": 26, "surfaces": 28, "conditions": 29,
                    "table2": 30, "bounds": 31, "database": 32, "report": 34, "report_index": 35,
                    "report_site": 36, "all": 37}
STAGE_LINE = re.compile(r"^(\S+) (\d+)/(\d+) done, \S+; overall (\d+)/(\d+) jobs")


def replay(text: str, progress: Progress | None = None) -> tuple[Progress, list[str]]:
    """Feed a captured output to a Progress as `landscope run` does (pieces split at carriage returns); the
    clock advances one second per piece."""
    progress = progress or Progress()
    printed, now = [], 0.0
    for line in text.splitlines(keepends=True):
        for piece in line.split("\r"):
            now += 1.0
            printed += progress.feed(piece, now)
    return progress, printed


def stage_ends(printed: list[str]) -> dict[str, int]:
    ends = {}
    for line in printed:
        if m := STAGE_LINE.match(line):
            assert m[2] == m[3], line
            ends[m[1]] = int(m[4])
    return ends


def test_planned_counts_are_parsed_exactly():
    progress, printed = replay((DATA / "snakemake9_smoke.log").read_text())
    assert progress.planned == SMOKE_PLAN
    assert list(progress.planned) == list(SMOKE_PLAN)  # in Snakemake's order
    assert (progress.total, progress.cores, progress.broken) == (37, 2, False)
    assert printed[0] == ("planned 37 jobs on 2 cores: train 4, curvature 4, evaluate 12, conditions 2, plateaus 2, "
                          "surfaces 4, bounds 2, table2 1, database 1, report 2, report_index 1, report_site 1, all 1")


def test_a_stage_line_when_each_rule_finishes_its_last_job():
    progress, printed = replay((DATA / "snakemake9_smoke.log").read_text())
    assert stage_ends(printed) == SMOKE_STAGE_ENDS
    assert progress.done == 37 and progress.finished == SMOKE_PLAN
    assert printed[-1] == "all 1/1 done, 3s; overall 37/37 jobs"  # 3 lines (s) from its jobid to its end; no ETA
    # between stage lines, a one-job line every ceil(37 / 20) = 2 jobs
    counts = [int(m[1]) for line in printed if (m := re.match(r"^  (\d+)/37 jobs", line))]
    assert counts == [n for n in range(2, 37, 2) if n not in SMOKE_STAGE_ENDS.values()]
    summary = progress.summary(0, progress.start + 84.0, "logs/x.log")
    assert summary[0] == "finished 37 jobs in 1m24s"
    assert summary[1].startswith("job-seconds by rule: ")


def test_a_failed_run_names_the_failed_job_and_its_log():
    progress, printed = replay((DATA / "snakemake9_failed.log").read_text())
    assert stage_ends(printed) == {"train": 11, "curvature": 16}
    assert progress.finished == {"train": 4, "curvature": 4, "evaluate": 10, "surfaces": 1}
    summary = progress.summary(1, progress.start + 40.0, "logs/snakemake-1.log")
    assert summary == ["snakemake failed (exit 1) after 40s; 19 jobs finished",
                       "  failed: evaluate (jobid 18), log logs/evaluate/digits_mlp/width-8_seed-0/00002.log",
                       "full output: logs/snakemake-1.log"]


def test_a_failure_outside_any_job_shows_the_last_lines():
    text = ("Building DAG of jobs...\nMissingInputException in rule train in file workflow/rules/train.smk:\n"
            "Missing input files for rule train:\n    affected files:\n        data/x.npz\n")
    progress, printed = replay(text)
    assert printed == []
    summary = progress.summary(1, progress.start + 2.0, "logs/s.log")
    assert summary[0] == "snakemake failed (exit 1) after 2s; 0 jobs finished"
    assert summary[-4:] == ["    Missing input files for rule train:", "        affected files:",
                            "            data/x.npz", "full output: logs/s.log"]


def test_unreadable_job_stats_fall_back_to_plain_counts():
    text = (DATA / "snakemake9_smoke.log").read_text().replace("evaluate           12", "evaluate  twelve")
    progress, printed = replay(text)
    assert progress.broken
    assert printed == [f"{n}/37 jobs done" for n in range(2, 37, 2)] + ["37/37 jobs done"]


def test_benchmark_means_and_the_eta(tmp_path):
    bench = tmp_path / "benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for path, seconds in [("train/exp/seed-0.tsv", [30.0]), ("train/exp/seed-1.tsv", [50.0]),
                          ("evaluate/exp/seed-0/00000.tsv", [6.0, 10.0])]:  # two repeats in one file
        (bench / path).parent.mkdir(parents=True, exist_ok=True)
        (bench / path).write_text(header + "".join(f"{s:.2f}\t0:00:30\t1\t1\t1\t1\t0\t0\t90\t{s}\n" for s in seconds))
    (bench / "report").mkdir()
    (bench / "report" / "broken.tsv").write_text("no seconds column\n1\n")
    means = benchmark_means(bench)
    assert means == {"train": 40.0, "evaluate": 8.0}
    assert benchmark_means(tmp_path / "missing") == {}

    remaining = {"train": 4, "evaluate": 12, "report": 1, "all": 0}
    assert eta_seconds(remaining, means, cores=2) == 4 * 40 / 2 + 12 * 8 / 2  # 128 s; report unknown: 0
    assert eta_seconds(remaining, means, cores=16) == 4 * 40 / 4 + 12 * 8 / 12  # 4 jobs use only 4 cores
    assert eta_seconds(remaining, means, cores=2, default=5.0) == 128 + 5.0
    assert eta_seconds({"report": 3}, means, cores=2) is None
    assert eta_seconds({"train": 0}, means, cores=2) == 0.0
    assert job_estimates(means, {"train": [1.0], "report": [2.0, 4.0]}) == {"train": 40.0, "evaluate": 8.0,
                                                                            "report": 3.0}

    plan = ("Provided cores: 2\nJob stats:\njob         count\n--------  -------\ntrain           4\n"
            "evaluate       12\nreport          1\ntotal          17\n")
    _, printed = replay(plan, Progress(history=means))
    assert printed[1] == "estimated 2m08s (mean job times of earlier runs, results/benchmarks)"


def test_without_history_the_eta_comes_from_this_runs_jobs():
    progress = Progress(start=0.0)
    lines = ["Provided cores: 2", "Job stats:", "job      count", "-----  -------", "a            2",
             "b            1", "total        3", "", "localrule a:", "    jobid: 1", "localrule a:", "    jobid: 2"]
    assert [out for line in lines for out in progress.feed(line, 0.0)] == ["planned 3 jobs on 2 cores: a 2, b 1"]
    # a job line every ceil(3 / 20) = 1 job; a's estimate is its first job's 10 s, and b, never timed, takes the
    # mean of this run's jobs (10 s): 1 x 10 + 1 x 10 s
    assert progress.feed("Finished jobid: 1 (Rule: a)", 10.0) == ["  1/3 jobs, ETA 20s (latest: a 1/2)"]
    assert progress.feed("1 of 3 steps (33%) done", 10.0) == []
    # the job that finishes a stage gets the stage line: a took 16 s; b takes the mean of (10, 16)
    assert progress.feed("[Tue Dec  1 20:46:05 2026]Finished jobid: 2 (Rule: a)", 16.0) == [
        "a 2/2 done, 16s; overall 2/3 jobs, ETA 13s"]
    assert progress.observed == {"a": [10.0, 16.0]}


def test_with_history_an_untimed_rule_counts_nothing_until_it_runs():
    progress = Progress(history={"a": 10.0})
    lines = ["Provided cores: 1", "Job stats:", "job      count", "-----  -------", "a            3",
             "b            1", "total        4", "localrule a:", "    jobid: 1"]
    assert [out for line in lines for out in progress.feed(line, 0.0)][1] == (
        "estimated 30s (mean job times of earlier runs, results/benchmarks)")
    # a's 30 s in this run do not replace its benchmark mean; b (no benchmark files) adds 0 s
    assert progress.feed("Finished jobid: 1 (Rule: a)", 30.0) == ["  1/4 jobs, ETA 20s (latest: a 1/3)"]
    assert progress.feed("localrule b:", 30.0) + progress.feed("    jobid: 2", 30.0) == []
    assert progress.feed("Finished jobid: 2 (Rule: b)", 34.0) == ["b 1/1 done, 4s; overall 2/4 jobs, ETA 20s"]


def test_fmt_duration():
    assert [fmt_duration(s) for s in (0, 59.4, 133, 3599, 3900)] == ["0s", "59s", "2m13s", "59m59s", "1h05m"]


def test_snakemake_args_default_to_all_cores():
    assert snakemake_args([]) == ["--cores", "all"]
    assert snakemake_args(["--configfile", "c.yaml"]) == ["--cores", "all", "--configfile", "c.yaml"]
    assert snakemake_args(["--", "-n"]) == ["--cores", "all", "-n"]
    for given in (["--cores", "4"], ["-c4"], ["-j", "2"], ["--jobs=3"], ["--profile", "profiles/slurm"]):
        assert snakemake_args(given) == given


def test_log_paths_do_not_collide(tmp_path):
    first = log_path(tmp_path, 0.0)
    first.write_text("")
    second = log_path(tmp_path, 0.0)
    assert second.parent == tmp_path and second != first and second.name.endswith("-2.log")


# ----------------------------------------------------------------------------------- end to end
def workflow_copy(dest: Path) -> Path:
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = conftest.ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def landscope_run(work: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "landscope.cli", "run", *args], cwd=work, capture_output=True,
                          text=True, timeout=timeout)


def logged(out: subprocess.CompletedProcess, work: Path) -> Path:
    """The log file `landscope run` said it writes, checked to exist."""
    name = re.search(r"^  full output: (\S+)$", out.stdout, flags=re.MULTILINE)[1]
    assert (work / name).is_file() and name.startswith("logs/snakemake-")
    return work / name


def test_dry_run_end_to_end(tmp_path):
    work = workflow_copy(tmp_path)
    out = landscope_run(work, "-n", "--configfile", "config/smoke.yaml", "--cores", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    text = logged(out, work).read_text()
    assert "This was a dry-run" in text
    plan = conftest.job_stats(text)
    total = sum(plan.values())
    assert f"planned {total} jobs: " + ", ".join(f"{r} {n}" for r, n in plan.items()) in out.stdout
    assert f"dry run: nothing was executed ({total} jobs would run)" in out.stdout


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    work = workflow_copy(tmp_path)
    out = landscope_run(work, "--configfile", "config/smoke.yaml", "--cores", "2", timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    plan = conftest.job_stats(logged(out, work).read_text())
    lines = out.stdout.splitlines()
    for rule, n in plan.items():
        assert sum(line.startswith(f"{rule} {n}/{n} done, ") for line in lines) == 1, (rule, out.stdout)
    assert f"finished {sum(plan.values())} jobs in " in out.stdout

    # again, the report pages only: the ETA at the start comes from the first run's benchmark files
    history = benchmark_means(work / "results" / "benchmarks")
    assert history["report"] > 0
    again = landscope_run(work, "--configfile", "config/smoke.yaml", "--cores", "2", "--forcerun", "report",
                          timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    plan = conftest.job_stats(logged(again, work).read_text())
    assert plan["report"] == 2
    expected = fmt_duration(eta_seconds(dict(plan), history, cores=2))
    assert f"estimated {expected} (mean job times of earlier runs" in again.stdout

    # a job that fails: named with its log, the exit status passed on
    script = work / "workflow" / "scripts" / "report_index.py"
    script.write_text("raise RuntimeError('injected by test_progress')\n")
    failed = landscope_run(work, "--configfile", "config/smoke.yaml", "--cores", "2", "--forcerun", "report_index",
                           timeout=600)
    assert failed.returncode != 0
    log = logged(failed, work)
    assert re.search(r"^  failed: report_index \(jobid \d+\), log logs/report_index\.log$", failed.stdout,
                     flags=re.MULTILINE), failed.stdout
    assert failed.stdout.splitlines()[-1] == f"full output: {log.relative_to(work)}"
    assert "injected by test_progress" in log.read_text()


def test_a_study_in_its_own_folder_keeps_its_log_and_reads_its_own_benchmarks():
    from landscope.progress import work_dir

    assert work_dir(["--cores", "2", "--directory", "studies/a"]) == Path("studies/a")
    assert work_dir(["-d", "b", "-n"]) == Path("b") and work_dir(["--directory=c"]) == Path("c")
    assert work_dir(["--cores", "all"]) == Path(".")
