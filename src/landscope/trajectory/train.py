"""The train job: deterministic training with checkpoints and resume (or importing a recorded loop),
then the snapshots and x_K; and the training step that every replay re-runs."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from landscope import store
from landscope.jobs import progress_bar
from landscope.problem.build import Problem, build_problem, epoch_of
from landscope.problem.optim import make_optimizer
from landscope.spec import RunSpec
from landscope.trajectory.rundir import (
    CheckpointError,
    RecordingError,
    checkpoint_path,
    checkpoint_sha256,
    checkpoint_valid,
    clear_divergence,
    load_checkpoint,
    load_recording,
    mark_diverged,
    read_divergence,
    read_train_rows,
    restore_state,
    save_checkpoint,
    segment_rows_path,
    write_manifest,
    write_segment_rows,
)
from landscope.trajectory.snapshot import select_minimizer, snapshot_run

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


def produce_run(spec: RunSpec, ckpt_dir: str | Path, results: str | Path, minimizer_path: str | Path,
                progress: bool = False) -> dict:
    """The train job of one run: train it (or, for ``source: recorded``, import what your own loop
    recorded), snapshot every checkpoint, and choose x_K into ``minimizer_path``; returns the choice
    (select_minimizer's dict). Three steps that stay separate functions (one job saves two
    interpreter and torch start-ups per run; each could be a rule of its own)."""
    if spec.source == "recorded":
        finish_recording(spec, ckpt_dir, results)
    else:
        train_run(spec, ckpt_dir, results, progress=progress)
    snapshots = snapshot_run(spec, ckpt_dir, results)
    return select_minimizer(spec, ckpt_dir, snapshots, minimizer_path, results)


def clear_measured_parts(spec: RunSpec, results: str | Path) -> None:
    """Delete the run's evaluation parts: those of an earlier configuration (e.g. more segments) or
    an earlier recording must not outlive it."""
    for table in ("steps", "directions", "drift"):
        for part in store.table_dir(results, table, spec.experiment, spec.run).glob("part-*.parquet"):
            part.unlink()


def train_run(spec: RunSpec, ckpt_dir: str | Path, results: str | Path, progress: bool = False) -> dict:
    """Train one run deterministically, checkpointing every ``snapshot_every`` steps.

    Resumes from the newest valid checkpoint in ``ckpt_dir`` written by the same configuration.
    Writes the ``train`` and ``runs`` tables and returns the manifest (also written into the run
    folder).
    """
    ckpt_dir = Path(ckpt_dir)
    if spec.source == "recorded":
        raise ValueError(f"run {spec.experiment}/{spec.run} has source: recorded: its trajectory comes from "
                         "your own loop (landscope.Recorder), not from train_run; see train.finish_recording")
    t0 = time.perf_counter()
    clear_measured_parts(spec, results)
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
    clear_divergence(ckpt_dir)
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
        write_segment_rows(ckpt_dir, j, spec, steps, [epoch_of(n, spec.batch_size, s) for s in steps],
                           [problem.lr(s) for s in steps], losses_cpu[:len(steps)])
        if bad:
            log.warning("run %s/%s diverged: loss %s at step %d; the run is marked diverged and left "
                        "out of the conditions; the rest of the study goes on", spec.experiment,
                        spec.run, losses_cpu[bad[0] - lo], bad[0])
            mark_diverged(ckpt_dir, bad[0], j, chash)
            break
        save_checkpoint(ckpt_dir, hi, problem, opt)
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    return finish_train(spec, problem, ckpt_dir, results, time.perf_counter() - t0,
                        read_divergence(ckpt_dir, chash))


def finish_recording(spec: RunSpec, ckpt_dir: str | Path, results: str | Path) -> dict:
    """The train job of a recorded run: check the recording and its checkpoints, then write the
    ``train`` and ``runs`` tables and the manifest exactly as landscope's training would."""
    ckpt_dir = Path(ckpt_dir)
    clear_measured_parts(spec, results)  # parts measured on an earlier recording
    rec = load_recording(ckpt_dir, spec)
    chash = spec.config_hash()
    diverged = read_divergence(ckpt_dir, chash)
    marks = spec.checkpoint_steps if diverged is None else spec.checkpoint_steps[:diverged["segment"] + 1]
    for s in marks:
        if not checkpoint_valid(checkpoint_path(ckpt_dir, s), chash):
            raise CheckpointError(f"run {spec.experiment}/{spec.run}: recorded checkpoint step={s} is missing, "
                                  "corrupted or from another configuration; record the run again")
    problem = build_problem(spec, rec)
    if rec.indices.numel() and int(rec.indices.max()) >= len(problem.data):
        raise RecordingError(f"run {spec.experiment}/{spec.run}: the recording indexes sample "
                             f"{int(rec.indices.max())}, but the dataset has {len(problem.data)} samples")
    return finish_train(spec, problem, ckpt_dir, results, rec.wall_s, diverged)


def finish_train(spec: RunSpec, problem: Problem, ckpt_dir: Path, results, wall_s: float,
                 diverged: dict | None = None) -> dict:
    """Write the run's ``train`` and ``runs`` tables and its manifest (the checkpoints up to the
    start of the segment that diverged, if it did); returns the manifest."""
    marks = spec.checkpoint_steps
    if diverged is not None:  # checkpoints up to the start of the segment that diverged
        marks = marks[:diverged["segment"] + 1]
    n_parts = len(marks) - 1 + (diverged is not None)
    status = "completed" if diverged is None else "diverged"
    meta = store.provenance(spec.config_hash(), str(problem.device))
    store.write_table(store.part_path(results, "train", spec.experiment, spec.run), "train",
                      read_train_rows(ckpt_dir, n_parts), meta)
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
        "checkpoints": [{"step": s, "file": checkpoint_path(ckpt_dir, s).name, "sha256": checkpoint_sha256(ckpt_dir, s)}
                        for s in marks],
    }
    write_manifest(ckpt_dir, manifest)
    return manifest
