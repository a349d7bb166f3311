"""landscope's benchmark suite: every figure is a ratio against a baseline measured in the same run.

    .venv/bin/python benchmarks/run.py [--quick] [--only a,b,c,d,e,f] [--out benchmarks/out/results.json]
                                       [--study-results results] [--repeats N (default 2 quick, 4 full)]

a  instrumented training (landscope's train path: checkpoints, batch order, per-step table) vs a
   bare PyTorch loop on the same model, data, batches, optimizer and steps      target <= 1.05x
b  replay with every per-step quantity vs the instrumented training of (a)     target <= 1.35x
   (+ the floor: a bare loop plus one no-grad forward at x_K per step, vs the bare loop)
c  exact alpha-beta region + 100x100 min-T heatmap from 10^6 step rows vs a brute-force DuckDB
   grid on the same Parquet file                                                target <= 0.5 s
d  the study's job seconds split by Snakemake rule (results/benchmarks/<rule>/**/*.tsv)
e  Hessian-vector products for lambda_max to 1e-3 relative: Lanczos vs power iteration
f  latency of each SQL query an experiment's report page issues vs ``SELECT 1``

Timings are the minimum over ``--repeats`` alternating repetitions (less sensitive to other
processes on the machine than a mean); correctness checks (identical parameters, identical grids)
are recorded beside the figures. Prints one table and writes JSON (default benchmarks/out/results.json).
"""

from __future__ import annotations

import argparse
import copy
import csv
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from landscope.measures import hvp
from landscope.settings import curvature_settings
from landscope.trajectory import replay, rundir, train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmark modules (conditions_bench, curvature_bench, scale_bench)

ITEMS = "abcdef"


def row(item, name, measured, baseline, unit, target=None, target_on="ratio", **extra) -> dict:
    """One line of the table; ``target`` bounds the ratio (or the measured value: target_on='measured')."""
    ratio = measured / baseline if baseline else math.nan
    value = ratio if target_on == "ratio" else measured
    met = None if target is None else bool(value <= target)
    return {"item": item, "name": name, "measured": measured, "baseline": baseline, "ratio": ratio,
            "unit": unit, "target": target, "target_on": target_on, "met": met, **extra}


def timed(fn):
    """(wall seconds, result); the process CPU seconds of the last call are in ``timed.cpu``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    timed.cpu = time.process_time() - c0
    return time.perf_counter() - t0, out


def timed_both(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, _ = timed(fn)
    return wall, timed.cpu


def cpu_ratio(num: list, den: list) -> float:
    """Ratio of the minimum CPU seconds: less sensitive to other processes on a loaded machine than
    wall time (but blind to I/O waits such as fsync, which the wall ratio includes)."""
    return min(c for _, c in num) / min(c for _, c in den)


# ----------------------------------------------------------------------------------- a, b: training and replay
def run_spec(model: dict, steps: int, directions_every=None, threads: int = 1, schedule=None, device: str = "cpu"):
    from landscope.config import load_study

    exp = {"model": model, "dataset": {"name": "digits"}, "optimizer": {"name": "sgd", "lr": 0.05},
           "batch_size": 64, "steps": steps, "snapshot_every": steps, "directions_every": directions_every}
    if schedule:
        exp["schedule"] = schedule
    return load_study({"device": device, "torch_threads": threads, "experiments": {"bench": exp}}).experiments["bench"].runs[0]


def bare_train(spec, at_min=None):
    """A plain PyTorch loop: the same data, initialisation, batches, SGD and steps as the run
    ``spec``, nothing recorded. With ``at_min`` (a model), also one no-grad forward of it on every
    step's batch, as a replay must do: the floor of the replay's cost. On the spec's device (on a
    GPU it waits for the device before returning, so that a wall-clock timing covers the work)."""
    import torch

    from landscope.problem.build import batch_indices, resolve_device
    from landscope.problem.data import load_dataset
    from landscope.problem.models import build_model, loss_for

    torch.set_num_threads(spec.torch_threads)
    device = resolve_device(spec.device)
    data = load_dataset(spec.dataset, spec.data_dir)
    n_classes = data.meta.get("n_classes") or int(data.y.max()) + 1
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, int(data.x[0].numel()), n_classes).to(device).train()
    loss_fn = loss_for(model, spec.loss)
    opt = torch.optim.SGD(model.parameters(), lr=float(spec.optimizer["lr"]))
    n = len(data)
    x, y = data.x.to(device), data.y.to(device)
    for step in range(spec.steps):
        idx = batch_indices(n, spec.batch_size, spec.seed, step).to(device)
        xb, yb = x[idx], y[idx]
        loss = loss_fn(model, model(xb), yb).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if at_min is not None:
            with torch.no_grad():
                loss_fn(at_min, at_min(xb), yb).mean()
        opt.step()
    synchronize(device)
    return model


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on a CPU): GPU kernels run asynchronously."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_steps(spec, rounds: int, block: int = 50) -> tuple[float, float]:
    """Median seconds per step of landscope's training step (``train.take_step`` plus its loss
    record) and of a bare step, on the same model and optimizer, alternating in blocks of
    ``block`` steps: bursts of load from other processes hit both alike."""
    import torch

    from landscope.problem import build
    from landscope.problem.optim import make_optimizer

    problem = build.build_problem(spec)
    model, loss_fn, data = problem.model, problem.loss_fn, problem.data
    opt = make_optimizer(spec.optimizer, model.parameters())
    record = torch.empty(rounds * block * 2, dtype=torch.float64, device=problem.device)

    def bare(step):
        idx = build.batch_indices(len(data), spec.batch_size, spec.seed, step).to(problem.device)
        loss = loss_fn(model, model(data.x[idx]), data.y[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def ours(step):
        record[step] = train.take_step(problem, opt, step)

    got, step = {bare: [], ours: []}, 0
    for r in range(rounds):
        for fn in (bare, ours) if r % 2 == 0 else (ours, bare):
            synchronize(problem.device)
            t0 = time.perf_counter()
            for _ in range(block):
                fn(step)
                step += 1
            synchronize(problem.device)
            got[fn].append((time.perf_counter() - t0) / block)
    return statistics.median(got[ours]), statistics.median(got[bare])


def train_and_replay(label: str, model: dict, steps: int, repeats: int, study_every=None,
                     device: str = "cpu") -> list[dict]:
    """Rows a (training overhead), b (replay ratio, its floor, and with the study's full-batch rows),
    on ``device`` (benchmarks/gpu_check.py runs them on a GPU).

    Each of ``repeats`` rounds times the bare loop, landscope's training, the replay and the floor
    once each, in an order that turns round every round (a slow spell of the machine falls on all of
    them alike, not on whichever was measured last); each figure is the minimum over the rounds."""
    import torch

    spec = run_spec(model, steps, device=device)
    tmp = Path(tempfile.mkdtemp(prefix="landscope-bench-"))
    warm = run_spec(model, 4, device=device)  # first calls pay one-time costs (lazy imports in torch.optim: ~1 s)
    bare_train(warm)
    train.train_run(warm, tmp / "warm")
    ck, res = tmp / "ck", tmp / "res"  # the run every replay replays
    train.train_run(spec, ck)
    train.snapshot_and_select(spec, ck, ck / "minimizer.pt", res)
    bare = bare_train(spec)
    final = rundir.load_checkpoint(rundir.checkpoint_path(ck, steps))["model"]
    identical = all(torch.equal(v.cpu(), final[k]) for k, v in bare.state_dict().items())
    if not identical:
        raise AssertionError(f"{label}: the bare loop and landscope's training ended at different parameters")
    at_min = copy.deepcopy(bare).eval()

    got = {k: [] for k in ("bare", "train", "replay", "loop", "floor")}  # (wall, CPU) seconds per round

    def replay_once():
        wall, out = timed(lambda: replay.replay_segment(spec, ck, ck / "minimizer.pt", 0, res))
        got["replay"].append((wall, timed.cpu))
        got["loop"].append((wall - out["full_batch_s"], timed.cpu - out["full_batch_s"]))

    def train_once():  # each into a fresh folder
        got["train"].append(timed_both(lambda: train.train_run(spec, tmp / f"t{len(got['train'])}")))

    kinds = {"bare": lambda: got["bare"].append(timed_both(lambda: bare_train(spec))), "train": train_once,
             "replay": replay_once, "floor": lambda: got["floor"].append(timed_both(lambda: bare_train(spec, at_min)))}
    for r in range(repeats):
        order = list(kinds)[r % 4:] + list(kinds)[:r % 4]  # each kind first in turn, and last in turn
        for kind in order if r % 2 == 0 else order[::-1]:
            kinds[kind]()
    train_s, bare_s = got["train"], got["bare"]
    walls = {f"{k}_walls_s": [round(w, 4) for w, _ in v] for k, v in got.items()}  # every round's, in the JSON
    rows = [row("a", f"{label}: instrumented training vs bare loop", min(train_s)[0], min(bare_s)[0], "s", 1.05,
                steps=steps, identical_parameters=identical, cpu_ratio=cpu_ratio(train_s, bare_s))]
    ours, plain = interleaved_steps(spec, 6 if steps < 500 else 30)
    rows.append(row("a", f"{label}: one training step vs one bare step (interleaved, median)", ours, plain,
                    "s", 1.05))
    rows.append(row("b", f"{label}: replay (all per-step quantities) vs training", min(got["replay"])[0],
                    min(train_s)[0], "s", 1.35, steps=steps, cpu_ratio=cpu_ratio(got["replay"], train_s), **walls))
    rows.append(row("b", f"{label}: the same without its 2 full-batch rows (f, grad f at both ends)",
                    min(got["loop"])[0], min(train_s)[0], "s", 1.35, steps=steps,
                    cpu_ratio=cpu_ratio(got["loop"], train_s)))
    if study_every:  # the study's setting: full-batch direction rows every so many steps as well
        spec_d = run_spec(model, steps, directions_every=study_every, device=device)
        ckd, resd = tmp / "ckd", tmp / "resd"
        train.train_run(spec_d, ckd)
        train.snapshot_and_select(spec_d, ckd, ckd / "minimizer.pt", resd)
        sd = [timed_both(lambda: replay.replay_segment(spec_d, ckd, ckd / "minimizer.pt", 0, resd))
              for _ in range(max(1, repeats - 1))]
        rows.append(row("b", f"{label}: replay + full-batch rows every {study_every} steps vs training",
                        min(sd)[0], min(train_s)[0], "s", None, steps=steps, cpu_ratio=cpu_ratio(sd, train_s)))
    rows.append(row("b", f"{label}: floor: bare loop + x_K forward vs bare loop", min(got["floor"])[0],
                    min(bare_s)[0], "s", None, steps=steps, cpu_ratio=cpu_ratio(got["floor"], bare_s)))
    return rows


def bench_ab(args) -> list[dict]:
    steps = 150 if args.quick else 1500
    rows = train_and_replay("MLP 64-256-256-10, digits", {"name": "mlp", "width": 256, "depth": 3}, steps,
                            args.repeats, study_every=None if args.quick else 150)
    if not args.quick:  # BatchNorm: the x_K forward runs on batch statistics, per step
        rows += train_and_replay("ResNet9 w=1/8 (BatchNorm), digits", {"name": "resnet9", "width": 0.125},
                                 300, args.repeats)
    return rows


# ----------------------------------------------------------------------------------- c: region + heatmap
def bench_c(args) -> list[dict]:
    import duckdb
    import numpy as np
    import pyarrow.parquet as pq
    from conditions_bench import make_rows

    from landscope.measures import conditions as C

    n, size, margin, box = (100_000, 20, 0.1, 5.0) if args.quick else (1_000_000, 100, 0.1, 5.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "steps.parquet"
        pq.write_table(make_rows(n), path)
        con = duckdb.connect()
        src = f"read_parquet('{path}')"

        def fast():
            arr = con.sql(f"SELECT batch_loss - batch_loss_at_min AS u, batch_loss - batch_loss_star AS v, "
                          f"grad_dot_dir AS a FROM {src}").fetchnumpy()
            reg = C.analyze_region(arr["u"], arr["v"], arr["a"], margin=margin, alpha_max=box)
            return reg, C.grid(arr["u"], arr["v"], arr["a"], reg, size, margin)

        def brute():
            return con.sql(f"""
                WITH g AS (SELECT i * {box} / {size - 1} AS alpha, j * {box} / {size - 1} AS beta, i, j
                           FROM range({size}) a(i), range({size}) b(j)),
                     s AS (SELECT batch_loss - batch_loss_at_min AS u, batch_loss - batch_loss_star AS v,
                                  grad_dot_dir AS a FROM {src})
                SELECT i, j, min(s.a - alpha * s.u + beta * s.v) AS min_t FROM g, s
                WHERE alpha >= beta + {margin} - 1e-12 GROUP BY i, j""").fetchnumpy()

        fast_s = [timed(fast) for _ in range(args.repeats)]
        brute_s, got = timed(brute)
    reg, (_, _, T, valid) = fast_s[0][1]
    ours = T.reshape(size, size)
    diff = max(abs(ours[i, j] - t) for i, j, t in zip(got["i"], got["j"], got["min_t"]))
    scale = float(np.nanmax(np.abs(ours)))
    same_cells = int(valid.sum()) == len(got["i"])
    if not (same_cells and diff <= 1e-9 * max(1.0, scale)):
        raise AssertionError(f"hull heatmap differs from the brute-force grid: max |diff| {diff:.3e}")
    return [row("c", f"region + {size}x{size} heatmap, {n:,} rows: hull vs DuckDB brute force",
                min(s for s, _ in fast_s), brute_s, "s", 0.5, target_on="measured", rows=n, grid=size,
                hull_points=reg.hull_points, max_abs_difference=float(diff), alpha_min=reg.alpha_min)]


# ----------------------------------------------------------------------------------- d: study split by rule
def bench_d(args) -> list[dict]:
    root = Path(args.study_results) / "benchmarks"
    files = sorted(root.glob("*/**/*.tsv")) if root.is_dir() else []
    if not files:
        print(f"d: no study run ({root} has no benchmark files): run `snakemake --cores all` first")
        return [{"item": "d", "name": "study split by rule", "skipped": "no study run: run `snakemake --cores all` first"}]
    per: dict[str, dict] = {}
    spans = []
    for f in files:
        rule = f.relative_to(root).parts[0]
        with open(f, newline="") as fh:
            rec = next(csv.DictReader(fh, delimiter="\t"))
        s = float(rec["s"])
        rss = float(rec["max_rss"]) if rec.get("max_rss") not in (None, "", "NA", "-") else math.nan
        d = per.setdefault(rule, {"jobs": 0, "s": 0.0, "max_s": 0.0, "rss": 0.0})
        d["jobs"] += 1
        d["s"] += s
        d["max_s"] = max(d["max_s"], s)
        d["rss"] = max(d["rss"], rss) if not math.isnan(rss) else d["rss"]
        spans.append((f.stat().st_mtime - s, f.stat().st_mtime))  # the file is written as the job ends
    total = sum(d["s"] for d in per.values())
    wall, reach = 0.0, -math.inf  # busy wall time: the length of the union of the jobs' intervals
    for a, b in sorted(spans):
        wall += max(0.0, b - max(a, reach))
        reach = max(reach, b)
    rows = [row("d", f"rule {rule}: {d['jobs']} jobs, mean {d['s'] / d['jobs']:.1f} s, max {d['max_s']:.1f} s, "
                     f"max RSS of a job process {d['rss']:.0f} MB", d["s"], total, "job-s", None, jobs=d["jobs"],
                mean_s=d["s"] / d["jobs"], max_s=d["max_s"], max_rss_mb=d["rss"], share=d["s"] / total)
            for rule, d in sorted(per.items(), key=lambda kv: -kv[1]["s"])]
    rows.append(row("d", "busy wall time (union of job intervals, from file times) vs sum of job seconds",
                    wall, total, "s", None, jobs=len(files)))
    return rows


# ----------------------------------------------------------------------------------- e: curvature
def bench_e(args) -> list[dict]:
    import curvature_bench as cb
    import torch

    from landscope.measures import curvature as cv
    from landscope.problem.build import build_problem

    spec = cb.largest_mlp_spec(1)
    problem = build_problem(spec)
    cb.train_briefly(problem, 30 if args.quick else 300, float(spec.optimizer["lr"]))
    settings = curvature_settings({})
    samples = 64 if args.quick else settings["eval_samples"]
    idx = cv.eval_subset(len(problem.data), samples, settings["seed"])
    op = hvp.hessian_operator(problem.model, problem.loss_fn, problem.data.x[idx], problem.data.y[idx])
    ref = hvp.lanczos(op, hvp.rademacher(op.n, torch.Generator().manual_seed(0)), 100).ritz[-1].item()
    need = cb.products_to_tolerance(op, ref)
    if need["lanczos"] is None or need["power"] is None:
        raise AssertionError(f"e: an estimator did not reach {cb.TOL:g} relative: {need}")
    return [row("e", f"HVPs for lambda_max to {cb.TOL:g} rel.: Lanczos vs power iteration ({op.n:,} params)",
                float(need["lanczos"]), float(need["power"]), "HVP", 1.0, lambda_max=ref, n_params=op.n)]


# ----------------------------------------------------------------------------------- f: report SQL
class RecordingConnection:
    """Forwards to a DuckDB connection and records every query (text, parameters, calling function)."""

    def __init__(self, con, log: list):
        self._con, self._log = con, log

    def sql(self, query, params=None, **kw):
        caller = next((f"report.{Path(fr.filename).stem}.{fr.function}" for fr in inspect.stack()[1:]
                       if "landscope" in fr.filename and Path(fr.filename).parent.name == "report"
                       and not fr.function.startswith("_")), "?")
        self._log.append((caller, query, params))
        return self._con.sql(query, params=params, **kw)

    def execute(self, query, params=None):
        self._log.append(("execute", query, params))
        return self._con.execute(query, params) if params is not None else self._con.execute(query)

    def __getattr__(self, name):
        return getattr(self._con, name)


@contextmanager
def recording(log: list):
    from landscope import store

    real = store.connect
    store.connect = lambda *a, **k: RecordingConnection(real(*a, **k), log)
    try:
        yield real
    finally:
        store.connect = real


def synthetic_results(root: Path, quick: bool) -> tuple[str, list[str]]:
    """A synthetic study (scale_bench's generator) with its conditions tables: (experiment, runs)."""
    import scale_bench as sb

    points, seeds, steps = (3, 2, 1000) if quick else (5, 4, 10_000)
    sb.generate(root, points, seeds, steps)
    sb.stage_conditions(str(root), points, seeds, steps)
    return "scale", [r.run for r in sb.study(points, seeds, steps).runs]


def bench_f(args) -> list[dict]:
    from landscope.report import page as report

    tmp = Path(tempfile.mkdtemp(prefix="landscope-bench-"))
    real = Path(args.study_results)
    if (real / "tables" / "condition_summary").is_dir() and not args.quick:
        results = real
        experiment = min(p.name.split("=", 1)[1] for p in (real / "tables" / "condition_summary").iterdir())
        runs, where = None, f"the study's results (experiment {experiment})"
    else:
        results = tmp / "results"
        experiment, runs = synthetic_results(results, args.quick)
        where = "a synthetic study"
    log: list = []
    with recording(log) as connect:
        page_s, _ = timed(lambda: report.write_experiment_report(results, experiment, tmp / "page.html", runs=runs))
    connect_s = min(timed(lambda: connect(results, runs=runs).close())[0] for _ in range(args.repeats))
    con = connect(results, runs=runs)

    def latency(q, p) -> float:
        return statistics.median(timed(lambda: con.sql(q, params=p).fetchall())[0] for _ in range(max(3, args.repeats)))

    base = latency("SELECT 1", None)
    rows, seen, total = [], set(), 0.0
    for caller, q, p in log:
        if caller == "execute" or (q, json.dumps(p, sort_keys=True, default=str)) in seen:
            continue
        seen.add((q, json.dumps(p, sort_keys=True, default=str)))
        s = latency(q, p)
        total += s
        rows.append(row("f", f"query from {caller}", s, base, "s", None, sql=" ".join(q.split())[:300]))
    con.close()
    rows.append(row("f", f"all {len(rows)} distinct report queries on {where}", total, base, "s", None))
    rows.append(row("f", "store.connect (one view per table) vs SELECT 1", connect_s, base, "s", None))
    rows.append(row("f", "whole page (queries, charts, HTML) vs its queries", page_s, total, "s", None))
    return rows


# ----------------------------------------------------------------------------------- table
def fmt(x, unit="") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if unit == "HVP" or (isinstance(x, float) and x == int(x) and abs(x) >= 10 and unit != "s"):
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def print_table(rows: list[dict]) -> None:
    head = (f"{'item':4s} {'what':78s} {'measured':>10s} {'baseline':>10s} {'ratio':>7s} {'cpu':>6s} "
            f"{'target':>9s} met")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "skipped" in r:
            print(f"{r['item']:4s} {r['name']:78s} {r['skipped']}")
            continue
        if "error" in r:
            print(f"{r['item']:4s} {r['name']:78s} ERROR {r['error']}")
            continue
        tgt = "-" if r["target"] is None else (f"<={r['target']:g}x" if r["target_on"] == "ratio"
                                                 else f"<={r['target']:g} {r['unit']}")
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        name = r["name"] if len(r["name"]) <= 78 else r["name"][:75] + "..."
        print(f"{r['item']:4s} {name:78s} {fmt(r['measured'], r['unit']):>10s} {fmt(r['baseline'], r['unit']):>10s} "
              f"{r['ratio']:7.3f} {fmt(r.get('cpu_ratio')):>6s} {tgt:>9s} {met}")


BENCHES = {"a": bench_ab, "b": bench_ab, "c": bench_c, "d": bench_d, "e": bench_e, "f": bench_f}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (14 s on 2 cores): checks that everything runs")
    ap.add_argument("--only", default=ITEMS, help="comma-separated items, e.g. a,b (default: all)")
    ap.add_argument("--out", default=str(HERE / "out" / "results.json"))
    ap.add_argument("--study-results", default="results", help="results folder of a study run (items d, f)")
    ap.add_argument("--repeats", type=int, default=None, help="repetitions per timing (default 2 quick, 4 full)")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 4)
    only = [c for c in args.only.replace(",", "") if c]
    bad = [c for c in only if c not in ITEMS]
    if bad:
        ap.error(f"--only: unknown item(s) {bad}; choose among {', '.join(ITEMS)}")
    import torch

    torch.set_num_threads(1)  # as the study's jobs (torch_threads: 1; Snakemake runs one job per core)
    rows, failed, done = [], False, set()
    t_all = time.perf_counter()
    for item in ITEMS:
        fn = BENCHES[item]
        if item not in only or fn in done:
            continue
        done.add(fn)
        t0 = time.perf_counter()
        try:
            got = fn(args)
        except Exception as exc:  # noqa: BLE001 -- recorded in the JSON and the exit code; the other items still run
            failed = True
            got = [{"item": item, "name": f"item {item}", "error": f"{type(exc).__name__}: {exc}"}]
        rows += [r for r in got if r["item"] in only or "error" in r]
        print(f"[{item}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    print_table(rows)
    out = {"machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "load_avg_1min": os.getloadavg()[0], "python": platform.python_version(),
                       "torch": torch.__version__, "threads": torch.get_num_threads()},
           "quick": args.quick, "repeats": args.repeats, "wall_s": time.perf_counter() - t_all, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {args.out} (load average {out['machine']['load_avg_1min']:.2f} on {os.cpu_count()} CPUs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
