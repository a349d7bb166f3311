"""Deterministic training with checkpoints and resume; the training step that replay re-runs."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from landscope import store
from landscope.jobs import progress_bar
from landscope.problem.build import Problem, build_problem, epoch_of
from landscope.problem.optim import lr_at, make_optimizer
from landscope.spec import RunSpec
from landscope.trajectory.rundir import (
    checkpoint_path,
    checkpoint_valid,
    diverged_path,
    load_checkpoint,
    read_divergence,
    restore_state,
    save_checkpoint,
    segment_rows_path,
)

log = logging.getLogger("landscope")


def take_step(problem: Problem, opt: torch.optim.Optimizer, step: int, hook=None) -> torch.Tensor:
    """One optimizer step of the trajectory; ``hook(idx, xb, yb, loss)`` runs before ``opt.step``."""
    model = problem.model
    idx = problem.batch(step).to(problem.device)
    xb, yb = problem.data.x[idx], problem.data.y[idx]
    lr = problem.lr(step)
    for group in opt.param_groups:
        group["lr"] = lr
    if not model.training:  # every helper that switches modes restores each module's own flag
        model.train()
    opt.zero_grad(set_to_none=True)
    loss = problem.loss_fn(model, model(xb), yb).mean()
    loss.backward()
    if hook is not None:
        hook(idx, xb, yb, loss)
    set_info = getattr(opt, "set_batch_info", None)
    if set_info is not None:  # Polyak-type step sizes need f_{i_k}(x_k) and f_{i_k}*
        set_info(loss.detach(), problem.batch_star(idx))
    opt.step()
    return loss.detach()


def train_run(spec: RunSpec, ckpt_dir: str | Path, results: str | Path, progress: bool = False) -> dict:
    """Train one run deterministically, checkpointing every ``snapshot_every`` steps.

    Resumes from the newest valid checkpoint in ``ckpt_dir`` written by the same configuration.
    Writes the ``train`` and ``runs`` tables and returns the manifest (also written as
    ``ckpt_dir/manifest.json``).
    """
    ckpt_dir = Path(ckpt_dir)
    if spec.source == "recorded":
        raise ValueError(f"run {spec.experiment}/{spec.run} has source: recorded: its trajectory comes from "
                         "your own loop (landscope.Recorder), not from train_run; see recorder.finish_recording")
    t0 = time.perf_counter()
    # evaluation parts of an earlier configuration (e.g. more segments) must not outlive it
    for table in ("steps", "directions", "drift"):
        for part in store.table_dir(results, table, spec.experiment, spec.run).glob("part-*.parquet"):
            part.unlink()
    problem = build_problem(spec)
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    marks = spec.checkpoint_steps
    chash = spec.config_hash()
    # resume after the longest prefix of valid checkpoints (a corrupted one is recomputed)
    good = -1
    for j, s in enumerate(marks):
        if not (checkpoint_valid(checkpoint_path(ckpt_dir, s), chash)
                and (j == 0 or segment_rows_path(ckpt_dir, j - 1).is_file())):
            if checkpoint_path(ckpt_dir, s).exists():
                log.warning("checkpoint step=%d is invalid (truncated, corrupted or from another "
                            "configuration): recomputing from step %d", s, marks[max(j - 1, 0)])
            break
        good = j
    start_j = max(good, 0)
    diverged = read_divergence(ckpt_dir, chash)
    if diverged is not None:  # deterministic: it would diverge again at the same step
        return finish_train(spec, problem, ckpt_dir, results, time.perf_counter() - t0, diverged)
    diverged_path(ckpt_dir).unlink(missing_ok=True)
    if good >= 0:
        restore_state(problem, opt, load_checkpoint(checkpoint_path(ckpt_dir, marks[good]), chash))
        if good > 0:
            log.info("resuming %s/%s from step %d", spec.experiment, spec.run, marks[good])
    else:
        save_checkpoint(ckpt_dir, 0, problem, opt)
    n = len(problem.data)
    bar = progress_bar(progress, spec.steps, marks[start_j], f"train {spec.run}")
    for j in range(start_j, len(marks) - 1):
        lo, hi = marks[j], marks[j + 1]
        losses = torch.empty(hi - lo, dtype=torch.float64, device=problem.device)
        for step in range(lo, hi):
            losses[step - lo] = take_step(problem, opt, step)
        losses_cpu = losses.cpu().tolist()
        bad = [lo + i for i, v in enumerate(losses_cpu) if not math.isfinite(v)]
        end = bad[0] + 1 if bad else hi
        steps = list(range(lo, end))
        store.write_table(segment_rows_path(ckpt_dir, j), "train", {
            "experiment": [spec.experiment] * len(steps), "run": [spec.run] * len(steps),
            "step": steps, "epoch": [epoch_of(n, spec.batch_size, s) for s in steps],
            "lr": [lr_at(spec.optimizer, spec.schedule, spec.steps, s) for s in steps],
            "batch_loss": losses_cpu[:len(steps)]})
        if bad:
            log.warning("run %s/%s diverged: loss %s at step %d; the run is marked diverged and left "
                        "out of the conditions; the rest of the study goes on", spec.experiment,
                        spec.run, losses_cpu[bad[0] - lo], bad[0])
            store.atomic_write_bytes(diverged_path(ckpt_dir), json.dumps(
                {"step": bad[0], "segment": j, "config_hash": chash}).encode())
            break
        save_checkpoint(ckpt_dir, hi, problem, opt)
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    return finish_train(spec, problem, ckpt_dir, results, time.perf_counter() - t0,
                         read_divergence(ckpt_dir, chash))


def finish_train(spec: RunSpec, problem: Problem, ckpt_dir: Path, results, wall_s: float,
                  diverged: dict | None = None) -> dict:
    marks = spec.checkpoint_steps
    if diverged is not None:  # checkpoints up to the start of the segment that diverged
        marks = marks[:diverged["segment"] + 1]
    n_parts = len(marks) - 1 + (diverged is not None)
    status = "completed" if diverged is None else "diverged"
    meta = store.provenance(spec.config_hash(), str(problem.device))
    parts = [pq.read_table(segment_rows_path(ckpt_dir, j)) for j in range(n_parts)]
    rows = pa.concat_tables(parts).to_pydict()
    store.write_table(store.part_path(results, "train", spec.experiment, spec.run), "train", rows, meta)
    opt_name = spec.optimizer["name"] + (f"(momentum={spec.optimizer['momentum']})"
                                         if spec.optimizer.get("momentum") else "")
    store.write_table(store.part_path(results, "runs", spec.experiment, spec.run), "runs", {
        "experiment": [spec.experiment], "run": [spec.run], "point": [spec.point],
        "seed": [spec.seed], "sweep_json": [json.dumps(spec.sweep, sort_keys=True)],
        "model": [json.dumps(spec.model, sort_keys=True)], "dataset": [spec.dataset["name"]],
        "optimizer": [opt_name], "lr": [float(spec.optimizer["lr"])], "batch_size": [spec.batch_size],
        "steps": [spec.steps], "snapshot_every": [spec.snapshot_every], "n_params": [problem.n_params],
        "n_train": [len(problem.data)], "status": [status],
        "diverged_step": [None if diverged is None else diverged["step"]], "train_wall_s": [wall_s],
        "device": [str(problem.device)], "config_hash": [spec.config_hash()]}, meta)
    manifest = {
        "experiment": spec.experiment, "run": spec.run, "config_hash": spec.config_hash(), "spec": spec.to_dict(),
        "n_params": problem.n_params, "status": status, "train_wall_s": wall_s,
        "diverged_step": None if diverged is None else diverged["step"],
        "checkpoints": [{"step": s, "file": checkpoint_path(ckpt_dir, s).name,
                         "sha256": json.loads(checkpoint_path(ckpt_dir, s).with_suffix(".json").read_text())["sha256"]}
                        for s in marks],
    }
    store.atomic_write_bytes(Path(ckpt_dir) / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest
