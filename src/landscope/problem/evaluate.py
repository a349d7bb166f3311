"""Evaluating f and its gradient: full-batch loss, gradient and accuracy, and the modes a model is
measured in (evaluation; batch statistics without running-statistics updates)."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from landscope.problem.models import batchnorm_modules


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Evaluation mode (dropout off, batch-norm on its running statistics) for the duration; every
    module gets its own mode back afterwards (``model.train(was)`` would flatten a model whose
    modules were in different modes, e.g. x_K with batch-norm kept in batch-statistics mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def full_loss(problem, model: nn.Module) -> float:
    """f(x) = (1/n) sum_i f_i(x) over the training set (evaluation mode, float64 accumulation)."""
    x, y, n, chunk = problem.data.x, problem.data.y, len(problem.data), problem.spec.eval_batch_size
    total = torch.zeros((), dtype=torch.float64, device=problem.device)
    with evaluation_mode(model), torch.no_grad():
        for a in range(0, n, chunk):
            total += problem.loss_fn(model, model(x[a:a + chunk]), y[a:a + chunk]).double().sum()
    return total.item() / n


def full_loss_and_grad(problem, model: nn.Module) -> tuple[float, list[torch.Tensor], float]:
    """Return f(x), the list of full-batch gradients (one per parameter), and accuracy (or NaN)."""
    x, y, n, chunk = problem.data.x, problem.data.y, len(problem.data), problem.spec.eval_batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    f64 = {"dtype": torch.float64, "device": problem.device}
    total, correct = torch.zeros((), **f64), torch.zeros((), **f64)  # summed on the device
    classify = False
    signs = bool(((y == 1) | (y == -1)).all()) if y.is_floating_point() else False
    with evaluation_mode(model):
        for a in range(0, n, chunk):
            out = model(x[a:a + chunk])
            losses = problem.loss_fn(model, out, y[a:a + chunk])
            gs = torch.autograd.grad(losses.sum() / n, params)
            torch._foreach_add_(grads, [g.double() for g in gs])
            total += losses.detach().double().sum()
            yb = y[a:a + chunk]
            if not yb.is_floating_point() and out.dim() == yb.dim() + 1:  # classes (or tokens): last dim
                classify = True
                correct += (out.argmax(-1) == yb).double().reshape(len(yb), -1).mean(1).sum()
            elif signs and out.dim() == 1:  # +-1 labels with a score (half-space)
                correct += ((out > 0).float() * 2 - 1 == y[a:a + chunk]).sum()
    acc = correct.item() / n if (classify or signs) else math.nan
    return total.item() / n, grads, acc


def norm_of(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def direction_row(problem, model_k: nn.Module, step: int, f_k: float | None = None) -> dict:
    """Full-batch quantities at the current parameters x_k that need x_K (``f_k`` = f(x_K) when known)."""
    model = problem.model
    f, grads, _ = full_loss_and_grad(problem, model)
    if f_k is None:
        f_k = full_loss(problem, model_k)
    params = [p for p in model.parameters() if p.requires_grad]
    params_k = [p for p in model_k.parameters()]
    diffs = [(p.detach().double() - q.double()) for p, q in zip(params, params_k)]
    dot = sum(float((g * d).sum()) for g, d in zip(grads, diffs))
    gnorm, dist = norm_of(grads), norm_of(diffs)
    cos = dot / (gnorm * dist) if gnorm > 0 and dist > 0 else math.nan
    aiming = dot / f if f > 0 else math.nan
    return {"step": step, "full_loss": f, "full_loss_at_min": f_k, "full_grad_norm": gnorm,
            "full_grad_dot_dir": dot, "dist_to_min": dist, "cos_angle": cos, "aiming_coef": aiming}


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
    modes = [(m, m.training) for m in model.modules()]
    norms = [(m, m.track_running_stats) for m in batchnorm_modules(model)]
    use_batch_statistics(model)
    try:
        yield model
    finally:
        for m, tracked in norms:
            m.track_running_stats = tracked
        for m, was in modes:
            m.training = was
