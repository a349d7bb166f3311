"""Replaying a trajectory: one loop (:func:`replay`) that restores a checkpoint and re-runs the
training step with the same batches, used by the evaluate job (every step measured against x_K,
:func:`replay_segment`, which also keeps the iterates the loss surfaces need) and by
:func:`parameter_path`; and the one drift check against the next checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from landscope import store
from landscope.jobs import progress_bar
from landscope.problem.build import Problem, build_problem
from landscope.problem.evaluate import direction_row, flatten, measurement_mode, use_batch_statistics
from landscope.problem.models import batchnorm_modules, has_dropout
from landscope.problem.optim import make_optimizer
from landscope.settings import path_steps
from landscope.spec import RunSpec
from landscope.trajectory.rundir import (
    checkpoint_path,
    load_checkpoint,
    load_minimizer,
    load_recording,
    manifest_checkpoints,
    read_divergence,
    read_manifest,
    restore_state,
    run_manifest,
    save_path_iterates,
)
from landscope.trajectory.train import take_step

log = logging.getLogger("landscope")


class ReplayDriftError(RuntimeError):
    """The replayed trajectory left the checkpointed one by more than the tolerance."""


def attach_recording(problem: Problem, ckpt_dir: str | Path) -> Problem:
    """The problem whose steps a replay re-runs: a ``source: recorded`` run steps through the batches
    and learning rates its own loop recorded (the one place that loads them for a run folder), any
    other run through the config's seeded order, as built. Decided here, once, not at every step."""
    if problem.spec.source != "recorded":
        return problem
    return dataclasses.replace(problem, order=load_recording(ckpt_dir, problem.spec))


# ----------------------------------------------------------------------------------- the loop, the drift
@dataclass(frozen=True)
class Drift:
    """How far the replayed parameters ended from a checkpoint, and how far they may."""

    step: int  # the checkpoint compared with
    value: float  # max |replayed - checkpointed| over the model's state (inf: an integer buffer differs)
    tolerance: float

    def check(self, where: str) -> None:
        """Raise ReplayDriftError (``where``: the run and steps replayed) when over the tolerance."""
        if not self.value <= self.tolerance:
            raise ReplayDriftError(
                f"{where}: replayed parameters differ from checkpoint step={self.step} by max |diff| = "
                f"{self.value:.3e} > tolerance {self.tolerance:.1e}. Training is not reproducible here "
                "(nondeterministic kernels?); raise drift_tolerance only if you accept approximate measurements")


def replay(problem: Problem, ckpt_dir: str | Path, lo: int, hi: int, hook: Callable | None = None,
           visit: Callable[[int], None] | None = None) -> Drift | None:
    """Restore checkpoint ``lo`` (model, optimizer, RNG) into ``problem`` and a fresh optimizer, and
    re-run the training steps lo..hi-1 with the problem's batches and learning rates.

    ``visit(k)`` runs before step k with the model at x_k; ``hook`` is take_step's (inside the step,
    after the backward pass). Afterwards the model is at x_hi; returns its drift from checkpoint
    ``hi`` (None when ``hi`` is no checkpoint step: a diverged run's last iterate)."""
    spec = problem.spec
    chash = spec.config_hash()
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    restore_state(problem, opt, load_checkpoint(checkpoint_path(ckpt_dir, lo), chash))
    for step in range(lo, hi):
        if visit is not None:
            visit(step)
        take_step(problem, opt, step, hook)
    if hi not in spec.checkpoint_steps:
        return None
    ref = load_checkpoint(checkpoint_path(ckpt_dir, hi), chash, map_location=problem.device)["model"]
    return Drift(hi, parameter_drift(problem.model, ref), drift_tolerance(spec, problem.device))


def parameter_drift(model: nn.Module, reference: dict) -> float:
    """max |model - reference| over every floating tensor of the state (inf when an integer one differs)."""
    worst = 0.0
    for name, p in model.state_dict().items():
        ref = reference[name]
        if p.is_floating_point():
            worst = max(worst, (p.double() - ref.double()).abs().max().item() if p.numel() else 0.0)
        elif not torch.equal(p, ref):
            worst = math.inf
    return worst


def drift_tolerance(spec: RunSpec, device: torch.device) -> float:
    """The run's drift_tolerance; ``auto``: bitwise (0) on CPU, 1e-4 on accelerators."""
    if spec.drift_tolerance == "auto":
        return 0.0 if device.type == "cpu" else 1e-4
    return float(spec.drift_tolerance)


def keep_state(model: nn.Module) -> dict:
    """A copy of the model's state (parameters and buffers) as it is now."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------- x_K per step
class FixedMinimizer:
    """x_K as the train job chose it: the same point at every step."""

    moves = False

    def __init__(self, params_k: list[torch.Tensor]):
        self.flat = flatten(params_k)

    def sync(self, params: list[torch.Tensor]) -> None:
        """Nothing to do: x_K does not depend on x_k."""


class ProjectedMinimizer:
    """``minimizer: projection``: x_K = Proj(x_k, S), the nearest minimizer of the current iterate,
    which the model computes (its ``project`` method); moved into ``params_k`` at every step."""

    moves = True

    def __init__(self, model: nn.Module, params_k: list[torch.Tensor]):
        self.model, self.params_k = model, params_k
        self.flat = flatten(params_k)

    def sync(self, params: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for q, v in zip(self.params_k, self.model.project(params)):
                q.copy_(v)
        self.flat = flatten(self.params_k)


def minimizer_reference(spec: RunSpec, model: nn.Module, params_k: list[torch.Tensor]):
    """The x_K a replay measures against, chosen once: fixed, or projected at every step."""
    if spec.minimizer != "projection":
        return FixedMinimizer(params_k)
    if not hasattr(model, "project"):
        raise ValueError(f"experiment {spec.experiment}: minimizer: projection needs a model that knows "
                         f"its set of minimizers (a 'project' method), which {type(model).__name__} "
                         "has not; use minimizer: last or best")
    return ProjectedMinimizer(model, params_k)


STEP_COLUMNS = ("batch_loss", "batch_loss_at_min", "batch_loss_star", "grad_dot_dir", "grad_norm", "dist_to_min")
CPU_FORWARD_SAMPLES = 512  # measured: MLP and CNN forwards on one core are fastest near 512 samples


def losses_at(problem: Problem, model: nn.Module, steps: range) -> torch.Tensor:
    """f_{i_k}(x) for every step k in ``steps`` (float64), the batches of many steps in one no-grad
    forward of up to ``eval_batch_size`` samples (on a CPU at most ~512: larger activations leave
    the cache and are slower, 1.4-1.7x per-step forwards here). Valid only for a model without
    batch-dependent layers (no batch-norm in batch-statistics mode): each sample's loss is its own."""
    spec = problem.spec
    samples = spec.eval_batch_size if problem.device.type != "cpu" else min(spec.eval_batch_size, CPU_FORWARD_SAMPLES)
    per = max(1, samples // spec.batch_size)
    out = torch.empty(len(steps), dtype=torch.float64, device=problem.device)
    with torch.no_grad():
        for a in range(0, len(steps), per):
            chunk = steps[a:a + per]
            idx = torch.cat([problem.batch(s) for s in chunk]).to(problem.device)
            losses = problem.loss_fn(model, model(problem.data.x[idx]), problem.data.y[idx])
            out[a:a + len(chunk)] = losses.reshape(len(chunk), -1).mean(1).double()
    return out


def loss_at(problem: Problem, model: nn.Module, step: int) -> torch.Tensor:
    """f_{i_k}(x) of one step's batch (no grad, float64)."""
    idx = problem.batch(step).to(problem.device)
    with torch.no_grad():
        return problem.loss_fn(model, model(problem.data.x[idx]), problem.data.y[idx]).mean().double()


# ----------------------------------------------------------------------------------- the evaluate job
def segment_path_steps(marks: list[int], path_points: int | str, lo: int, hi: int) -> set[int]:
    """The steps strictly inside [lo, hi] of the run's surface path (settings.path_steps over the
    checkpoints ``marks`` the run has): the iterates its surfaces need that no checkpoint holds (a set:
    the replay tests every step against it)."""
    return {s for s in path_steps(marks, path_points) if lo < s < hi} if path_points else set()


def replay_segment(spec: RunSpec, ckpt_dir: str | Path, minimizer_path: str | Path, segment: int,
                   results: str | Path, path_points: int | str = 0, progress: bool = False) -> dict:
    """Replay segment ``segment`` from its checkpoint, measuring every step against x_K.

    Writes the ``steps`` rows of the segment, the ``directions`` rows of its start checkpoint (and
    of the final checkpoint for the last segment) and a ``drift`` row. Raises ReplayDriftError when
    the replayed parameters differ from the next checkpoint by more than the tolerance. Keeps in the
    run folder the iterates inside the segment that the run's loss surfaces need (``path_points``,
    the run's surfaces setting; 0 when it gets none: the file is then empty), so that the surfaces
    job replays nothing.

    Cost: the training step itself, three dot products over the flat parameter vector, and f_{i_k}(x_K).
    When x_K is fixed and the model has no batch-norm, f_{i_k}(x_K) of all steps is computed after
    the loop in large no-grad batches (checked against a per-step forward at the first and last
    step); nothing is copied to the host before the segment ends.
    """
    t0 = time.perf_counter()
    ckpt_dir = Path(ckpt_dir)
    marks = spec.checkpoint_steps
    if not 0 <= segment < len(marks) - 1:
        raise ValueError(f"run {spec.run} has segments 0..{len(marks) - 2}, not {segment}")
    lo, hi = marks[segment], marks[segment + 1]
    chash = spec.config_hash()
    where = f"run {spec.experiment}/{spec.run} segment {segment} (steps {lo}..{hi})"
    keep = segment_path_steps(manifest_checkpoints(run_manifest(spec, ckpt_dir, "evaluate")), path_points, lo, hi)
    if read_divergence(ckpt_dir, chash) is not None:
        return _diverged_segment(spec, ckpt_dir, segment, results, keep, where)
    problem = attach_recording(build_problem(spec), ckpt_dir)
    model_k = copy.deepcopy(problem.model)
    model_k.load_state_dict(load_minimizer(minimizer_path, problem.device)["model"])
    model_k.eval()
    for p in model_k.parameters():
        p.requires_grad_(False)
    params = list(problem.model.parameters())
    params_k = list(model_k.parameters())
    batchnorm = bool(batchnorm_modules(model_k))
    if batchnorm:  # x_K is only measured: batch statistics of each batch, running statistics never written
        use_batch_statistics(model_k)
    reference = minimizer_reference(spec, problem.model, params_k)
    # x_K fixed and every sample's loss its own: f_{i_k}(x_K) for all steps after the loop, batched
    deferred = not reference.moves and not batchnorm

    n_steps = hi - lo
    dev, f64 = problem.device, torch.float64
    # per step: f_{i_k}(x_k), f_{i_k}(x_K), and the Gram matrix of (g, d) = (grad f_{i_k}(x_k), x_k - x_K)
    losses = torch.full((n_steps, 2), math.nan, dtype=f64, device=dev)
    grams = torch.empty(n_steps, 4, dtype=f64, device=dev)
    pair = torch.empty(2, sum(p.numel() for p in params), dtype=f64, device=dev)
    bar = progress_bar(progress, n_steps, 0, f"replay {spec.run} [{lo},{hi})")
    state = {"i": 0}

    # How each step is measured, decided here once. f_{i_k}(x_k) and its gradient: with dropout the
    # measurement needs its own forward (dropout off, batch-norm on this batch's statistics, running
    # statistics untouched); without it, the training forward already gives both.
    def own_forward(xb, yb, loss):
        with measurement_mode(problem.model):
            mloss = problem.loss_fn(problem.model, problem.model(xb), yb).mean()
            return mloss, torch.autograd.grad(mloss, params)

    def training_forward(xb, yb, loss):
        return loss, [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

    # f_{i_k}(x_K): in this step's forward, or (deferred) for all steps after the loop
    def loss_at_min_now(i, xb, yb):
        losses[i, 1] = problem.loss_fn(model_k, model_k(xb), yb).mean()

    def loss_at_min_later(i, xb, yb):
        """Nothing now: :func:`_deferred_losses_at_min` measures every step after the loop."""

    loss_and_grads = own_forward if has_dropout(problem.model) else training_forward
    loss_at_min = loss_at_min_later if deferred else loss_at_min_now

    def hook(idx, xb, yb, loss):
        i = state["i"]
        reference.sync(params)
        mloss, grads = loss_and_grads(xb, yb, loss)
        with torch.no_grad():
            # g and d side by side in float64 (exact products of float32 numbers), then one BLAS
            # product gives <g, d>, |g|^2, |d|^2: six kernels per step, no allocation
            torch.cat([t.reshape(-1) for t in grads], out=pair[0])
            torch.cat([t.detach().reshape(-1) for t in params], out=pair[1])
            pair[1].sub_(reference.flat)
            torch.mm(pair, pair.T, out=grams[i].view(2, 2))
            losses[i, 0] = mloss.detach()
            loss_at_min(i, xb, yb)
        state["i"] = i + 1
        if bar is not None:
            bar.update(1)

    meta = store.provenance(chash, str(problem.device))
    full_batch_s = [0.0]  # seconds spent on full-batch direction rows (reported, for the benchmarks)
    directions, states = [], {}

    def direction(step: int) -> dict:
        """The full-batch row at x_step (f(x_K) measured once, at the first row, when x_K is fixed)."""
        t = time.perf_counter()
        reference.sync(params)
        f_k = None if reference.moves or not directions else directions[0]["full_loss_at_min"]
        out = direction_row(problem, model_k, step, f_k)
        full_batch_s[0] += time.perf_counter() - t
        return out

    every = spec.directions_every

    def visit(step: int) -> None:
        if step == lo or (every and (step - lo) % every == 0):  # full-batch rows between checkpoints too
            directions.append(direction(step))
        if step in keep:
            states[step] = keep_state(problem.model)

    drift = replay(problem, ckpt_dir, lo, hi, hook, visit)
    if bar is not None:
        bar.close()
    if deferred:
        losses[:, 1] = _deferred_losses_at_min(problem, model_k, range(lo, hi))
    wall = time.perf_counter() - t0
    store.write_table(store.part_path(results, "drift", spec.experiment, spec.run, segment), "drift", {
        "experiment": [spec.experiment], "run": [spec.run], "segment": [segment], "step": [hi],
        "max_abs_drift": [drift.value], "tolerance": [drift.tolerance], "replay_wall_s": [wall]}, meta)
    drift.check(where)
    save_path_iterates(ckpt_dir, segment, spec, states, drift.value)
    if hi == spec.steps:
        directions.append(direction(hi))
    star = (problem.batch_star(None).expand(n_steps) if problem.fstar is None else
            torch.stack([problem.batch_star(problem.batch(s).to(dev)) for s in range(lo, hi)]))
    rows = torch.stack([losses[:, 0], losses[:, 1], star.to(f64), grams[:, 1],
                        grams[:, 0].sqrt(), grams[:, 3].sqrt()], 1)
    cols = dict(zip(STEP_COLUMNS, rows.cpu().T.tolist()))  # the segment's one copy to the host
    steps = list(range(lo, hi))
    cols["lr"] = [problem.lr(s) for s in steps]
    store.write_table(store.part_path(results, "steps", spec.experiment, spec.run, segment), "steps",
                      {"experiment": [spec.experiment] * n_steps, "run": [spec.run] * n_steps,
                       "step": steps, **cols}, meta)
    dcols = {k: [r[k] for r in directions] for k in directions[0]}
    store.write_table(store.part_path(results, "directions", spec.experiment, spec.run, segment),
                      "directions", {"experiment": [spec.experiment] * len(directions),
                                     "run": [spec.run] * len(directions), **dcols}, meta)
    return {"segment": segment, "drift": drift.value, "wall_s": wall, "full_batch_s": full_batch_s[0],
            "path_iterates": len(states)}


BATCHED_RTOL, BATCHED_ATOL = 1e-4, 1e-6


def _deferred_losses_at_min(problem: Problem, model_k: nn.Module, steps: range) -> torch.Tensor:
    """f_{i_k}(x_K) of every step, batched across steps, after checking on the first and last step
    that batching does not change a sample's loss (a model whose layers mix the samples of a batch
    in ways landscope cannot see, e.g. a hand-written normalisation, falls back to per-step forwards)."""
    batched = losses_at(problem, model_k, steps)
    ends = sorted({steps[0], steps[-1]})
    single = torch.stack([loss_at(problem, model_k, s) for s in ends])
    if torch.allclose(batched[[s - steps[0] for s in ends]], single, rtol=BATCHED_RTOL, atol=BATCHED_ATOL):
        return batched
    log.info("run %s/%s: losses at x_K change when batches are stacked (batch-dependent layers): "
             "measuring them one step at a time", problem.spec.experiment, problem.spec.run)
    return torch.stack([loss_at(problem, model_k, s) for s in steps])


def _diverged_segment(spec: RunSpec, ckpt_dir: Path, segment: int, results, keep: set[int], where: str) -> dict:
    """A diverged run has no trajectory to measure: its parts exist (the DAG is static) but are empty.
    Its surfaces still need the iterates ``keep`` of a segment before the divergence: replayed, not measured."""
    chash = spec.config_hash()
    meta = {**store.provenance(chash), "status": "diverged"}
    for table in ("steps", "directions", "drift"):
        cols = {c: [] for c in store.SCHEMAS[table]}
        store.write_table(store.part_path(results, table, spec.experiment, spec.run, segment), table, cols, meta)
    log.info("run %s/%s diverged during training: segment %d left empty", spec.experiment, spec.run, segment)
    states, drift = {}, None
    if keep:
        problem = attach_recording(build_problem(spec), ckpt_dir)
        lo, hi = spec.checkpoint_steps[segment], spec.checkpoint_steps[segment + 1]

        def visit(step: int) -> None:
            if step in keep:
                states[step] = keep_state(problem.model)

        replayed = replay(problem, ckpt_dir, lo, hi, visit=visit)
        replayed.check(where)
        drift = replayed.value
    save_path_iterates(ckpt_dir, segment, spec, states, drift)
    return {"segment": segment, "drift": 0.0, "wall_s": 0.0, "status": "diverged", "path_iterates": len(states)}


# ----------------------------------------------------------------------------------- whole paths
def parameter_path(ckpt_dir: str | Path, max_params: int = 16) -> tuple[list[int], np.ndarray]:
    """Every iterate x_0 .. x_K of a small model (at most ``max_params`` parameters), replayed from
    its first checkpoint with the run's own spec (from its manifest): (steps, array (K+1, d)). The
    replay must end on the last checkpoint (drift check).

    For drawing whole trajectories of the analytic examples, whose checkpoints are few."""
    manifest = read_manifest(ckpt_dir)
    spec = RunSpec.from_dict(manifest["spec"])
    problem = attach_recording(build_problem(spec), ckpt_dir)
    if problem.n_params > max_params:
        raise ValueError(f"run {spec.run} has {problem.n_params} parameters; parameter_path is for <= {max_params}")
    stop = manifest["diverged_step"] if manifest.get("diverged_step") is not None else spec.steps
    params = list(problem.model.parameters())
    path = []
    drift = replay(problem, ckpt_dir, 0, stop, visit=lambda step: path.append(flatten(params).cpu().numpy()))
    path.append(flatten(params).cpu().numpy())
    if drift is not None:
        drift.check(f"run {spec.experiment}/{spec.run} (steps 0..{stop})")
    return list(range(stop + 1)), np.stack(path)
