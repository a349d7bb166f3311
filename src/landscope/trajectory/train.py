"""The train job: deterministic training with checkpoints and resume (or importing a recorded loop);
the select_minimizer job's publishing of a run; and the training step that every replay re-runs."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pyarrow.parquet as pq
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
    run_manifest,
    save_checkpoint,
    segment_rows_path,
    snapshots_path,
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


def finish_run(spec: RunSpec, ckpt_dir: str | Path, minimizer_path: str | Path, results: str | Path) -> dict:
    """The select_minimizer job of one run: publish its trajectory's ``runs``, ``train`` and
    ``snapshots`` rows under the run's own experiment and run names (the training folder
    ``ckpt_dir`` may be shared with other runs), drop evaluation parts of an earlier configuration,
    and choose x_K into ``minimizer_path``; returns the choice (snapshot.select_minimizer's dict)."""
    ckpt_dir = Path(ckpt_dir)
    clear_measured_parts(spec, results)
    manifest = run_manifest(spec, ckpt_dir, "select_minimizer")
    meta = store.provenance(spec.config_hash(), manifest["device"])
    n_parts = len(manifest["checkpoints"]) - 1 + (manifest["status"] == "diverged")
    store.write_table(store.part_path(results, "train", spec.experiment, spec.run), "train",
                      labelled(read_train_rows(ckpt_dir, n_parts), spec), meta)
    snaps = labelled(pq.read_table(snapshots_path(ckpt_dir)).to_pydict(), spec)
    store.write_table(store.part_path(results, "snapshots", spec.experiment, spec.run), "snapshots", snaps, meta)
    opt_name = spec.optimizer["name"] + (f"(momentum={spec.optimizer['momentum']})"
                                         if spec.optimizer.get("momentum") else "")
    store.write_table(store.part_path(results, "runs", spec.experiment, spec.run), "runs", {
        "experiment": [spec.experiment], "run": [spec.run], "point": [spec.point],
        "seed": [spec.seed], "sweep_json": [json.dumps(spec.sweep, sort_keys=True)],
        "model": [json.dumps(spec.model, sort_keys=True)], "dataset": [spec.dataset["name"]],
        "optimizer": [opt_name], "lr": [float(spec.optimizer["lr"])], "batch_size": [spec.batch_size],
        "steps": [spec.steps], "snapshot_every": [spec.snapshot_every], "n_params": [manifest["n_params"]],
        "n_train": [manifest["n_train"]], "status": [manifest["status"]],
        "diverged_step": [manifest["diverged_step"]], "train_wall_s": [manifest["train_wall_s"]],
        "device": [manifest["device"]], "config_hash": [spec.config_hash()],
        "training_key": [manifest["training_key"]]}, meta)
    return select_minimizer(spec, ckpt_dir, snaps, minimizer_path, results)


def snapshot_and_select(spec: RunSpec, ckpt_dir: str | Path, minimizer_path: str | Path,
                        results: str | Path) -> dict:
    """The snapshot and select_minimizer jobs of one trained run in one call (tests, benchmarks)."""
    snapshot_run(spec, ckpt_dir)
    return finish_run(spec, ckpt_dir, minimizer_path, results)


def labelled(rows: dict, spec: RunSpec) -> dict:
    """Rows of a (possibly shared) training folder, named by ``spec``'s experiment and run."""
    n = len(rows["step"])
    return {**rows, "experiment": [spec.experiment] * n, "run": [spec.run] * n}


def clear_measured_parts(spec: RunSpec, results: str | Path) -> None:
    """Delete the run's evaluation parts: those of an earlier configuration (e.g. more segments) or
    an earlier recording must not outlive it."""
    for table in ("steps", "directions", "drift"):
        for part in store.table_dir(results, table, spec.experiment, spec.run).glob("part-*.parquet"):
            part.unlink()


def train_run(spec: RunSpec, ckpt_dir: str | Path, progress: bool = False) -> dict:
    """Train one trajectory deterministically, checkpointing every ``snapshot_every`` steps.

    Resumes from the newest valid checkpoint in the training folder ``ckpt_dir`` written for the same
    training key. Returns the manifest (also written into the folder); the run's tables are written
    by :func:`finish_run`.
    """
    ckpt_dir = Path(ckpt_dir)
    if spec.source == "recorded":
        raise ValueError(f"run {spec.experiment}/{spec.run} has source: recorded: its trajectory comes from "
                         "your own loop (landscope.Recorder), not from train_run; see train.finish_recording")
    t0 = time.perf_counter()
    problem = build_problem(spec)
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    marks = spec.checkpoint_steps
    chash = spec.training_key()
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
        return finish_train(spec, problem, ckpt_dir, time.perf_counter() - t0, diverged)
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
    return finish_train(spec, problem, ckpt_dir, time.perf_counter() - t0, read_divergence(ckpt_dir, chash))


def finish_recording(spec: RunSpec, ckpt_dir: str | Path) -> dict:
    """The train job of a recorded run: check the recording and its checkpoints, then write the
    manifest exactly as landscope's training would."""
    ckpt_dir = Path(ckpt_dir)
    rec = load_recording(ckpt_dir, spec)
    chash = spec.training_key()
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
    return finish_train(spec, problem, ckpt_dir, rec.wall_s, diverged)


def train_or_import(spec: RunSpec, ckpt_dir: str | Path, progress: bool = False) -> dict:
    """The train job: train the trajectory (or, for ``source: recorded``, import what your own loop
    recorded); returns the manifest."""
    if spec.source == "recorded":
        return finish_recording(spec, ckpt_dir)
    return train_run(spec, ckpt_dir, progress=progress)


def finish_train(spec: RunSpec, problem: Problem, ckpt_dir: Path, wall_s: float,
                 diverged: dict | None = None) -> dict:
    """Write the trajectory's manifest (the checkpoints up to the start of the segment that diverged,
    if it did); returns it."""
    marks = spec.checkpoint_steps
    if diverged is not None:  # checkpoints up to the start of the segment that diverged
        marks = marks[:diverged["segment"] + 1]
    manifest = {
        "training_key": spec.training_key(), "training": spec.training_spec(),
        "spec": spec.to_dict(),  # as the train job got it: RunSpec.for_training
        "n_params": problem.n_params, "n_train": len(problem.data), "device": str(problem.device),
        "status": "completed" if diverged is None else "diverged", "train_wall_s": wall_s,
        "diverged_step": None if diverged is None else diverged["step"],
        "checkpoints": [{"step": s, "file": checkpoint_path(ckpt_dir, s).name, "sha256": checkpoint_sha256(ckpt_dir, s)}
                        for s in marks],
    }
    write_manifest(ckpt_dir, manifest)
    return manifest
