"""Exact replay of a trajectory segment with the same batches, measuring every step against x_K."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscope import store
from landscope.jobs import progress_bar
from landscope.problem.build import Problem, build_problem
from landscope.problem.evaluate import (
    direction_row,
    measurement_mode,
    use_batch_statistics,
)
from landscope.problem.models import batchnorm_modules, has_dropout
from landscope.problem.optim import make_optimizer
from landscope.spec import RunSpec
from landscope.trajectory.rundir import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    load_minimizer,
    load_recording,
    read_divergence,
    restore_state,
)
from landscope.trajectory.train import take_step

log = logging.getLogger("landscope")


class ReplayDriftError(RuntimeError):
    """The replayed trajectory left the checkpointed one by more than the tolerance."""


def attach_recording(problem: Problem, ckpt_dir) -> Problem:
    """A run of ``source: recorded`` replays the batches and learning rates its own loop recorded."""
    if problem.spec.source == "recorded":

        problem.recorded = load_recording(ckpt_dir, problem.spec)
    return problem


STEP_COLUMNS = ("batch_loss", "batch_loss_at_min", "batch_loss_star", "grad_dot_dir", "grad_norm", "dist_to_min")


def _flat(tensors) -> torch.Tensor:
    """One contiguous vector of ``tensors`` (a copy): one kernel per reduction instead of one per
    parameter tensor."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


CPU_FORWARD_SAMPLES = 512  # measured: MLP and CNN forwards on one core are fastest near 512 samples


def _losses_at(problem: Problem, model: nn.Module, steps: range) -> torch.Tensor:
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


def _loss_at(problem: Problem, model: nn.Module, step: int) -> torch.Tensor:
    """f_{i_k}(x) of one step's batch (no grad, float64)."""
    idx = problem.batch(step).to(problem.device)
    with torch.no_grad():
        return problem.loss_fn(model, model(problem.data.x[idx]), problem.data.y[idx]).mean().double()


def replay_segment(spec: RunSpec, ckpt_dir: str | Path, minimizer_path: str | Path, segment: int,
                   results: str | Path, progress: bool = False) -> dict:
    """Replay segment ``segment`` from its checkpoint, measuring every step against x_K.

    Writes the ``steps`` rows of the segment, the ``directions`` rows of its start checkpoint (and
    of the final checkpoint for the last segment) and a ``drift`` row. Raises ReplayDriftError when
    the replayed parameters differ from the next checkpoint by more than the tolerance.

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
    if read_divergence(ckpt_dir, chash) is not None:
        return _empty_segment(spec, segment, results, chash)
    problem = attach_recording(build_problem(spec), ckpt_dir)
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    restore_state(problem, opt, load_checkpoint(checkpoint_path(ckpt_dir, lo), chash))
    xk_state = load_minimizer(minimizer_path, problem.device)["model"]
    model_k = copy.deepcopy(problem.model)
    model_k.load_state_dict(xk_state)
    model_k.eval()
    for p in model_k.parameters():
        p.requires_grad_(False)
    params = list(problem.model.parameters())
    params_k = list(model_k.parameters())
    # With dropout the measurement needs its own forward (dropout off). Without it, the training
    # forward (batch-norm on this batch's statistics) already gives f_{i_k}(x_k) and its gradient.
    separate = has_dropout(problem.model)
    batchnorm = bool(batchnorm_modules(model_k))
    if batchnorm:  # x_K is only measured: batch statistics of each batch, running statistics never written
        use_batch_statistics(model_k)
    projecting = spec.minimizer == "projection"
    if projecting and not hasattr(problem.model, "project"):
        raise ValueError(f"experiment {spec.experiment}: minimizer: projection needs a model that knows "
                         f"its set of minimizers (a 'project' method), which {type(problem.model).__name__} "
                         "has not; use minimizer: last or best")
    # x_K fixed and every sample's loss its own: f_{i_k}(x_K) for all steps after the loop, batched
    deferred = not projecting and not batchnorm
    reference = {"flat": _flat(params_k).double()}

    def sync_reference():
        """With minimizer: projection, the reference point is Proj(x_k, S), step by step."""
        if projecting:
            with torch.no_grad():
                for q, v in zip(params_k, problem.model.project(params)):
                    q.copy_(v)
            reference["flat"] = _flat(params_k).double()

    n_steps = hi - lo
    dev, f64 = problem.device, torch.float64
    # per step: f_{i_k}(x_k), f_{i_k}(x_K), and the Gram matrix of (g, d) = (grad f_{i_k}(x_k), x_k - x_K)
    losses = torch.full((n_steps, 2), math.nan, dtype=f64, device=dev)
    grams = torch.empty(n_steps, 4, dtype=f64, device=dev)
    pair = torch.empty(2, sum(p.numel() for p in params), dtype=f64, device=dev)
    state = {"i": 0}

    def hook(idx, xb, yb, loss):
        i = state["i"]
        sync_reference()
        if separate:  # dropout off, batch-norm on this batch's statistics, running stats untouched
            with measurement_mode(problem.model):
                out = problem.model(xb)
                mloss = problem.loss_fn(problem.model, out, yb).mean()
                grads = torch.autograd.grad(mloss, params)
        else:
            mloss, grads = loss, [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        with torch.no_grad():
            # g and d side by side in float64 (exact products of float32 numbers), then one BLAS
            # product gives <g, d>, |g|^2, |d|^2: six kernels per step, no allocation
            torch.cat([t.reshape(-1) for t in grads], out=pair[0])
            torch.cat([t.detach().reshape(-1) for t in params], out=pair[1])
            pair[1].sub_(reference["flat"])
            torch.mm(pair, pair.T, out=grams[i].view(2, 2))
            losses[i, 0] = mloss.detach()
            if not deferred:
                losses[i, 1] = problem.loss_fn(model_k, model_k(xb), yb).mean()
        state["i"] = i + 1

    meta = store.provenance(chash, str(problem.device))
    full_batch_s = [0.0]  # seconds spent on full-batch direction rows (reported, for the benchmarks)

    def direction(step: int, f_k: float | None = None) -> dict:
        t = time.perf_counter()
        sync_reference()
        out = direction_row(problem, model_k, step, f_k)
        full_batch_s[0] += time.perf_counter() - t
        return out

    directions = [direction(lo)]
    f_at_min = None if projecting else directions[0]["full_loss_at_min"]  # x_K fixed: f(x_K) once
    bar = progress_bar(progress, n_steps, 0, f"replay {spec.run} [{lo},{hi})")
    every = spec.directions_every
    for step in range(lo, hi):
        if every and step > lo and (step - lo) % every == 0:  # full-batch rows between checkpoints
            directions.append(direction(step, f_at_min))
        take_step(problem, opt, step, hook)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    drift = parameter_drift(problem.model, load_checkpoint(checkpoint_path(ckpt_dir, hi), chash,
                                                           map_location=problem.device)["model"])
    tol = drift_tolerance(spec, problem.device)
    if deferred:
        losses[:, 1] = _deferred_losses_at_min(problem, model_k, range(lo, hi))
    wall = time.perf_counter() - t0
    store.write_table(store.part_path(results, "drift", spec.experiment, spec.run, segment), "drift", {
        "experiment": [spec.experiment], "run": [spec.run], "segment": [segment], "step": [hi],
        "max_abs_drift": [drift], "tolerance": [tol], "replay_wall_s": [wall]}, meta)
    if not drift <= tol:
        raise ReplayDriftError(
            f"run {spec.experiment}/{spec.run} segment {segment} (steps {lo}..{hi}): replayed "
            f"parameters differ from checkpoint step={hi} by max |diff| = {drift:.3e} > tolerance "
            f"{tol:.1e}. Training is not reproducible here (nondeterministic kernels?); raise "
            "drift_tolerance only if you accept approximate measurements")
    if hi == spec.steps:
        directions.append(direction(hi, f_at_min))
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
    return {"segment": segment, "drift": drift, "wall_s": wall, "full_batch_s": full_batch_s[0]}


BATCHED_RTOL, BATCHED_ATOL = 1e-4, 1e-6


def _deferred_losses_at_min(problem: Problem, model_k: nn.Module, steps: range) -> torch.Tensor:
    """f_{i_k}(x_K) of every step, batched across steps, after checking on the first and last step
    that batching does not change a sample's loss (a model whose layers mix the samples of a batch
    in ways landscope cannot see, e.g. a hand-written normalisation, falls back to per-step forwards)."""
    batched = _losses_at(problem, model_k, steps)
    ends = sorted({steps[0], steps[-1]})
    single = torch.stack([_loss_at(problem, model_k, s) for s in ends])
    if torch.allclose(batched[[s - steps[0] for s in ends]], single, rtol=BATCHED_RTOL, atol=BATCHED_ATOL):
        return batched
    log.info("run %s/%s: losses at x_K change when batches are stacked (batch-dependent layers): "
             "measuring them one step at a time", problem.spec.experiment, problem.spec.run)
    return torch.stack([_loss_at(problem, model_k, s) for s in steps])


def _empty_segment(spec: RunSpec, segment: int, results, chash: str) -> dict:
    """A diverged run has no trajectory to measure: its parts exist (the DAG is static) but are empty."""
    meta = {**store.provenance(chash), "status": "diverged"}
    for table in ("steps", "directions", "drift"):
        cols = {c: [] for c in store.SCHEMAS[table]}
        store.write_table(store.part_path(results, table, spec.experiment, spec.run, segment), table, cols, meta)
    log.info("run %s/%s diverged during training: segment %d left empty", spec.experiment, spec.run, segment)
    return {"segment": segment, "drift": 0.0, "wall_s": 0.0, "status": "diverged"}


def parameter_drift(model: nn.Module, reference: dict) -> float:
    worst = 0.0
    for name, p in model.state_dict().items():
        ref = reference[name]
        if p.is_floating_point():
            worst = max(worst, (p.double() - ref.double()).abs().max().item() if p.numel() else 0.0)
        elif not torch.equal(p, ref):
            worst = math.inf
    return worst


def drift_tolerance(spec: RunSpec, device: torch.device) -> float:
    if spec.drift_tolerance == "auto":
        return 0.0 if device.type == "cpu" else 1e-4
    return float(spec.drift_tolerance)


def parameter_path(ckpt_dir: str | Path, max_params: int = 16) -> tuple[list[int], np.ndarray]:
    """Every iterate x_0 .. x_K of a small model (at most ``max_params`` parameters), replayed from
    its first checkpoint with the run's own spec (from ``manifest.json``): (steps, array (K+1, d)).

    For drawing whole trajectories of the analytic examples, whose checkpoints are few."""
    ckpt_dir = Path(ckpt_dir)
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    if "spec" not in manifest:
        raise CheckpointError(f"{ckpt_dir}/manifest.json has no run spec (written by an older landscope); re-run training")
    spec = RunSpec.from_dict(manifest["spec"])
    problem = attach_recording(build_problem(spec), ckpt_dir)
    if problem.n_params > max_params:
        raise ValueError(f"run {spec.run} has {problem.n_params} parameters; parameter_path is for <= {max_params}")
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    restore_state(problem, opt, load_checkpoint(checkpoint_path(ckpt_dir, 0), spec.config_hash()))
    stop = manifest["diverged_step"] if manifest.get("diverged_step") is not None else spec.steps

    def flat() -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in problem.model.parameters()]).double().cpu().numpy()

    path = [flat()]
    for step in range(stop):
        take_step(problem, opt, step)
        path.append(flat())
    return list(range(stop + 1)), np.stack(path)
