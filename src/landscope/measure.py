"""Full-batch measurements: loss, gradient and direction quantities at checkpoints.

Full-batch quantities are computed in evaluation mode (dropout off) in chunks of
``eval_batch_size`` samples; the gradient is accumulated exactly as (1/n) sum_i grad f_i.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from landscope import store


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


def _norm(tensors) -> float:
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
    gnorm, dist = _norm(grads), _norm(diffs)
    cos = dot / (gnorm * dist) if gnorm > 0 and dist > 0 else math.nan
    aiming = dot / f if f > 0 else math.nan
    return {"step": step, "full_loss": f, "full_loss_at_min": f_k, "full_grad_norm": gnorm,
            "full_grad_dot_dir": dot, "dist_to_min": dist, "cos_angle": cos, "aiming_coef": aiming}


def snapshot_run(spec, ckpt_dir: str | Path, results: str | Path) -> Path:
    """Full-batch loss, gradient norm, parameter norm and accuracy at every checkpoint."""
    from landscope.trajectory import build_problem, checkpoint_path, load_checkpoint

    problem = build_problem(spec)
    rows = {k: [] for k in store.SCHEMAS["snapshots"]}
    manifest = json.loads((Path(ckpt_dir) / "manifest.json").read_text())
    for step in [c["step"] for c in manifest["checkpoints"]]:  # fewer when the run diverged
        state = load_checkpoint(checkpoint_path(ckpt_dir, step), spec.config_hash(), problem.device)
        problem.model.load_state_dict(state["model"])
        f, grads, acc = full_loss_and_grad(problem, problem.model)
        for k, v in (("experiment", spec.experiment), ("run", spec.run), ("step", step),
                     ("full_loss", f), ("full_grad_norm", _norm(grads)),
                     ("param_norm", _norm([p.detach() for p in problem.model.parameters()])),
                     ("accuracy", acc)):
            rows[k].append(v)
    meta = store.provenance(spec.config_hash(), str(problem.device))
    return store.write_table(store.part_path(results, "snapshots", spec.experiment, spec.run),
                             "snapshots", rows, meta)


def select_minimizer(spec, ckpt_dir: str | Path, snapshots_path: str | Path, out_pt: str | Path,
                     results: str | Path) -> dict:
    """Choose x_K among the checkpoints: ``last`` (the paper) or ``best`` (lowest full loss)."""
    import pyarrow.parquet as pq

    from landscope.trajectory import checkpoint_path, load_checkpoint

    snaps = pq.read_table(snapshots_path).to_pydict()
    if spec.minimizer in ("last", "projection"):  # projection: x_K per step; the file holds x_last
        i = snaps["step"].index(max(snaps["step"]))
    elif spec.minimizer == "tail_average":
        i = None
    elif spec.minimizer == "best":
        i = min(range(len(snaps["step"])), key=lambda j: (snaps["full_loss"][j], -snaps["step"][j]))
    else:
        raise ValueError(f"unknown minimizer method {spec.minimizer!r}; use last, best, tail_average or projection")
    if spec.minimizer == "tail_average":
        return _tail_average(spec, ckpt_dir, snaps, out_pt, results)
    step = snaps["step"][i]
    state = load_checkpoint(checkpoint_path(ckpt_dir, step), spec.config_hash())
    out = {"step": step, "method": spec.minimizer, "full_loss": snaps["full_loss"][i]}
    save_minimizer(out_pt, {"model": state["model"], "step": step, "method": spec.minimizer}, out)
    meta = store.provenance(spec.config_hash())
    store.write_table(store.part_path(results, "minimizers", spec.experiment, spec.run), "minimizers", {
        "experiment": [spec.experiment], "run": [spec.run], "method": [spec.minimizer],
        "step": [step], "full_loss": [snaps["full_loss"][i]]}, meta)
    return out


def save_minimizer(out_pt: str | Path, payload: dict, info: dict) -> None:
    """Write x_K atomically, then its sidecar (``info`` plus the file's SHA-256), so that the
    replay can tell a truncated or corrupted x_K from a good one."""
    from landscope.trajectory import _sha256

    out_pt = Path(out_pt)
    out_pt.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_pt.with_suffix(".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(out_pt)
    side = {**info, "sha256": _sha256(out_pt)}
    store.atomic_write_bytes(out_pt.with_suffix(".json"), json.dumps(side).encode())


TAIL_FRACTION = 0.25


def tail_steps(checkpoints: list[int], steps: int) -> list[int]:
    """Checkpoints in the last quarter of training (at least the last two)."""
    tail = [s for s in checkpoints if s >= (1 - TAIL_FRACTION) * steps]
    return tail if len(tail) >= 2 else sorted(checkpoints)[-2:]


def _tail_average(spec, ckpt_dir, snaps, out_pt, results) -> dict:
    """x_K = mean of the parameters of the tail checkpoints (integer buffers: from the last one)."""
    from landscope.trajectory import checkpoint_path, load_checkpoint

    chosen = tail_steps(sorted(snaps["step"]), spec.steps)
    states = [load_checkpoint(checkpoint_path(ckpt_dir, s), spec.config_hash())["model"] for s in chosen]
    avg = {}
    for k, last in states[-1].items():
        if last.is_floating_point():
            avg[k] = (sum(st[k].double() for st in states) / len(states)).to(last.dtype)
        else:
            avg[k] = last.clone()
    out = {"step": chosen[-1], "method": "tail_average", "full_loss": float("nan"), "averaged_steps": chosen}
    save_minimizer(out_pt, {"model": avg, "step": chosen[-1], "method": "tail_average",
                            "averaged_steps": chosen}, out)
    store.write_table(store.part_path(results, "minimizers", spec.experiment, spec.run), "minimizers", {
        "experiment": [spec.experiment], "run": [spec.run], "method": ["tail_average"],
        "step": [chosen[-1]], "full_loss": [None]}, store.provenance(spec.config_hash()))
    return out
