"""Full-batch measurements at every checkpoint and the choice of x_K."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from landscope import store
from landscope.problem.build import build_problem
from landscope.problem.evaluate import full_loss_and_grad, norm_of
from landscope.problem.heldout import heldout_metrics, load_heldout
from landscope.trajectory.rundir import (
    checkpoint_path,
    load_checkpoint,
    manifest_checkpoints,
    run_manifest,
    save_full_grad,
    save_minimizer,
    snapshots_path,
)


def snapshot_run(spec, ckpt_dir: str | Path) -> Path:
    """Full-batch loss, gradient norm (the gradient too: rundir.save_full_grad), parameter norm and accuracy, and
    loss and accuracy on at most ``spec.heldout_samples`` held-out samples (landscope.problem.heldout; null without
    any), at every checkpoint of the training folder ``ckpt_dir``, into its snapshots file (rows named by ``spec``:
    the job gets RunSpec.for_training's names; each run's select_minimizer job publishes them under its own)."""
    problem = build_problem(spec)
    heldout = load_heldout(spec, spec.heldout_samples, problem.device)
    key = spec.training_key()
    rows = {k: [] for k in store.SCHEMAS["snapshots"]}
    for step in manifest_checkpoints(run_manifest(spec, ckpt_dir, "snapshot")):  # fewer when the run diverged
        state = load_checkpoint(checkpoint_path(ckpt_dir, step), key, problem.device)
        problem.model.load_state_dict(state["model"])
        f, grads, acc = full_loss_and_grad(problem, problem.model)
        save_full_grad(ckpt_dir, step, key, f, grads)  # the evaluate jobs' rows at checkpoints
        for k, v in (("experiment", spec.experiment), ("run", spec.run), ("step", step),
                     ("full_loss", f), ("full_grad_norm", norm_of(grads)),
                     ("param_norm", norm_of([p.detach() for p in problem.model.parameters()])),
                     ("accuracy", acc), *heldout_metrics(problem, heldout, f).items()):
            rows[k].append(v)
    meta = store.provenance(key, str(problem.device))
    return store.write_table(snapshots_path(ckpt_dir), "snapshots", rows, meta)


@dataclass(frozen=True)
class Choice:
    """x_K as a minimizer method chose it."""

    step: int  # the checkpoint it is (the last one averaged, for tail_average)
    model: dict  # its model state
    full_loss: float | None  # f(x_K) from the snapshots; None when x_K is no checkpoint
    extra: dict = field(default_factory=dict)  # what else the method records (averaged_steps)


def last_index(snaps: dict) -> int:
    """The last checkpoint (the paper's x_K)."""
    return snaps["step"].index(max(snaps["step"]))


def best_index(snaps: dict) -> int:
    """The checkpoint of lowest full loss (the later one on a tie)."""
    return min(range(len(snaps["step"])), key=lambda j: (snaps["full_loss"][j], -snaps["step"][j]))


def checkpoint_choice(index_of: Callable[[dict], int]) -> Callable:
    """A method that picks one checkpoint: the one at ``index_of(snapshots)``."""

    def choose(spec, ckpt_dir, snaps: dict) -> Choice:
        i = index_of(snaps)
        step = snaps["step"][i]
        state = load_checkpoint(checkpoint_path(ckpt_dir, step), spec.training_key())
        return Choice(step, state["model"], snaps["full_loss"][i])

    return choose


TAIL_FRACTION = 0.25


def tail_steps(checkpoints: list[int], steps: int) -> list[int]:
    """Checkpoints in the last quarter of training (at least the last two)."""
    tail = [s for s in checkpoints if s >= (1 - TAIL_FRACTION) * steps]
    return tail if len(tail) >= 2 else sorted(checkpoints)[-2:]


def tail_average(spec, ckpt_dir, snaps: dict) -> Choice:
    """x_K = mean of the parameters of the tail checkpoints (integer buffers: from the last one)."""
    chosen = tail_steps(sorted(snaps["step"]), spec.steps)
    states = [load_checkpoint(checkpoint_path(ckpt_dir, s), spec.training_key())["model"] for s in chosen]
    avg = {}
    for k, last in states[-1].items():
        if last.is_floating_point():
            avg[k] = (sum(st[k].double() for st in states) / len(states)).to(last.dtype)
        else:
            avg[k] = last.clone()
    return Choice(chosen[-1], avg, None, {"averaged_steps": chosen})


# minimizer method -> how it chooses x_K (projection: x_K moves per step, Proj(x_k, S), in the
# replay; the file holds the last checkpoint)
MINIMIZERS: dict[str, Callable] = {
    "last": checkpoint_choice(last_index),
    "best": checkpoint_choice(best_index),
    "tail_average": tail_average,
    "projection": checkpoint_choice(last_index),
}


def select_minimizer(spec, ckpt_dir: str | Path, snaps: dict, out_pt: str | Path, results: str | Path) -> dict:
    """Choose x_K among the checkpoints by the run's method (MINIMIZERS: ``last``, the paper's, the
    lowest full loss ``best``, ``tail_average``, ``projection``); write it (with its sidecar) and
    the ``minimizers`` row; returns {'step', 'method', 'full_loss' (NaN when not measured), ...}.
    ``snaps``: the trajectory's snapshot rows as columns. Needs no model: ``last`` and ``best`` load
    one checkpoint, ``tail_average`` the tail's."""
    choose = MINIMIZERS.get(spec.minimizer)
    if choose is None:
        raise ValueError(f"unknown minimizer method {spec.minimizer!r}; use last, best, tail_average or projection")
    c = choose(spec, ckpt_dir, snaps)
    out = {"step": c.step, "method": spec.minimizer,
           "full_loss": math.nan if c.full_loss is None else c.full_loss, **c.extra}
    save_minimizer(out_pt, {"model": c.model, "step": c.step, "method": spec.minimizer, **c.extra}, out)
    store.write_table(store.part_path(results, "minimizers", spec.experiment, spec.run), "minimizers", {
        "experiment": [spec.experiment], "run": [spec.run], "method": [spec.minimizer],
        "step": [c.step], "full_loss": [c.full_loss]}, store.provenance(spec.config_hash()))
    return out
