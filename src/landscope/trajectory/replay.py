"""Replaying a trajectory: one loop (:func:`replay`) that restores a checkpoint and re-runs the
training step with the same batches, used by the evaluate job (every step measured against x_K,
:func:`replay_segment`, which also keeps the iterates the loss surfaces need) and by
:func:`parameter_path`; and the one drift check against the next checkpoint."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

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
    load_full_grad,
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
    chash = spec.training_key()
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


def flat_views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of the vector ``flat`` shaped like the tensors ``like``, in the layout of evaluate.flatten:
    copying a tensor into its view writes its slice of ``flat``."""
    return [v.view(t.shape) for v, t in zip(flat.split([t.numel() for t in like]), like)]


class StepGram:
    """Per step, the Gram matrix of (g, d) = (grad f_{i_k}(x_k), x_k - x_K) in float64: row i of
    ``grams`` holds (|g|^2, <g, d>, <d, g>, |d|^2) of the i-th step measured.

    g and d are written side by side into one preallocated 2 x n float64 buffer, each by one
    multi-tensor copy into views of the buffer (float32 converts to float64 exactly: the products are
    exact, only the float64 sums round; concatenating into the buffer was up to twice as slow); x_K is
    subtracted in one kernel; one BLAS product of the buffer with its transpose gives the three
    numbers. Four calls per step, no allocation, nothing sent to the host.
    """

    def __init__(self, params: list[torch.Tensor], reference, n_steps: int, device: torch.device):
        self.params = [p.detach() for p in params]  # the live values: the optimizer updates them in place
        self.reference = reference
        self.pair = torch.empty(2, sum(p.numel() for p in params), dtype=torch.float64, device=device)
        self.direction = self.pair[1]
        self.g, self.d = flat_views(self.pair[0], params), flat_views(self.direction, params)
        self.grams = torch.empty(n_steps, 4, dtype=torch.float64, device=device)
        self.squares = self.grams.view(n_steps, 2, 2)

    def add(self, i: int, grads: list[torch.Tensor]) -> None:
        """Row ``i``: ``grads`` is g, the parameters are x_k, the reference holds x_K."""
        torch._foreach_copy_(self.g, grads)
        torch._foreach_copy_(self.d, self.params)
        self.direction.sub_(self.reference.flat)
        torch.mm(self.pair, self.pair.T, out=self.squares[i])


STEP_COLUMNS = ("batch_loss", "batch_loss_at_min", "batch_loss_star", "grad_dot_dir", "grad_norm", "dist_to_min")
CPU_FORWARD_SAMPLES = 512  # measured: MLP and CNN forwards on one core are fastest near 512 samples


def losses_at(problem: Problem, model: nn.Module, steps: range) -> torch.Tensor:
    """f_{i_k}(x) for every step k in ``steps`` (float64), bit for bit what the reference computation
    gives, with far fewer forwards. Valid for a model whose layers treat every sample on its own but
    for batch-norm layers in batch-statistics mode (_deferred_losses_at_min checks it).

    The reference (:func:`stacked_losses`) stacks the batches of ``per`` steps into one no-grad forward
    of up to ``eval_batch_size`` samples (on a CPU at most ~512: larger activations leave the cache and
    are slower), or, with batch-norm, takes one forward per step. The shortcuts: without batch-norm,
    every distinct sample of the whole groups goes through a forward once, however many steps use it
    (:func:`distinct_sample_losses`: a segment longer than an epoch costs one pass over the training
    set); with batch-norm, ``per`` steps are stacked all the same, each batch-norm layer normalising
    every step's batch on its own (:func:`per_batch_norm`); and in both, max pooling is taken as
    elementwise maxima (:class:`MaximaPooling`). Each shortcut is compared bit for bit with the
    reference on its first group and replaced by it on any difference (a matrix-vector product, e.g. a
    one-output linear layer, may round a sample by its position in the forward)."""
    spec = problem.spec
    samples = spec.eval_batch_size if problem.device.type != "cpu" else min(spec.eval_batch_size, CPU_FORWARD_SAMPLES)
    per = max(1, samples // spec.batch_size)  # steps a stacked forward
    batches = torch.stack([problem.batch(s) for s in steps]).to(problem.device)  # (steps, batch_size)
    with torch.inference_mode():
        if batch_statistics_norms(model):  # the reference: one forward per step
            fast = with_maxima_pooling(functools.partial(stacked_losses, per=per))
            reference = functools.partial(stacked_losses, per=1)
            return _checked(problem, model, batches, per, fast, reference)
        full = len(steps) - len(steps) % per  # the whole groups; a last, shorter one is stacked as it is
        fast = with_maxima_pooling(functools.partial(distinct_sample_losses, rows=per * spec.batch_size))
        reference = functools.partial(stacked_losses, per=per)
        parts = [_checked(problem, model, batches[:full], per, fast, reference)] if full else []
        if full < len(steps):
            parts.append(reference(problem, model, batches[full:]))
        return torch.cat(parts)


def _checked(problem: Problem, model: nn.Module, batches: torch.Tensor, per: int, fast: Callable,
             reference: Callable) -> torch.Tensor:
    """``fast``'s losses of ``batches``, unless its first ``per`` differ from ``reference``'s in any bit:
    then ``reference``'s (both called as f(problem, model, batches))."""
    got = fast(problem, model, batches)
    if torch.equal(got[:per], reference(problem, model, batches[:per])):
        return got
    log.info("run %s/%s: stacked forwards round the losses at x_K differently: measuring them as before",
             problem.spec.experiment, problem.spec.run)
    return reference(problem, model, batches)


def batch_statistics_norms(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` that normalise with the statistics of their batch (in
    training mode): the layers that make a sample's loss depend on the rest of its batch."""
    return [m for m in batchnorm_modules(model) if m.training]


def stacked_losses(problem: Problem, model: nn.Module, batches: torch.Tensor, per: int) -> torch.Tensor:
    """The loss of each row of ``batches`` (steps x batch_size sample indices; float64) by forwards of
    ``per`` steps' batches stacked, every batch-norm layer in batch-statistics mode normalising each
    step's batch with that batch's statistics (with ``per`` = 1: one forward per step)."""
    x, y = problem.data.x, problem.data.y
    out = []
    with per_batch_norm(model, batches.shape[1]):
        for group in batches.split(per):
            rows = group.reshape(-1)
            out.append(problem.loss_fn(model, model(x[rows]), y[rows]).reshape(len(group), -1).mean(1))
    return torch.cat(out).double()


def distinct_sample_losses(problem: Problem, model: nn.Module, batches: torch.Tensor, rows: int) -> torch.Tensor:
    """The mean loss of each row of ``batches`` (steps x batch_size sample indices; float64) from the
    losses of its samples, every distinct sample through a forward once, in forwards of exactly
    ``rows`` samples (the last one padded with repeats): for a model whose every sample's loss is its
    own, those of :func:`stacked_losses` with forwards of ``rows`` samples."""
    distinct, where = torch.unique(batches, return_inverse=True)
    padded = torch.cat([distinct, distinct[:1].expand(-len(distinct) % rows)])
    x, y = problem.data.x, problem.data.y
    per_sample = torch.cat([problem.loss_fn(model, model(x[c]), y[c]).reshape(len(c), -1) for c in padded.split(rows)])
    return per_sample[where].reshape(len(batches), -1).mean(1).double()


@contextlib.contextmanager
def per_batch_norm(model: nn.Module, batch_size: int):
    """Inside, every batch-norm layer of ``model`` in batch-statistics mode normalises each run of
    ``batch_size`` samples of its input with their own statistics (the layer's own kernel on each
    slice): a forward of several steps' batches stacked gives each sample what a forward of its
    step's batch alone gives."""
    norms = batch_statistics_norms(model)
    for m in norms:
        m.forward = functools.partial(_normalise_each, m.forward, batch_size)
    try:
        yield model
    finally:
        for m in norms:
            del m.forward  # the class's forward again


def _normalise_each(forward: Callable, batch_size: int, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([forward(part) for part in x.split(batch_size)])


class MaximaPooling(TorchFunctionMode):
    """Inside, ``F.max_pool2d`` without padding, dilation, ceil mode or indices (what ``nn.MaxPool2d``
    and the models' global pooling call) is taken as elementwise maxima of strided views, one
    spatial dimension after the other: the same values (a maximum rounds nothing; NaN propagates as
    in the kernel) for a fraction of the time. Measured on one core (torch 2.13 CPU, inference): a
    (64, 16, 8, 8) input 2x2-pooled in 23 us against the kernel's 206 us, (512, 16, 8, 8) in 155 us
    against 2,345 us. Any other call runs as written."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d:
            out = maxima_pool2d(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def maxima_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  return_indices=False) -> torch.Tensor | None:
    """``F.max_pool2d(x, ...)`` by elementwise maxima over the last two dimensions, or None for the
    cases it does not cover (padding, dilation, ceil mode, indices)."""
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    if return_indices or ceil_mode or pair(padding) != (0, 0) or pair(dilation) != (1, 1) or x.dim() < 3:
        return None
    kernel = pair(kernel_size)
    strides = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else pair(stride)
    out = x
    for dim, k, s in zip((x.dim() - 2, x.dim() - 1), kernel, strides):
        n = (out.shape[dim] - k) // s + 1
        if n < 1:
            return None  # the kernel's own error message
        window = [slice(None)] * x.dim()
        pooled = None
        for a in range(k):  # the a-th element of every window along ``dim``
            window[dim] = slice(a, a + s * (n - 1) + 1, s)
            part = out[tuple(window)]
            pooled = part if pooled is None else torch.maximum(pooled, part)
        out = pooled
    if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():  # 1x1 windows: views of x only
        out = out.clone()
    if not (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last)):  # a strided view
        out = out.contiguous()  # dense, as the kernel's output (a model may .view() it)
    return out


def with_maxima_pooling(losses: Callable) -> Callable:
    """``losses`` (called as f(problem, model, batches)) with max pooling as :class:`MaximaPooling` takes it."""
    @functools.wraps(losses)
    def pooled(*args, **kwargs):
        with MaximaPooling():
            return losses(*args, **kwargs)
    return pooled


def loss_at(problem: Problem, model: nn.Module, step: int) -> torch.Tensor:
    """f_{i_k}(x) of one step's batch (no grad, float64)."""
    idx = problem.batch(step).to(problem.device)
    with torch.inference_mode():
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

    Cost: the training step itself, the three inner products of (g, x_k - x_K) (:class:`StepGram`),
    and f_{i_k}(x_K). When x_K is fixed, f_{i_k}(x_K) of all steps is computed after the loop by
    stacked no-grad forwards (:func:`losses_at`: every distinct sample once, or with batch-norm every
    step's batch normalised on its own), checked against a per-step forward at the first and last
    step; a projected x_K takes one forward per step. Nothing is copied to the host before the
    segment ends.
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
    kept_dir = Path(minimizer_path).parent  # the run folder: x_K and the path iterates
    key = spec.training_key()
    if read_divergence(ckpt_dir, key) is not None:
        return _diverged_segment(spec, ckpt_dir, kept_dir, segment, results, keep, where)
    problem = attach_recording(build_problem(spec), ckpt_dir)
    model_k = copy.deepcopy(problem.model)
    model_k.load_state_dict(load_minimizer(minimizer_path, problem.device)["model"])
    model_k.eval()
    for p in model_k.parameters():
        p.requires_grad_(False)
    params = list(problem.model.parameters())
    params_k = list(model_k.parameters())
    if batchnorm_modules(model_k):  # x_K is only measured: each batch's statistics, running ones never written
        use_batch_statistics(model_k)
    reference = minimizer_reference(spec, problem.model, params_k)
    deferred = not reference.moves  # x_K fixed: f_{i_k}(x_K) of all steps after the loop, batched

    n_steps = hi - lo
    dev, f64 = problem.device, torch.float64
    # per step, on the device until the segment ends: f_{i_k}(x_k), f_{i_k}(x_K) (unless deferred), and
    # the Gram matrix of (g, d) = (grad f_{i_k}(x_k), x_k - x_K)
    losses = torch.full((n_steps, 2), math.nan, dtype=f64, device=dev)
    gram = StepGram(params, reference, n_steps, dev)
    rows = itertools.count()
    bar = progress_bar(progress, n_steps, 0, f"replay {spec.run} [{lo},{hi})")

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
        with torch.inference_mode():
            losses[i, 1] = problem.loss_fn(model_k, model_k(xb), yb).mean()

    def loss_at_min_later(i, xb, yb):
        """Nothing now: :func:`_deferred_losses_at_min` measures every step after the loop."""

    loss_and_grads = own_forward if has_dropout(problem.model) else training_forward
    loss_at_min = loss_at_min_later if deferred else loss_at_min_now

    def hook(idx, xb, yb, loss):
        i = next(rows)
        reference.sync(params)
        mloss, grads = loss_and_grads(xb, yb, loss)
        gram.add(i, grads)
        losses[i, 0] = mloss.detach()
        loss_at_min(i, xb, yb)
        if bar is not None:
            bar.update(1)

    meta = store.provenance(chash, str(problem.device))
    full_batch_s = [0.0]  # seconds spent on full-batch direction rows (reported, for the benchmarks)
    directions, states = [], {}

    def direction(step: int, at_checkpoint: bool = False) -> dict:
        """The full-batch row at x_step (f(x_K) measured once, at the first row, when x_K is fixed); at a
        checkpoint (the model exactly its state) f and its gradient come from the snapshot job when saved."""
        t = time.perf_counter()
        reference.sync(params)
        f_k = None if reference.moves or not directions else directions[0]["full_loss_at_min"]
        full = load_full_grad(ckpt_dir, step, key, dev) if at_checkpoint else None
        out = direction_row(problem, model_k, step, f_k, full)
        full_batch_s[0] += time.perf_counter() - t
        return out

    every = spec.directions_every

    def visit(step: int) -> None:
        if step == lo or (every and (step - lo) % every == 0):  # full-batch rows between checkpoints too
            directions.append(direction(step, at_checkpoint=step == lo))
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
    save_path_iterates(kept_dir, segment, spec, states, drift.value)
    if hi == spec.steps:  # x_hi is checkpoint hi's state exactly when the drift is 0
        directions.append(direction(hi, at_checkpoint=drift is not None and drift.value == 0))
    star = (problem.batch_star(None).expand(n_steps) if problem.fstar is None else
            torch.stack([problem.batch_star(problem.batch(s).to(dev)) for s in range(lo, hi)]))
    grams = gram.grams
    table = torch.stack([losses[:, 0], losses[:, 1], star.to(f64), grams[:, 1],
                         grams[:, 0].sqrt(), grams[:, 3].sqrt()], 1)
    cols = dict(zip(STEP_COLUMNS, table.cpu().T.tolist()))  # the segment's one copy to the host
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
    """f_{i_k}(x_K) of every step, batched across steps (:func:`losses_at`), after checking on the first
    and last step that batching does not change a step's loss (a model whose layers mix the samples of
    a batch in ways landscope cannot see, e.g. a hand-written normalisation, falls back to per-step
    forwards)."""
    batched = losses_at(problem, model_k, steps)
    ends = sorted({steps[0], steps[-1]})
    single = torch.stack([loss_at(problem, model_k, s) for s in ends])
    if torch.allclose(batched[[s - steps[0] for s in ends]], single, rtol=BATCHED_RTOL, atol=BATCHED_ATOL):
        return batched
    log.info("run %s/%s: losses at x_K change when batches are stacked (batch-dependent layers): "
             "measuring them one step at a time", problem.spec.experiment, problem.spec.run)
    return torch.stack([loss_at(problem, model_k, s) for s in steps])


def _diverged_segment(spec: RunSpec, ckpt_dir: Path, kept_dir: Path, segment: int, results, keep: set[int],
                      where: str) -> dict:
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
    save_path_iterates(kept_dir, segment, spec, states, drift)
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
