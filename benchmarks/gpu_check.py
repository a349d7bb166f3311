"""One prepared GPU check: what no CPU run of landscope can measure, in one command of at most 8 minutes.

    python benchmarks/gpu_check.py [--device cuda] [--data-dir DIR] [--budget-s S]
                                   [--pipeline auto|snakemake|library] [--out benchmarks/out/gpu_check.json]
    python benchmarks/gpu_check.py --device cpu --quick     # tiny sizes: checks the script itself

1   replay drift per model family (MLP, CNN, ResNet9 with BatchNorm, LSTM and Transformer with dropout):
    a short run trained by landscope's train path and replayed segment by segment by the evaluate job's
    code (replay.replay_segment) under deterministic algorithms; the largest |replayed - checkpointed|
    against the tolerance the replay applies (drift_tolerance auto: 0 on CPU, 1e-4 on GPU); a second
    training of the same spec against the first; replay wall vs training wall.
2a  instrumented training vs a bare PyTorch loop on this device (benchmarks/run.py item a).
2b  replay vs training, and the replay's floor (benchmarks/run.py item b).
3   one Hessian-vector product (landscope.measures.hvp; graph built once, as the curvature job uses it)
    vs one gradient on the same batch; building the operator vs one gradient.
4   config/paper.yaml's Fashion-MNIST MLP at width 4096 on all 60,000 images, as many steps as fit in
    --budget-s, through Snakemake (rules train and evaluate, on a generated config in a temporary folder)
    or, where Snakemake is not installed, through the functions those rules call, one process per job.

Every figure is a ratio against a baseline measured in the same run on the same device; timings are
the minimum over repeats, with torch.cuda.synchronize before and after each. Writes one JSON (--out)
and one markdown table beside it (same name, .md), and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from landscope import store
from landscope.config import load_study
from landscope.measures import curvature as cv
from landscope.measures import hvp
from landscope.problem import sources
from landscope.problem.build import build_problem, enable_determinism
from landscope.problem.data import digits, token_windows
from landscope.problem.dataset import Dataset
from landscope.problem.evaluate import evaluation_mode, trainable_parameters
from landscope.settings import curvature_settings
from landscope.trajectory import replay, rundir, train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # benchmarks/run.py, and this module for its dataset factory (digit_tokens)
import run as bench  # benchmarks/run.py: items a and b, the bare loop, the synchronisation

TOTAL_S = 480  # the whole check, on one GPU
SETTLE_S = 30  # kept free at the end of the budget: writing results, process exits
BUDGET_CAP_S = 210.0  # part 4 by default; its jobs are killed at 1.5x its budget + 30 s
PAPER_EXPERIMENT = "fashion_mlp"
PAPER_WIDTH = 4096
REPLAY_GUESS = 2.0  # planning part 4: an evaluate job's seconds per step, in training steps (1.1-1.6x measured)


# ----------------------------------------------------------------------------------- the model families
def digit_tokens(bptt: int = 16, n_windows: int | None = None) -> Dataset:
    """scikit-learn's digits as a token stream for the language models: every image's 64 pixel values
    (0..16, 17 tokens) in reading order, image after image, cut into next-token windows of ``bptt``.
    Real data that ships with scikit-learn, so the LSTM and the Transformer need no download."""
    d = digits()
    ids = torch.round(d.x * 16).to(torch.int64).reshape(-1).numpy()
    x, y = token_windows(ids, bptt, n_windows)
    return Dataset(x, y, "digit_tokens", meta={"n_classes": 17, "vocab_size": 17, "source": "digits pixels"})


TOKENS = {"name": "gpu_check:digit_tokens", "bptt": 16, "n_windows": 1024}
FAMILIES = {  # label: the experiment (model, data, optimizer of its kind in config/paper.yaml, small)
    "MLP": {"model": {"name": "mlp", "depth": 3, "width": 256}, "dataset": {"name": "digits"},
            "optimizer": {"name": "sgd", "lr": 0.05}, "batch_size": 64},
    "CNN": {"model": {"name": "cnn", "c1": 16, "channels": 32}, "dataset": {"name": "digits"},
            "optimizer": {"name": "sgd", "lr": 0.01}, "schedule": {"name": "cosine"}, "batch_size": 64},
    "ResNet9 (BatchNorm)": {"model": {"name": "resnet9", "width": 0.125}, "dataset": {"name": "digits"},
                            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                            "schedule": {"name": "onecycle"}, "batch_size": 64},
    "LSTM (dropout)": {"model": {"name": "lstm_lm", "emb_size": 32, "hidden_size": 64, "n_layers": 2,
                                 "dropout": 0.1, "dropouth": 0.1, "dropouti": 0.1, "dropoute": 0.05, "wdrop": 0.2},
                       "dataset": TOKENS, "optimizer": {"name": "nsgdm", "lr": 0.5, "momentum": 0.9},
                       "batch_size": 32},
    "Transformer (dropout)": {"model": {"name": "transformer_lm", "n_layer": 2, "n_head": 4, "d_model": 64,
                                        "dropout": 0.1},
                              "dataset": TOKENS, "optimizer": {"name": "nadamw", "lr": 1.0e-3, "betas": [0.9, 0.98]},
                              "schedule": {"name": "warmup_cosine", "warmup_fraction": 0.05}, "batch_size": 32},
}
HVP_FAMILIES = ("MLP", "ResNet9 (BatchNorm)", "Transformer (dropout)")


def family_spec(label: str, steps: int, device: str, snapshot_every: int | None = None):
    exp = {**copy.deepcopy(FAMILIES[label]), "steps": steps, "snapshot_every": snapshot_every or steps, "seeds": [0]}
    return load_study({"device": device, "torch_threads": 1, "experiments": {"check": exp}}).experiments["check"].runs[0]


# ----------------------------------------------------------------------------------- rows, timing
def row(part: str, name: str, measured, baseline, unit: str, check: str = "", **extra) -> dict:
    """One line of the table: ``ratio`` = measured / baseline (None when the baseline is 0)."""
    ratio = measured / baseline if baseline else None
    return {"part": part, "name": name, "measured": measured, "baseline": baseline, "ratio": ratio, "unit": unit,
            "check": check, **extra}


def min_time(fn, repeats: int, device: torch.device) -> float:
    """The minimum wall seconds of ``fn()`` over ``repeats`` calls, the device idle before and after each."""
    best = math.inf
    for _ in range(repeats):
        bench.synchronize(device)
        t0 = time.perf_counter()
        fn()
        bench.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def state_drift(a: dict, b: dict) -> float:
    """max |a - b| over two state dicts' floating tensors (inf when an integer tensor differs)."""
    worst = 0.0
    for k, v in a.items():
        w = b[k].to(v.device)
        if v.is_floating_point():
            worst = max(worst, (v.double() - w.double()).abs().max().item() if v.numel() else 0.0)
        elif not torch.equal(v, w):
            worst = math.inf
    return worst


def guarded(part: str, label: str, fn, *args, **kw) -> list[dict]:
    """``fn``'s rows, or one error row naming ``label``: one model's failure leaves the others measured."""
    try:
        return fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 -- recorded in the JSON, the table and the exit code
        return [{"part": part, "name": label, "error": f"{type(exc).__name__}: {exc}"}]


def drift_check(drift: float, tolerance: float) -> str:
    return "bitwise" if drift == 0 else ("within tolerance" if drift <= tolerance else "OVER tolerance")


def read_part(path: Path) -> dict:
    return pq.read_table(path).to_pydict()


# ----------------------------------------------------------------------------------- 1: drift per family
def drift_family(label: str, steps: int, repeats: int, device: torch.device, tmp: Path) -> list[dict]:
    """Train ``repeats`` times, replay every segment after each training; the drift table of every
    replay (written before the drift is checked, so an over-tolerance replay is measured too)."""
    spec = family_spec(label, steps, device.type, steps // 2)
    train_s, replay_s, drifts, tols, retrain, first = [], [], [], set(), 0.0, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for r in range(repeats):
            ck, res = tmp / f"{label.split()[0]}-{r}" / "ckpt", tmp / f"{label.split()[0]}-{r}" / "results"
            train_s.append(min_time(lambda ck=ck, res=res: train.train_run(spec, ck), 1, device))
            final = rundir.load_checkpoint(rundir.checkpoint_path(ck, spec.steps))["model"]
            first = final if first is None else first
            retrain = max(retrain, state_drift(first, final))
            train.snapshot_and_select(spec, ck, ck / "minimizer.pt", res)

            def replay_all(ck=ck, res=res):
                for j in range(spec.n_segments):
                    try:
                        replay.replay_segment(spec, ck, ck / "minimizer.pt", j, res)
                    except replay.ReplayDriftError:
                        pass  # measured below, from the drift table

            replay_s.append(min_time(replay_all, 1, device))
            for j in range(spec.n_segments):
                part = read_part(store.part_path(res, "drift", spec.experiment, spec.run, j))
                drifts += part["max_abs_drift"]
                tols.update(part["tolerance"])
    if not drifts:
        raise RuntimeError(f"{label}: the run diverged in training, so no segment was replayed")
    nondet = sorted({str(w.message).splitlines()[0][:200] for w in caught if "determinis" in str(w.message)})
    drift, tol = max(drifts), max(tols)
    n_params = sum(v.numel() for v in first.values() if v.is_floating_point())
    return [row("1", f"{label}: replayed vs checkpointed state, max abs diff ({spec.n_segments} segments x "
                     f"{repeats} trainings)", drift, tol, "abs", drift_check(drift, tol), steps=steps,
                bitwise=drift == 0, within_tolerance=drift <= tol, tolerance=tol, retrain_drift=retrain,
                retrain_bitwise=retrain == 0, n_params=n_params, nondeterministic_ops=nondet,
                note=f"2nd training vs 1st: {drift_check(retrain, tol)}" + (f"; {len(nondet)} op(s) without a "
                                                                            "deterministic kernel" if nondet else "")),
            row("1", f"{label}: replay (all per-step quantities) vs training, {steps} steps", min(replay_s),
                min(train_s), "s", steps=steps)]


def part_drift(args, device, tmp) -> list[dict]:
    steps, repeats = (20, 2) if args.quick else (200, 3)
    return [r for label in FAMILIES for r in guarded("1", label, drift_family, label, steps, repeats, device,
                                                     tmp / "drift")]


# ----------------------------------------------------------------------------------- 2: training and replay
def part_throughput(args, device, tmp) -> list[dict]:
    sizes = [("MLP 64-256-256-10, digits", {"name": "mlp", "width": 256, "depth": 3}, 60 if args.quick else 1500),
             ("ResNet9 w=1/8 (BatchNorm), digits", {"name": "resnet9", "width": 0.125}, 20 if args.quick else 300)]
    rows = []
    for label, model, steps in sizes:
        for r in guarded("2", label, bench.train_and_replay, label, model, steps, args.repeats, device=device.type):
            part = r.pop("part", "2") + r.pop("item", "")  # run.py's items a and b become 2a and 2b
            rows.append({**r, "part": part, "check": "" if r.get("met") is None else
                         (f"<= {r['target']:g}x: " + ("yes" if r["met"] else "NO"))})
    return rows


# ----------------------------------------------------------------------------------- 3: HVP vs gradient
def hvp_cost(label: str, samples: int, repeats: int, device: torch.device) -> list[dict]:
    problem = build_problem(family_spec(label, 10, device.type))
    model, loss_fn = problem.model, problem.loss_fn
    idx = cv.eval_subset(len(problem.data), samples, 0).to(device)
    x, y = problem.data.x[idx], problem.data.y[idx]
    params = trainable_parameters(model)

    def gradient():
        with evaluation_mode(model):  # the operator's mode: dropout off, BatchNorm on running statistics
            return torch.autograd.grad(loss_fn(model, model(x), y).mean(), params)

    op = hvp.hessian_operator(model, loss_fn, x, y)
    v = hvp.rademacher(op.n, torch.Generator().manual_seed(0)).to(device)
    flops = {}
    for name, fn in (("gradient", gradient), ("hvp", lambda: op(v))):  # also the warm-up: kernels chosen once
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops()
    grad_s = min_time(gradient, repeats, device)
    hvp_s = min_time(lambda: op(v), repeats, device)
    build_s = min_time(lambda: hvp.hessian_operator(model, loss_fn, x, y), repeats, device)
    extra = {"n_params": op.n, "samples": len(idx), "flops_gradient": flops["gradient"], "flops_hvp": flops["hvp"],
             "flop_ratio": flops["hvp"] / flops["gradient"]}
    return [row("3", f"{label}: one HVP (graph built once) vs one gradient, {len(idx)} samples", hvp_s, grad_s, "s",
                note=f"FLOPs {extra['flop_ratio']:.2f}x a gradient's", **extra),
            row("3", f"{label}: building the HVP operator (forward + differentiable backward) vs one gradient",
                build_s, grad_s, "s", **extra)]


def part_hvp(args, device, tmp) -> list[dict]:
    samples = 64 if args.quick else curvature_settings({})["eval_samples"]
    repeats = 5 if args.quick else 20
    return [r for label in HVP_FAMILIES for r in guarded("3", label, hvp_cost, label, samples, repeats, device)]


# ----------------------------------------------------------------------------------- 4: paper scale
def paper_experiment(where: Path | None, quick: bool) -> tuple[dict, str]:
    """config/paper.yaml's fashion_mlp at width 4096, one seed (the data's folder given), or a small
    stand-in on digits when the data is absent (quick runs only); and what it is, in words."""
    exp = copy.deepcopy(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["experiments"][PAPER_EXPERIMENT])
    exp.pop("sweep", None)
    exp.update(seeds=[0], if_data_missing="error")
    if where is None:
        exp.update(model={**exp["model"], "width": 32}, dataset={"name": "digits"})
        return exp, "stand-in (Fashion-MNIST absent): the paper's MLP recipe at width 32 on digits"
    width = 256 if quick else PAPER_WIDTH
    exp["model"] = {**exp["model"], "width": width}
    return exp, f"paper's Fashion-MNIST MLP, width {width}, all 60,000 images"


def plan_steps(budget_s: float, fixed_s: float, step_s: float, replay_guess: float = REPLAY_GUESS,
               cap: int = 93_750) -> int:
    """Steps (even: two segments) whose training and replay fit in ``budget_s`` after ``fixed_s``."""
    steps = int((budget_s - fixed_s) / (step_s * (1 + replay_guess))) // 2 * 2
    return max(0, min(steps, cap))


def run_command(cmd: list[str], timeout: float, env: dict, cwd: Path) -> tuple[int, str, float]:
    """(exit code, output tail, wall seconds); the whole process group is killed at ``timeout``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return 124, (out or "")[-3000:], time.perf_counter() - t0
    return proc.returncode, (out or "")[-3000:], time.perf_counter() - t0


JOB = """import json, sys
from landscope.spec import RunSpec
from landscope.trajectory import replay, train
kind, spec_file, ckpt, results, segment = sys.argv[1:6]
spec = RunSpec.from_dict(json.loads(open(spec_file).read()))
if kind == "train":
    train.train_run(spec, ckpt)
    train.snapshot_and_select(spec, ckpt, ckpt + "/minimizer.pt", results)
else:
    replay.replay_segment(spec, ckpt, ckpt + "/minimizer.pt", int(segment), results)
"""


def run_library(spec, work: Path, env: dict, timeout: float) -> dict:
    """The functions the train and evaluate rules call, one process per job as Snakemake runs them."""
    (work / "spec.json").write_text(json.dumps(spec.to_dict()))
    ckpt = rundir.training_dir(work / "results", spec)
    jobs, log, deadline = {"train": [], "evaluate": []}, "", time.perf_counter() + timeout
    for kind, seg in [("train", 0)] + [("evaluate", j) for j in range(spec.n_segments)]:
        code, out, wall = run_command([sys.executable, "-c", JOB, kind, str(work / "spec.json"), str(ckpt),
                                       str(work / "results"), str(seg)], max(1.0, deadline - time.perf_counter()),
                                      env, work)
        jobs[kind].append(wall)
        log += out if code else ""
        if code and kind == "train":
            break
    return {"jobs": jobs, "log": log}


def run_snakemake(config: dict, work: Path, env: dict, timeout: float) -> dict:
    """Snakemake on the repository's Snakefile and a generated config, up to the evaluate rule."""
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
           "--cores", "1", "--configfile", str(work / "config.yaml"), "--until", "evaluate", "--keep-going"]
    code, out, wall = run_command(cmd, timeout, env, work)
    jobs = {rule: [float(next(iter(f.read_text().splitlines()[1:]), "nan").split("\t")[0])
                   for f in sorted((work / "results" / "benchmarks" / rule).rglob("*.tsv"))]
            for rule in ("train", "evaluate")}
    logs = "".join(f.read_text()[-1500:] for f in sorted((work / "logs").rglob("*.log"))) if code else ""
    return {"jobs": jobs, "log": (out if code else "") + logs, "snakemake_wall_s": wall, "exit": code}


def part_paper(args, device, tmp, budget_s: float) -> list[dict]:
    where = sources.locate_fashion(args.data_dir)
    if where is None and not args.quick:
        return [{"part": "4", "name": "paper-scale Fashion-MNIST MLP", "skipped":
                 f"Fashion-MNIST not found (looked in {args.data_dir or 'the default places'}): pass --data-dir DIR "
                 "holding its four IDX files (`make data` installs them in /usr/share/datasets/fashion-mnist)"}]
    exp, what = paper_experiment(where, args.quick)
    top = {"device": device.type, "data_dir": str(where) if where else None, "torch_threads": 4}
    probe = load_study({**top, "experiments": {PAPER_EXPERIMENT: {**exp, "steps": 1000, "snapshot_every": 500}}})
    t0 = time.perf_counter()
    ours_s, bare_s = bench.interleaved_steps(probe.experiments[PAPER_EXPERIMENT].runs[0], 2, 25)
    probe_s = time.perf_counter() - t0  # data, model, 100 steps: about what each job pays besides its loop
    snakemake_ok = args.pipeline != "library" and importlib.util.find_spec("snakemake") is not None
    pipeline = "snakemake" if snakemake_ok else "library"
    if args.pipeline == "snakemake" and not snakemake_ok:
        raise RuntimeError("--pipeline snakemake: snakemake is not importable here")
    fixed_s = 3 * (probe_s + 8.0) + (10.0 if snakemake_ok else 0.0)  # 3 jobs: interpreter + data; planning
    steps = 40 if args.quick else plan_steps(budget_s, fixed_s, ours_s)
    if steps < 100 and not args.quick:
        return [{"part": "4", "name": f"{what}", "skipped": f"budget {budget_s:.0f} s leaves no time for 100 steps "
                 f"(one step {ours_s * 1e3:.2f} ms, fixed costs ~{fixed_s:.0f} s): raise --budget-s"}]
    paper_steps = exp["steps"]
    exp.update(steps=steps, snapshot_every=steps // 2)
    config = {**top, "experiments": {PAPER_EXPERIMENT: exp}}
    spec = load_study(config).experiments[PAPER_EXPERIMENT].runs[0]
    work = tmp / "paper"
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    timeout = max(120.0, 1.5 * budget_s + 30)  # the planning is an estimate; past this the jobs are killed
    t0 = time.perf_counter()
    got = run_snakemake(config, work, env, timeout) if snakemake_ok else run_library(spec, work, env, timeout)
    wall = time.perf_counter() - t0
    results = work / "results"
    drifts, tols = [], set()
    for j in range(spec.n_segments):
        path = store.part_path(results, "drift", spec.experiment, spec.run, j)
        if path.is_file():
            part = read_part(path)
            drifts += part["max_abs_drift"]
            tols.update(part["tolerance"])
    over = [float(m) for m in re.findall(r"max \|diff\| = ([0-9.e+-]+|inf) > tolerance", got["log"])]
    if len(drifts) + len(over) < spec.n_segments or not got["jobs"]["train"]:
        raise RuntimeError(f"{pipeline} run of {what} failed:\n{got['log'][-2500:]}")
    drift = max(drifts + over)
    tol = max(tols) if tols else replay.drift_tolerance(spec, device)
    train_job, eval_jobs = got["jobs"]["train"][0], sum(got["jobs"]["evaluate"])
    per_step = (train_job + eval_jobs) / steps
    runs = store.part_path(results, "runs", spec.experiment, spec.run)
    common = {"steps": steps, "pipeline": pipeline, "what": what, "budget_s": budget_s, "wall_s": wall,
              "n_params": read_part(runs)["n_params"][0] if runs.is_file() else None}
    projected_h = per_step * paper_steps / 3600 if where is not None else None  # job starts included: an upper bound
    note = f"via {pipeline}; {steps:,} steps in {wall:.0f} s of a {budget_s:.0f} s budget" + (
        f"; the paper's {paper_steps:,} steps: <= {projected_h:.1f} h per seed at this rate" if projected_h else "")
    return [row("4", f"{what}: one training step vs one bare step (interleaved, median)", ours_s, bare_s, "s",
                **common),
            row("4", f"train job ({steps:,} steps, checkpoints, snapshots, x_K, its start) vs {steps:,} bare steps",
                train_job, steps * bare_s, "s", note=note, projected_paper_h=projected_h,
                **common),
            row("4", f"evaluate jobs ({spec.n_segments} segments replayed, every per-step quantity) vs train job",
                eval_jobs, train_job, "s", **common),
            row("4", f"replayed vs checkpointed state, max abs diff ({spec.n_segments} segments, own processes)",
                drift, tol, "abs", drift_check(drift, tol), bitwise=drift == 0, within_tolerance=drift <= tol,
                tolerance=tol, **common)]


# ----------------------------------------------------------------------------------- the table, main
LEGEND = """\
Each line: measured, and the baseline it is divided by (ratio = measured / baseline), both from this run on this device.
  1   replay drift per model family: max |replayed - checkpointed| over the model's state, against the tolerance the
      replay applies (drift_tolerance auto: 0 on CPU, 1e-4 on GPU): bitwise / within tolerance / OVER tolerance; a 2nd
      training of the same spec against the 1st; then replay wall vs training wall (min over trainings)
  2a  landscope's instrumented training vs a bare PyTorch loop, same model, data, batches (benchmarks/run.py item a)
  2b  replay with every per-step quantity vs that training, and the floor: bare loop + one x_K forward per step
  3   one Hessian-vector product (graph built once, as the curvature job uses it) vs one gradient, same batch;
      building the operator vs one gradient
  4   the paper's Fashion-MNIST MLP (config/paper.yaml, width 4096, 60,000 images) through the pipeline's train and
      evaluate jobs, as many steps as fit in the budget
Timings: minimum over repeats, the device synchronised before and after each."""


def clean(x):
    """JSON-safe: NaN -> null, +-inf -> "inf" / "-inf" (a drift of inf: an integer buffer differs)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def num(x, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return bench.fmt(float(x), unit)


def table(rows: list[dict], head: str) -> str:
    lines = [head, "", "```", LEGEND, "```", "",
             "| part | what | measured | baseline | ratio | unit | check / note |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['part']} | {r['name']} | | | | | {'SKIPPED' if 'skipped' in r else 'ERROR'}: "
                         f"{(r.get('skipped') or r.get('error')).splitlines()[0][:300]} |")
            continue
        note = "; ".join(t for t in (r.get("check"), r.get("note")) if t)
        lines.append(f"| {r['part']} | {r['name']} | {num(r['measured'], r['unit'])} | {num(r['baseline'], r['unit'])} "
                     f"| {num(r['ratio'])} | {r['unit']} | {note} |")
    return "\n".join(lines) + "\n"


def machine(device: torch.device) -> dict:
    info = {"device": device.type, "device_name": platform.processor() or platform.machine(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cuda (the check's purpose) or cpu (with --quick: checks the script on any machine)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (about a minute on a CPU)")
    ap.add_argument("--data-dir", default=None, help="folder holding Fashion-MNIST's four IDX files (part 4)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"seconds for part 4 (default: what is left of {TOTAL_S // 60} minutes after parts 1-3, at most "
                         f"{BUDGET_CAP_S:.0f})")
    ap.add_argument("--pipeline", choices=("auto", "snakemake", "library"), default="auto",
                    help="part 4 through Snakemake (auto: when it is installed) or the functions its rules call")
    ap.add_argument("--parts", default="1234", help="which parts, e.g. 14 (default: all)")
    ap.add_argument("--repeats", type=int, default=None, help="trainings and timings per figure (default 2 quick, 3)")
    ap.add_argument("--out", default=str(HERE / "out" / "gpu_check.json"), help="the JSON; the table goes beside it (.md)")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if set(args.parts) - set("1234"):
        ap.error(f"--parts: choose among 1, 2, 3, 4 (got {args.parts!r})")
    t_all = time.perf_counter()
    # cuBLAS reads its workspace setting when CUDA is first used, which is after this line (torch starts CUDA lazily)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cuda_started_early = torch.cuda.is_initialized()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("torch sees no CUDA device; on a machine without one, `--device cpu --quick` checks the script")
    device = torch.device(args.device)
    enable_determinism(device)  # the library's switch, as build_problem throws it in every job (CPU: nothing to do)
    torch.set_num_threads(1)  # as the study's jobs; the GPU does the work
    info = machine(device)
    head = (f"# landscope GPU check\n\n{info['device_name']} ({device}), torch {info['torch']}, CUDA {info['cuda']}, "
            f"cuDNN {info['cudnn']}, Python {info['python']}; deterministic algorithms "
            f"{'on (warn only)' if torch.are_deterministic_algorithms_enabled() else 'off (CPU kernels are)'}, "
            f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}; "
            f"{'quick sizes' if args.quick else 'full sizes'}, {args.repeats} repeats")
    print(head.replace("# ", "", 1).replace("\n\n", ": "), file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="landscope-gpucheck-"))
    parts = {"1": part_drift, "2": part_throughput, "3": part_hvp, "4": part_paper}
    rows, budget = [], None
    for key in args.parts:
        t0 = time.perf_counter()
        try:
            if key == "4":
                left = TOTAL_S - SETTLE_S - (time.perf_counter() - t_all)
                budget = args.budget_s if args.budget_s is not None else max(0.0, min(BUDGET_CAP_S, left))
                got = part_paper(args, device, tmp, budget)
            else:
                got = parts[key](args, device, tmp)
        except Exception as exc:  # noqa: BLE001 -- recorded in the JSON, the table and the exit code; other parts go on
            got = [{"part": key, "name": f"part {key}", "error": f"{type(exc).__name__}: {exc}"}]
        rows += got
        print(f"[part {key}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t_all
    failed = any("error" in r for r in rows)
    text = table(rows, head + f"; whole check {wall:.0f} s")
    print(text)
    out = {"machine": info, "settings": {
        "quick": args.quick, "repeats": args.repeats, "parts": args.parts, "pipeline": args.pipeline,
        "budget_s": budget, "data_dir": args.data_dir, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"), "cuda_started_before_determinism":
        cuda_started_early}, "wall_s": wall, "ok": not failed, "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(out), indent=1, allow_nan=False, default=str) + "\n")
    path.with_suffix(".md").write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)  # checkpoints: 80 MB each at width 4096
    print(f"wrote {path} and {path.with_suffix('.md')} ({wall:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
