"""Evaluating f and its gradient: full-batch loss, gradient and accuracy; the parameters as one flat
vector; and the modes a model is measured in (evaluation; batch statistics without running-statistics
updates), each saved and restored by :func:`restoring_modes`.

The flat-vector helpers are the library's one convention for "a point of parameter space": the
trainable parameters (:func:`trainable_parameters`) in ``model.parameters()`` order, flattened and
concatenated in float64 (:func:`flatten`), written back by :func:`write_flat`. The Hessian operator,
stationarity, flatness, the LLC and the loss surfaces all use these coordinates.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from landscope.problem.models import batchnorm_modules

F64 = torch.float64


# ----------------------------------------------------------------------------------- flat vectors
def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad``, in ``model.parameters()`` order: the coordinates of
    every flat vector the measurements use."""
    return [p for p in model.parameters() if p.requires_grad]


def flatten(tensors: Iterable[torch.Tensor], device=None) -> torch.Tensor:
    """One float64 vector (a copy, detached) of ``tensors`` concatenated in order, on ``device``
    (default: where they are). Concatenated in their own dtype first, then converted in one go:
    every float converts to float64 exactly, so the values are those of a per-tensor conversion."""
    return torch.cat([t.detach().reshape(-1) for t in tensors]).to(device=device, dtype=F64)


def write_flat(params: Sequence[torch.Tensor], w: torch.Tensor) -> None:
    """Copy the flat vector ``w`` into ``params`` (the layout of :func:`flatten`), each parameter in its
    own dtype and on its own device."""
    with torch.no_grad():
        for p, chunk in zip(params, torch.split(w, [p.numel() for p in params])):
            p.copy_(chunk.reshape(p.shape).to(device=p.device, dtype=p.dtype))


def norm_of(tensors: Iterable[torch.Tensor]) -> float:
    """The Euclidean norm of ``tensors`` taken together, as one vector: per tensor the float64 sum of
    squares, summed in order on the host (the snapshots' and directions' norms are this sum)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


# ----------------------------------------------------------------------------------- modes
@contextlib.contextmanager
def restoring_modes(model: nn.Module):
    """Every module's training flag and every batch-norm's ``track_running_stats`` as they are now,
    restored on exit: the one save-and-restore of modes that :func:`evaluation_mode`,
    :func:`measurement_mode` and :func:`restoring_parameters` build on. Per module, because
    ``model.train(was)`` would flatten a model whose modules were in different modes (e.g. x_K with
    batch-norm kept in batch-statistics mode)."""
    modes = [(m, m.training) for m in model.modules()]
    norms = [(m, m.track_running_stats) for m in batchnorm_modules(model)]
    try:
        yield model
    finally:
        for m, tracked in norms:
            m.track_running_stats = tracked
        for m, was in modes:
            m.training = was


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Evaluation mode (dropout off, batch-norm on its running statistics) for the duration; every
    module gets its own mode back afterwards."""
    with restoring_modes(model):
        model.eval()
        yield model


def use_batch_statistics(model: nn.Module) -> None:
    """For good: dropout off; batch-norm normalises with each batch's own statistics and never writes
    its running statistics (which evaluation mode, e.g. for f(x_K), still uses)."""
    model.eval()
    for m in batchnorm_modules(model):
        m.train()
        m.track_running_stats = False


@contextlib.contextmanager
def measurement_mode(model: nn.Module):
    """Measure f_{i_k} as the paper does: dropout off; batch-norm normalises with the statistics of
    the batch itself (train mode) without updating its running statistics (no buffer is written,
    so nothing needs restoring); every module's mode is restored afterwards."""
    with restoring_modes(model):
        use_batch_statistics(model)
        yield model


@contextlib.contextmanager
def restoring_parameters(model: nn.Module):
    """Evaluation mode inside; the trainable parameters and every module's mode restored afterwards.
    For measurements that move the parameters to trial points (sublevel radius, LLC chains)."""
    params = trainable_parameters(model)
    saved = [p.detach().clone() for p in params]
    with evaluation_mode(model):
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)


# ----------------------------------------------------------------------------------- loss, accuracy
class Accuracy:
    """The accuracy rule, fed one batch of outputs at a time: argmax over the last axis for class (or
    token) labels, a sequence counting its fraction of correct tokens; the sign of a score for +-1
    labels (half-space); NaN for anything else (regression). Counted in float64 on ``y``'s device."""

    def __init__(self, y: torch.Tensor):
        self.signs = bool(((y == 1) | (y == -1)).all()) if y.is_floating_point() else False
        self.classify = False
        self.correct = torch.zeros((), dtype=F64, device=y.device)

    def add(self, out: torch.Tensor, yb: torch.Tensor) -> None:
        if not yb.is_floating_point() and out.dim() == yb.dim() + 1:  # classes (or tokens): last dim
            self.classify = True
            self.correct += (out.argmax(-1) == yb).double().reshape(len(yb), -1).mean(1).sum()
        elif self.signs and out.dim() == 1:  # +-1 labels with a score
            self.correct += ((out > 0).double() * 2 - 1 == yb).sum()

    def value(self, n: int) -> float:
        """The fraction correct over ``n`` samples, or NaN when the rule does not apply."""
        return self.correct.item() / n if (self.classify or self.signs) else math.nan


def loss_and_accuracy(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, chunk: int,
                      accuracy: bool = True) -> tuple[float, float]:
    """(mean loss, accuracy or NaN) over (x, y) at the model's current parameters: evaluation mode, no
    gradients, ``chunk`` samples per forward, float64 sums on the device. ``accuracy=False`` skips
    the accuracy (NaN) for callers that only need the loss."""
    n = len(x)
    total = torch.zeros((), dtype=F64, device=x.device)
    acc = Accuracy(y) if accuracy else None
    with evaluation_mode(model), torch.no_grad():
        for a in range(0, n, chunk):
            yb = y[a:a + chunk]
            out = model(x[a:a + chunk])
            total += loss_fn(model, out, yb).double().sum()
            if acc is not None:
                acc.add(out, yb)
    return total.item() / n, (acc.value(n) if acc is not None else math.nan)


def full_loss(problem, model: nn.Module) -> float:
    """f(x) = (1/n) sum_i f_i(x) over the training set (evaluation mode, float64 accumulation)."""
    data = problem.data
    return loss_and_accuracy(model, problem.loss_fn, data.x, data.y, problem.spec.eval_batch_size, False)[0]


def full_loss_and_grad(problem, model: nn.Module) -> tuple[float, list[torch.Tensor], float]:
    """Return f(x), the list of full-batch gradients (one per trainable parameter, float64), and the
    accuracy (:class:`Accuracy`, NaN where it does not apply)."""
    x, y, n, chunk = problem.data.x, problem.data.y, len(problem.data), problem.spec.eval_batch_size
    params = trainable_parameters(model)
    grads = [torch.zeros_like(p, dtype=F64) for p in params]
    total = torch.zeros((), dtype=F64, device=problem.device)  # summed on the device
    acc = Accuracy(y)
    with evaluation_mode(model):
        for a in range(0, n, chunk):
            yb = y[a:a + chunk]
            out = model(x[a:a + chunk])
            losses = problem.loss_fn(model, out, yb)
            gs = torch.autograd.grad(losses.sum() / n, params)
            torch._foreach_add_(grads, [g.double() for g in gs])
            total += losses.detach().double().sum()
            acc.add(out, yb)
    return total.item() / n, grads, acc.value(n)


def cosine(dot: float, norm_a: float, norm_b: float) -> float:
    """dot / (norm_a norm_b) clamped to [-1, 1] (rounding gave -1.0000000000000002 for an exactly
    opposite pair); NaN when either norm is 0, where the angle is undefined."""
    if not (norm_a > 0 and norm_b > 0):
        return math.nan
    return min(1.0, max(-1.0, dot / (norm_a * norm_b)))


def direction_row(problem, model_k: nn.Module, step: int, f_k: float | None = None,
                  full: tuple[float, list[torch.Tensor]] | None = None) -> dict:
    """Full-batch quantities at the current parameters x_k that need x_K (``f_k`` = f(x_K) when known;
    ``full`` = (f(x_k), its gradient) when already computed at exactly these parameters)."""
    model = problem.model
    f, grads = full if full is not None else full_loss_and_grad(problem, model)[:2]
    if f_k is None:
        f_k = full_loss(problem, model_k)
    params_k = list(model_k.parameters())
    diffs = [(p.detach().double() - q.double()) for p, q in zip(trainable_parameters(model), params_k)]
    dot = sum(float((g * d).sum()) for g, d in zip(grads, diffs))
    gnorm, dist = norm_of(grads), norm_of(diffs)
    cos = cosine(dot, gnorm, dist)
    aiming = dot / f if f > 0 else math.nan
    return {"step": step, "full_loss": f, "full_loss_at_min": f_k, "full_grad_norm": gnorm,
            "full_grad_dot_dir": dot, "dist_to_min": dist, "cos_angle": cos, "aiming_coef": aiming}
