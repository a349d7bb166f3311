"""Progress a user can read for ``landscope run``: Snakemake's output, one line at a time, becomes a short
stream (the planned jobs per rule, one line per finished stage with an ETA, a failure summary), while the
full output goes to a log file.

The parsing reads what Snakemake 9 prints: the "Job stats:" table at the start, a job block per started job
(``localrule train:`` ... ``jobid: 4``), ``Finished jobid: 4 (Rule: train)``, ``N of M steps (x%) done``
and ``Error in rule train:`` blocks. The ETA takes the mean seconds per job of each rule from the benchmark
files of earlier runs (``results/benchmarks/<rule>/**.tsv``, column ``s``), else from this run's finished
jobs. Parsing never stops a run: on any surprise the stream falls back to plain step counts.
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from landscope import jobserver

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROVIDED = re.compile(r"^Provided (?:cores|remote nodes): (\d+)")
JOB_STATS = "Job stats:"
STATS_ROW = re.compile(r"^(\S+)\s+(\d+)$")
JOB_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\S+)\)")
STEPS = re.compile(r"(\d+) of (\d+) steps \(\S+\) done")
ERROR = re.compile(r"^Error in rule (\S+):$")
ERROR_LOG = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$")
#: What the job server imports once for every job (landscope.jobserver): the torch jobs' modules. Nothing here
#: may start a thread at import, which a forked child would miss (polars does: never add it).
PRELOAD = ("numpy", "pyarrow", "pyarrow.parquet", "torch", "snakemake.iocontainers", "snakemake.logging",
           "landscope.trajectory.train", "landscope.trajectory.snapshot", "landscope.trajectory.replay",
           "landscope.measures.curvature", "landscope.measures.surfaces", "landscope.measures.diffusion")
JOB_LINES = 20  # at most about this many one-job lines per run, besides the stage lines


def fmt_duration(seconds: float) -> str:
    """``45s``, ``2m13s``, ``1h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def benchmark_means(bench_dir: str | Path) -> dict[str, float]:
    """{rule: mean seconds per job} over the benchmark files ``<bench_dir>/<rule>/**/*.tsv`` (Snakemake's
    ``benchmark:`` output; every row of column ``s`` counts). Unreadable files are skipped."""
    means = {}
    root = Path(bench_dir)
    if not root.is_dir():
        return means
    for rule_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        seconds = []
        for tsv in rule_dir.rglob("*.tsv"):
            try:
                with open(tsv, newline="") as fh:
                    seconds += [float(row["s"]) for row in csv.DictReader(fh, delimiter="\t")]
            except (OSError, KeyError, ValueError, TypeError, csv.Error):
                continue
        if seconds:
            means[rule_dir.name] = sum(seconds) / len(seconds)
    return means


def job_estimates(history: dict[str, float], observed: dict[str, list[float]]) -> dict[str, float]:
    """Seconds per job of each rule: earlier runs' benchmark mean where there is one, else the mean of the
    jobs of that rule finished in this run."""
    est = {rule: sum(d) / len(d) for rule, d in observed.items() if d}
    est.update(history)
    return est


def eta_seconds(remaining: dict[str, int], per_job: dict[str, float], cores: int,
                default: float | None = None) -> float | None:
    """Time left: per rule, remaining jobs x seconds per job, spread over min(cores, remaining jobs) cores
    (the stages mostly run one after another, and 4 jobs cannot use 16 cores). A rule missing from
    ``per_job`` takes ``default`` seconds per job, or counts 0 s when that is None too; the result is None
    when no rule with jobs left has an estimate."""
    todo = {r: n for r, n in remaining.items() if n > 0}
    if not todo:
        return 0.0
    seconds = {r: per_job.get(r, default) for r in todo}
    if all(s is None for s in seconds.values()):
        return None
    return sum(n * seconds[r] / min(max(cores, 1), n) for r, n in todo.items() if seconds[r] is not None)


@dataclass
class Failure:
    """One ``Error in rule`` block: the rule, its job id and the job's log files."""

    rule: str
    jobid: int | None = None
    logs: str | None = None


@dataclass
class Progress:
    """Reads Snakemake's output line by line (``feed``) and says what to print. ``history`` holds the
    seconds per job of earlier runs (``benchmark_means``); ``now`` arguments are seconds on any clock."""

    history: dict[str, float] = field(default_factory=dict)
    start: float = 0.0
    cores: int = 1
    planned: dict[str, int] = field(default_factory=dict)
    total: int | None = None
    done: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    observed: dict[str, list[float]] = field(default_factory=dict)  # this run's seconds per finished job
    failures: list[Failure] = field(default_factory=list)
    dry_run: bool = False
    nothing_to_do: bool = False
    broken: bool = False  # a line did not parse as expected: plain step counts from then on
    tail: deque = field(default_factory=lambda: deque(maxlen=15))
    _stats: list[str] | None = None  # rows of the "Job stats" table being read
    _rule: str | None = None  # the rule of the job block being read
    _error: Failure | None = None
    _started: dict[int, tuple[str, float]] = field(default_factory=dict)  # jobid -> (rule, start)
    _first_start: dict[str, float] = field(default_factory=dict)
    _reported: set = field(default_factory=set)
    _cores_known: bool = False

    def feed(self, line: str, now: float) -> list[str]:
        """The terminal lines that one line of Snakemake's output calls for (usually none)."""
        line = ANSI.sub("", line).rstrip("\r\n")
        if line.strip():
            self.tail.append(line)
        if self.broken:
            return self._plain(line)
        try:
            return self._parse(line, now)
        except Exception:  # any surprise in Snakemake's output must not stop the run
            self.broken = True
            return self._plain(line)

    def _plain(self, line: str) -> list[str]:
        m = STEPS.search(line)
        if not m:
            return []
        done, total = int(m[1]), int(m[2])
        return [f"{done}/{total} jobs done"] if done == total or done % self._every(total) == 0 else []

    def _every(self, total: int) -> int:
        return max(1, math.ceil(total / JOB_LINES))

    def _parse(self, line: str, now: float) -> list[str]:
        if self._stats is not None:
            return self._stats_row(line)
        if line == JOB_STATS:
            self._stats = []
            return []
        if m := PROVIDED.match(line):
            self.cores, self._cores_known = int(m[1]), True
        elif m := JOB_START.match(line):
            self._rule, self._error = m[1], None
        elif m := ERROR.match(line):
            self._error, self._rule = Failure(m[1]), None
            self.failures.append(self._error)
        elif m := JOBID.match(line):
            if self._error is not None:
                self._error.jobid = int(m[1])
            elif self._rule is not None:
                self._started[int(m[1])] = (self._rule, now)
                self._first_start.setdefault(self._rule, now)
                self._rule = None
        elif (m := ERROR_LOG.match(line)) and self._error is not None and self._error.logs is None:
            self._error.logs = m[1]
        elif m := FINISHED.search(line):
            return self._finished(int(m[1]), m[2], now)
        elif m := STEPS.search(line):
            self.total = int(m[2])
        elif line.startswith("This was a dry-run"):
            self.dry_run = True
        elif line.startswith("Nothing to be done"):
            self.nothing_to_do = True
        return []

    def _stats_row(self, line: str) -> list[str]:
        text = line.strip()
        if not text or text.startswith("job ") or set(text) <= {"-", " "}:
            return []
        m = STATS_ROW.match(text)
        if not m:
            raise ValueError(f"unexpected line in Snakemake's job stats: {line!r}")
        if m[1] != "total":
            self._stats.append(text)
            return []
        planned = {r: int(n) for r, n in (STATS_ROW.match(row).groups() for row in self._stats)}
        self._stats = None
        if sum(planned.values()) != int(m[2]):
            raise ValueError("Snakemake's job stats do not add up")
        first = not self.planned  # a dry run prints the table twice: show the plan once
        self.planned, self.total = planned, int(m[2])
        return self.plan_lines() if first else []

    def plan_lines(self) -> list[str]:
        """What the run will do, printed once the job stats are read."""
        jobs = ", ".join(f"{r} {n}" for r, n in self.planned.items())
        cores = f" on {self.cores} core{'s' if self.cores != 1 else ''}" if self._cores_known else ""
        lines = [f"planned {self.total} jobs{cores}: {jobs}"]
        eta = eta_seconds(self.planned, job_estimates(self.history, {}), self.cores)
        if eta is not None:
            lines.append(f"estimated {fmt_duration(eta)} (mean job times of earlier runs, results/benchmarks)")
        return lines

    def remaining(self) -> dict[str, int]:
        return {r: max(n - self.finished.get(r, 0), 0) for r, n in self.planned.items()}

    def eta(self) -> float | None:
        """Seconds left. Without benchmark files, a rule not yet timed in this run takes the mean of this run's
        jobs; with them, such a rule is one without a ``benchmark:`` (``all``, the index page) and counts 0 s."""
        seen = [d for durations in self.observed.values() for d in durations]
        default = sum(seen) / len(seen) if seen and not self.history else None
        return eta_seconds(self.remaining(), job_estimates(self.history, self.observed), self.cores, default)

    def _finished(self, jobid: int, rule: str, now: float) -> list[str]:
        self.done += 1
        self.finished[rule] = self.finished.get(rule, 0) + 1
        began = self._started.pop(jobid, (rule, None))[1]
        if began is not None:
            self.observed.setdefault(rule, []).append(now - began)
        total = max(self.total or 0, self.done)
        eta = self.eta()
        eta = f", ETA {fmt_duration(eta)}" if eta is not None and self.done < total else ""
        planned = self.planned.get(rule)
        if planned is not None and self.finished[rule] >= planned and rule not in self._reported:
            self._reported.add(rule)
            took = now - self._first_start.get(rule, now)
            return [f"{rule} {self.finished[rule]}/{planned} done, {fmt_duration(took)}; "
                    f"overall {self.done}/{total} jobs{eta}"]
        if self.done % self._every(total) == 0:
            where = f"{rule} {self.finished[rule]}/{planned}" if planned else rule
            return [f"  {self.done}/{total} jobs{eta} (latest: {where})"]
        return []

    def summary(self, returncode: int, now: float, log_file: str | Path) -> list[str]:
        """The closing lines: wall time and job-seconds by rule, or what failed and where to look."""
        wall = fmt_duration(now - self.start)
        if returncode != 0:
            lines = [f"snakemake failed (exit {returncode}) after {wall}; {self.done} jobs finished"]
            for f in self.failures:
                lines.append(f"  failed: {f.rule}" + (f" (jobid {f.jobid})" if f.jobid is not None else "")
                             + (f", log {f.logs}" if f.logs else ""))
            if not self.failures:
                lines += ["  last lines of its output:"] + [f"    {t}" for t in self.tail]
            return lines + [f"full output: {log_file}"]
        if self.dry_run:
            return [f"dry run: nothing was executed ({self.total or 0} jobs would run); full output: {log_file}"]
        if self.nothing_to_do or (self.total is None and self.done == 0):
            return [f"nothing to be done: all outputs are up to date; full output: {log_file}"]
        spent = sorted(((sum(d), r) for r, d in self.observed.items()), reverse=True)
        lines = [f"finished {self.done} jobs in {wall}"]
        if spent:
            lines.append("job-seconds by rule: " + ", ".join(f"{r} {fmt_duration(s)}" for s, r in spent))
        return lines


# ----------------------------------------------------------------------------------- the subprocess
CORE_FLAGS = ("-c", "--cores", "-j", "--jobs", "--profile", "-e", "--executor")


def snakemake_args(args: list[str]) -> list[str]:
    """The arguments to pass: ``--cores all`` added unless cores, jobs, a profile or an executor are named."""
    args = args[1:] if args[:1] == ["--"] else list(args)
    named = any(a in CORE_FLAGS or a.startswith(tuple(f + "=" for f in CORE_FLAGS if f.startswith("--")))
                or re.fullmatch(r"-[cj]\d+", a) for a in args)
    return args if named else ["--cores", "all", *args]


def work_dir(args: list[str]) -> Path:
    """The folder Snakemake works in: ``--directory``/``-d`` when given (a study in its own folder), else here."""
    for i, a in enumerate(args):
        if a in ("-d", "--directory") and i + 1 < len(args):
            return Path(args[i + 1])
        if a.startswith("--directory="):
            return Path(a.split("=", 1)[1])
    return Path(".")


def log_path(log_dir: str | Path, when: float) -> Path:
    """``<log_dir>/snakemake-<local time>.log``, with ``-2``, ``-3``... when runs start in the same second."""
    stem = Path(log_dir) / time.strftime("snakemake-%Y%m%dT%H%M%S", time.localtime(when))
    path, n = stem.with_suffix(".log"), 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}.log")
    return path


def run_snakemake(args: list[str], log_dir: str | Path = "logs", bench_dir: str | Path = "results/benchmarks",
                  out=None) -> int:
    """Run Snakemake (this interpreter's) with ``args``, its whole output to a log file under ``log_dir``,
    readable progress to ``out`` (default: sys.stdout). Returns Snakemake's exit status. ``log_dir`` and
    ``bench_dir`` are inside the study's folder (``--directory``, else the current one)."""
    out = out or sys.stdout
    args = snakemake_args(args)
    start = time.time()
    work = work_dir(args)  # the study's own folder holds its log and its benchmark files
    log_dir, bench_dir = work / log_dir, work / bench_dir
    log_file = log_path(log_dir, start)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        history = benchmark_means(bench_dir)
    except OSError:
        history = {}
    progress = Progress(history=history, start=time.monotonic())
    cmd = [sys.executable, "-m", "landscope.snakemake_main", *args]  # Snakemake's CLI, its scheduler loop fixed
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    say = _printer(out)
    say(f"landscope run: snakemake {' '.join(args)}")
    say(f"  full output: {log_file}")
    server = jobserver.start(PRELOAD)  # jobs on this machine fork from one warm interpreter (torch imported once)
    if server is not None:
        env.update(server.env)
        say("  job server: on (LANDSCOPE_JOBSERVER=off runs every job as its own process)")
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            for raw in proc.stdout:
                log.write(raw)
                log.flush()
                for piece in raw.decode("utf-8", "replace").split("\r"):
                    for text in progress.feed(piece, time.monotonic()):
                        say(text)
            returncode = proc.wait()
        except KeyboardInterrupt:
            say("interrupted: waiting for Snakemake to stop its jobs")
            rest, _ = proc.communicate()
            log.write(rest or b"")
            say(f"full output: {log_file}")
            return 130
        finally:
            if server is not None:
                server.stop()
    for text in progress.summary(returncode, time.monotonic(), log_file):
        say(text)
    return returncode


def _printer(out):
    def say(text: str) -> None:
        print(text, file=out, flush=True)
    return say
