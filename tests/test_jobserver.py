"""landscope.jobserver: a job handed to the warm server behaves as the same job run as its own process (streams,
exit status, folder, environment, arguments), is stopped with its job process, and runs in place whenever
the server is not its own; a study run through it writes the same tables as one without it."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from landscope import jobserver

JOB = '''"""A job script as the workflow writes them: hand_over() first."""
from landscope.jobserver import hand_over

hand_over()

import os
import sys
from pathlib import Path

Path(sys.argv[1]).write_text(f"{os.getpid()} {os.getppid()} {os.getcwd()} {os.environ.get('X')} {sys.argv[2:]}")
print("to stdout")
print("to stderr", file=sys.stderr)
mode = sys.argv[2]
if mode == "raise":
    raise RuntimeError("raised by the job")
if mode == "sleep":
    Path(sys.argv[1] + ".pid").write_text(str(os.getpid()))
    import time
    time.sleep(60)
sys.exit(int(mode))
'''


@pytest.fixture(scope="module")
def server():
    s = jobserver.start()
    assert s is not None, "no job server on this Linux machine"
    yield s
    s.stop()


def job(tmp_path, mode, env, cwd=None, **kw):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    out = tmp_path / f"out-{mode}.txt"
    proc = subprocess.run([sys.executable, str(script), str(out), mode], cwd=cwd or tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, **kw)
    return proc, out.read_text().split(" ", 4) if out.exists() else None


def test_a_handed_over_job_keeps_its_streams_status_folder_environment_and_arguments(tmp_path, server):
    env = dict(os.environ, **server.env, X="from the job")
    (tmp_path / "sub").mkdir()
    for code in ("0", "3"):
        proc, (pid, ppid, cwd, x, rest) = job(tmp_path, code, env, cwd=tmp_path / "sub")
        assert proc.returncode == int(code)
        assert proc.stdout == "to stdout\n" and proc.stderr == "to stderr\n"
        assert cwd == str(tmp_path / "sub") and x == "from" and rest == f"the job ['{code}']"
        assert int(ppid) == server.proc.pid  # it ran in a child of the server, not in the job process
    proc, _ = job(tmp_path, "raise", env)
    assert proc.returncode == 1
    assert "RuntimeError: raised by the job" in proc.stderr and proc.stderr.startswith("to stderr\nTraceback")


def test_without_its_own_server_a_job_runs_in_place(tmp_path, server):
    path = server.env[jobserver.ENV].rpartition(":")[0]
    cases = {"no server": {},
             "not an ancestor (a cluster job)": {jobserver.ENV: f"{path}:{server.proc.pid}"},
             "off": {jobserver.ENV: "off"}}
    for what, extra in cases.items():
        env = {k: v for k, v in os.environ.items() if k != jobserver.ENV} | extra
        proc, (pid, ppid, *_) = job(tmp_path, "0", env)
        assert proc.returncode == 0 and int(ppid) != server.proc.pid, what
        assert proc.stderr == "to stderr\n", what
    env = dict(os.environ, **{jobserver.ENV: f"{tmp_path / 'gone'}:{os.getpid()}"})  # a server that is not there
    proc, (pid, ppid, *_) = job(tmp_path, "0", env)
    assert proc.returncode == 0 and "did not take the job" in proc.stderr and "running it here" in proc.stderr


def test_a_stopped_job_process_stops_its_child(tmp_path, server):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    out = tmp_path / "out-sleep.txt"
    client = subprocess.Popen([sys.executable, str(script), str(out), "sleep"], cwd=tmp_path,
                              env=dict(os.environ, **server.env), stdout=subprocess.DEVNULL)
    pid_file = Path(str(out) + ".pid")
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert child != client.pid
    client.send_signal(signal.SIGTERM)  # what Snakemake does to a job it stops
    client.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the server left the child of a stopped job running"


def test_a_job_whose_server_stops_fails_with_a_message(tmp_path):
    s = jobserver.start()
    script = tmp_path / "job.py"
    script.write_text(JOB)
    out = tmp_path / "out-sleep.txt"
    client = subprocess.Popen([sys.executable, str(script), str(out), "sleep"], cwd=tmp_path,
                              env=dict(os.environ, **s.env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    pid_file = Path(str(out) + ".pid")
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    s.stop()
    _, err = client.communicate(timeout=30)
    assert client.returncode != 0 and "job server stopped before the job ended" in err
    assert not Path(f"/proc/{child}").exists()
    assert not Path(s.folder).exists()


def benchmark_rows(results: Path, rule: str) -> list[dict]:
    rows = []
    for f in sorted((results / "benchmarks" / rule).rglob("*.tsv")):
        head, values = f.read_text().splitlines()[:2]
        rows.append(dict(zip(head.split("\t"), values.split("\t"))))
    return rows


def timing(column: str) -> bool:
    """The wall-clock columns (``wall_s``, ``train_wall_s``, ``llc_wall_s``...): the only ones that may differ."""
    return column.endswith("wall_s")


@pytest.mark.slow
def test_a_study_through_the_server_writes_the_same_tables(tmp_path):
    """The smoke study through `landscope run` with and without the server: every table's every
    non-timing value equal, and the server really ran the torch jobs (their job processes stayed small)."""
    import duckdb
    from test_progress import workflow_copy

    works = {}
    for mode in ("on", "off"):
        (tmp_path / mode).mkdir()
        work = workflow_copy(tmp_path / mode)
        env = {k: v for k, v in os.environ.items() if k != jobserver.ENV}
        env |= {jobserver.ENV: "off"} if mode == "off" else {}
        out = subprocess.run([sys.executable, "-m", "landscope.cli", "run", "--configfile", "config/smoke.yaml",
                              "--cores", "2"], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stdout + out.stderr
        assert ("job server: on" in out.stdout) == (mode == "on")
        works[mode] = work / "results"
    # the torch jobs' processes: ~30 MB waiting for the server, > 150 MB importing torch themselves
    for rule in ("train", "snapshot", "evaluate"):
        on = [float(r["max_rss"]) for r in benchmark_rows(works["on"], rule)]
        off = [float(r["max_rss"]) for r in benchmark_rows(works["off"], rule)]
        assert on and len(on) == len(off) and max(on) < 100 < 150 < min(off), (rule, on, off)
    tables = sorted(p.name for p in (works["off"] / "tables").iterdir() if p.is_dir())
    assert tables == sorted(p.name for p in (works["on"] / "tables").iterdir() if p.is_dir())
    assert {"steps", "snapshots", "curvature", "condition_summary", "surface_2d"} <= set(tables)
    con = duckdb.connect()
    compared = 0
    for table in tables:
        frames = [con.sql(f"SELECT * FROM read_parquet('{works[m]}/tables/{table}/**/*.parquet', "
                          "hive_partitioning = true, union_by_name = true)").fetchall() for m in ("on", "off")]
        cols = [c for c in con.sql(f"SELECT * FROM read_parquet('{works['on']}/tables/{table}/**/*.parquet', "
                                   "hive_partitioning = true, union_by_name = true) LIMIT 0").columns]
        keep = [i for i, c in enumerate(cols) if not timing(c)]
        rows = [sorted((tuple(r[i] for i in keep) for r in f), key=repr) for f in frames]
        assert len(rows[0]) == len(rows[1]), table
        compared += len(rows[0])
        for a, b in zip(*rows):
            assert all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b)), \
                (table, [cols[i] for i in keep], a, b)
    assert compared > 1000
