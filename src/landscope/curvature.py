"""Curvature of the loss landscape from Hessian-vector products (no Hessian is ever formed).

One primitive, :func:`hessian_operator`, turns a model, its loss and a fixed evaluation subset into
``v -> H v`` (double backward through the mean loss, evaluation mode: dropout off, BatchNorm on its
running statistics). Every estimator takes any such callable on float64 vectors, so the same code is
tested on matrices of known spectrum and used on networks:

- :func:`lanczos` with full reorthogonalisation: Ritz values (top-k, bottom) and Gauss weights;
- :func:`slq`: stochastic Lanczos quadrature, the spectral density as Ritz nodes and weights per
  probe, and the fraction of negative eigenvalues with its standard error over probes;
- :func:`hutchinson`: trace with Rademacher probes and its standard error;
- :func:`power_iteration`: lambda_max the slow way, as the benchmark's baseline.

Vectors, dot products and the Lanczos basis are float64 whatever the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

HVP = Callable[[torch.Tensor], torch.Tensor]
F64 = torch.float64


# ----------------------------------------------------------------------------------- the primitive
class HessianOperator:
    """``H v`` of the mean loss over one fixed batch; counts its products in ``n_hvp``.

    The gradient graph is built once (``create_graph=True``) and each product is one more backward
    pass through it (``retain_graph=True``), so a product costs about two backward passes.
    """

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor | None]):
        self.params = params
        self.grads = grads
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.n = sum(self.sizes)
        self.n_hvp = 0
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length n (any float dtype); returns float64."""
        if v.shape != (self.n,):
            raise ValueError(f"hessian operator: vector of shape {tuple(v.shape)}, expected ({self.n},)")
        self.n_hvp += 1
        out = torch.zeros(self.n, dtype=F64, device=v.device)
        if not self._live:  # the loss is linear in every parameter: H = 0
            return out
        pieces = list(torch.split(v, self.sizes))
        live_p = [self.params[i] for i in self._live]
        outs = [pieces[i].to(self.params[i].dtype).reshape(self.shapes[i]) for i in self._live]
        hv = torch.autograd.grad([self.grads[i] for i in self._live], live_p, grad_outputs=outs,
                                 retain_graph=True, allow_unused=True)
        offsets = [0]
        for s in self.sizes:
            offsets.append(offsets[-1] + s)
        for i, h in zip(self._live, hv):
            if h is not None:
                out[offsets[i]:offsets[i + 1]] = h.reshape(-1).to(F64)
        return out


def hessian_operator(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> HessianOperator:
    """``v -> H v`` for f(θ) = mean_i loss_fn(model, model(x), y)_i in evaluation mode.

    ``loss_fn(model, outputs, targets)`` returns per-sample losses (landscope.models.loss_for).
    The model's train/eval flags are restored before returning; the graph already holds eval mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("hessian operator: the model has no parameter with requires_grad=True")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        # the fused attention kernels have no double backward; the math kernel computes the same
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            loss = loss_fn(model, model(x), y).mean()
            if not torch.isfinite(loss):
                raise ValueError(f"hessian operator: the loss is {loss.item()} at this point; "
                                 "curvature is only defined where the loss is finite")
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    finally:
        for m, was in modes:
            m.training = was
    return HessianOperator(params, list(grads))


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The trainable parameters as one float64 vector (the operator's coordinate order)."""
    return torch.cat([p.detach().reshape(-1).to(F64) for p in model.parameters() if p.requires_grad])


# ----------------------------------------------------------------------------------- Lanczos
@dataclass
class Lanczos:
    """Ritz values (ascending) and Gauss quadrature weights (squared first components)."""
    ritz: torch.Tensor
    weights: torch.Tensor
    n_hvp: int
    alpha: torch.Tensor  # diagonal of the tridiagonal matrix T
    beta: torch.Tensor  # its off-diagonal

    def ritz_after(self, j: int) -> torch.Tensor:
        """Ritz values after the first j steps (eigenvalues of T's leading j x j block)."""
        t = torch.diag(self.alpha[:j]) + torch.diag(self.beta[:j - 1], 1) + torch.diag(self.beta[:j - 1], -1)
        return torch.linalg.eigvalsh(t)

    def top(self, k: int) -> list[float]:
        """The k largest Ritz values, largest first (lower bounds of lambda_1..lambda_k)."""
        return self.ritz.flip(0)[:k].tolist()

    @property
    def bottom(self) -> float:
        """The smallest Ritz value (an upper bound of lambda_min)."""
        return float(self.ritz[0])


def _check_iters(iters: int, n: int) -> int:
    if iters < 1:
        raise ValueError(f"lanczos: iters must be >= 1, got {iters}")
    return min(iters, n)


def lanczos(hvp: HVP, v0: torch.Tensor, iters: int) -> Lanczos:
    """Lanczos tridiagonalisation from ``v0`` with full reorthogonalisation (twice per step).

    Stops early when the Krylov space becomes invariant (then the Ritz values are exact).
    """
    n = v0.numel()
    m = _check_iters(iters, n)
    basis = torch.zeros(m, n, dtype=F64, device=v0.device)
    q = v0.to(F64) / torch.linalg.vector_norm(v0.to(F64))
    alphas, betas = [], []
    for j in range(m):
        basis[j] = q
        w = hvp(q).to(F64)
        alphas.append(float(w @ q))
        for _ in range(2):  # "twice is enough" (Kahan-Parlett)
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(torch.linalg.vector_norm(w))
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0), 1e-300)
        if j == m - 1 or b <= 1e-10 * scale:
            break
        betas.append(b)
        q = w / b
    a, b = torch.tensor(alphas, dtype=F64), torch.tensor(betas, dtype=F64)
    ritz, vecs = torch.linalg.eigh(torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1))
    return Lanczos(ritz, vecs[0] ** 2, len(alphas), a, b)


def _generator(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def rademacher(n: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """A vector of independent ±1 entries (float64)."""
    return torch.randint(0, 2, (n,), generator=gen, device=device).to(F64) * 2 - 1


def top_eigenvalues(hvp: HVP, n: int, k: int = 3, iters: int = 20, seed: int = 0,
                    device="cpu") -> tuple[list[float], float, int]:
    """(k largest eigenvalues, lambda_min, Hessian-vector products) from one Lanczos run."""
    if k < 1:
        raise ValueError(f"top_eigenvalues: k must be >= 1, got {k}")
    v0 = torch.randn(n, dtype=F64, generator=_generator(seed, device), device=device)
    run = lanczos(hvp, v0, iters)
    return run.top(k), run.bottom, run.n_hvp


# ----------------------------------------------------------------------------------- SLQ
@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature: per probe, Ritz nodes and weights (each probe's sum to 1)."""
    probes: list[Lanczos] = field(default_factory=list)

    @property
    def n_hvp(self) -> int:
        return sum(p.n_hvp for p in self.probes)

    def negative_fraction(self, rel_tol: float = 1e-6) -> tuple[float, float]:
        """Mean and standard error over probes of the weight on negative nodes.

        Each probe's value is a quadrature of v^T 1{H<0} v / n, unbiased for the fraction of negative
        eigenvalues when the quadrature is exact; the SE covers the probe variance only, not the
        quadrature error of the step function near zero (it shrinks as iters grows). A node counts
        as negative below -rel_tol * max|node|: networks have exact null directions (e.g. a shift of
        all logits) whose Ritz node is rounding noise of either sign (float32 products: ~1e-7).
        """
        vals = torch.tensor([float(p.weights[p.ritz < -rel_tol * p.ritz.abs().max()].sum())
                             for p in self.probes], dtype=F64)
        return _mean_se(vals)

    def top(self, k: int) -> list[float]:
        """Per rank, the largest i-th Ritz value over probes: still a lower bound of lambda_i."""
        tops = [p.top(k) for p in self.probes]
        width = min(len(t) for t in tops)
        return [max(t[i] for t in tops) for i in range(width)]

    @property
    def bottom(self) -> float:
        """The smallest Ritz value over probes: still an upper bound of lambda_min."""
        return min(p.bottom for p in self.probes)


def _mean_se(vals: torch.Tensor) -> tuple[float, float]:
    mean = float(vals.mean())
    se = float(vals.std(correction=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return mean, se


def slq(hvp: HVP, n: int, probes: int = 4, iters: int = 20, seed: int = 0, device="cpu") -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature with Rademacher starting vectors."""
    if probes < 1:
        raise ValueError(f"slq: probes must be >= 1, got {probes}")
    gen = _generator(seed, device)
    return SpectralDensity([lanczos(hvp, rademacher(n, gen, device), iters) for _ in range(probes)])


# ----------------------------------------------------------------------------------- trace
def hutchinson(hvp: HVP, n: int, probes: int = 16, seed: int = 0, device="cpu") -> tuple[float, float, int]:
    """(trace estimate, its standard error, products): mean of z^T H z over Rademacher z.

    Var(z^T H z) = 2 sum_{i != j} H_ij^2: exact (SE 0) for a diagonal H.
    """
    if probes < 2:
        raise ValueError(f"hutchinson: probes must be >= 2 for a standard error, got {probes}")
    gen = _generator(seed, device)
    vals = []
    for _ in range(probes):
        z = rademacher(n, gen, device)
        vals.append(float(z @ hvp(z).to(F64)))
    mean, se = _mean_se(torch.tensor(vals, dtype=F64))
    return mean, se, probes


# ----------------------------------------------------------------------------------- baseline
def power_iteration(hvp: HVP, n: int, tol: float = 1e-3, max_iters: int = 1000, seed: int = 0,
                    device="cpu", history: list | None = None) -> tuple[float, int]:
    """(Rayleigh quotient, products) once it changes by less than ``tol`` relative between steps.

    Finds the eigenvalue of largest magnitude: lambda_max only when lambda_max > |lambda_min|.
    ``history``, when given, receives the Rayleigh quotient of every product (for benchmarks).
    """
    v = torch.randn(n, dtype=F64, generator=_generator(seed, device), device=device)
    v /= torch.linalg.vector_norm(v)
    prev = None
    for i in range(1, max_iters + 1):
        w = hvp(v).to(F64)
        rq = float(v @ w)
        if history is not None:
            history.append(rq)
        if prev is not None and abs(rq - prev) <= tol * abs(rq):
            return rq, i
        prev = rq
        norm = torch.linalg.vector_norm(w)
        if norm == 0:
            return 0.0, i
        v = w / norm
    return rq, max_iters


# ----------------------------------------------------------------------------------- per checkpoint
DEFAULTS = {"enabled": True, "eval_samples": 256, "top_k": 3, "lanczos_iters": 16, "slq_probes": 3,
            "hutchinson_probes": 8, "every": 1, "seed": 0,
            # flatness around x_K and the local learning coefficient (landscope.flatness)
            "flatness_eps": 0.1, "flatness_directions": 8, "flatness_t_max": 1.0,
            "llc_chains": 2, "llc_steps": 100, "llc_step_size": 1e-4, "llc_gamma": 100.0}
TOP_COLUMNS = ("lambda_max", "lambda_2", "lambda_3")


def settings_of(raw: dict | None) -> dict:
    """The experiment's ``curvature:`` section over DEFAULTS; unknown keys are named."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"curvature: unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **raw}
    if not 1 <= out["top_k"] <= len(TOP_COLUMNS):
        raise ValueError(f"curvature.top_k must be 1..{len(TOP_COLUMNS)} (the columns "
                         f"{', '.join(TOP_COLUMNS)}), got {out['top_k']}")
    for key in ("eval_samples", "lanczos_iters", "slq_probes", "every"):
        if out[key] < 1:
            raise ValueError(f"curvature.{key} must be >= 1, got {out[key]}")
    for key in ("flatness_directions", "llc_chains"):
        if out[key] < 0:
            raise ValueError(f"curvature.{key} must be >= 0 (0 skips it), got {out[key]}")
    if out["llc_steps"] < 1:
        raise ValueError(f"curvature.llc_steps must be >= 1, got {out['llc_steps']}")
    for key in ("flatness_eps", "flatness_t_max", "llc_step_size"):
        if not out[key] > 0:
            raise ValueError(f"curvature.{key} must be > 0, got {out[key]}")
    if out["llc_gamma"] < 0:
        raise ValueError(f"curvature.llc_gamma must be >= 0, got {out['llc_gamma']}")
    if out["hutchinson_probes"] < 2:
        raise ValueError(f"curvature.hutchinson_probes must be >= 2 (for a standard error), got "
                         f"{out['hutchinson_probes']}")
    return out


def eval_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a fixed random subset (the same at every checkpoint of a run)."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=_generator(seed, "cpu"))[:size].sort().values


def measure_operator(op: HessianOperator, settings: dict, device="cpu") -> tuple[dict, list[dict]]:
    """One checkpoint's curvature row and its SLQ spectrum rows from one Hessian operator.

    The top-k eigenvalues and lambda_min come from the SLQ probes' Lanczos runs themselves
    (per rank the best Ritz value over probes), so they cost no extra products.
    """
    s = settings
    dens = slq(op, op.n, s["slq_probes"], s["lanczos_iters"], s["seed"], device)
    top = dens.top(s["top_k"])
    neg, neg_se = dens.negative_fraction()
    trace, trace_se, _ = hutchinson(op, op.n, s["hutchinson_probes"], s["seed"] + 1, device)
    row = {c: (top[i] if i < len(top) else None) for i, c in enumerate(TOP_COLUMNS)}
    row.update(lambda_min=dens.bottom, neg_fraction=neg, neg_fraction_se=neg_se, trace=trace,
               trace_se=trace_se, n_hvp=op.n_hvp)
    spectrum = [{"probe": j, "node": i, "ritz": float(r), "weight": float(w)}
                for j, p in enumerate(dens.probes) for i, (r, w) in enumerate(zip(p.ritz, p.weights))]
    return row, spectrum


def edge_of_stability(lambda_max: float, lr: float) -> dict:
    """Sharpness against the stability threshold 2/lr of gradient descent on a quadratic."""
    two = 2.0 / lr if lr > 0 else float("inf")
    return {"two_over_lr": two, "above_eos": bool(lambda_max > two)}


def measured_steps(steps: list[int], every: int, minimizer_step: int | None) -> list[int]:
    """Every ``every``-th checkpoint, always the last one and x_K's."""
    keep = set(steps[::every]) | {steps[-1]}
    if minimizer_step is not None and minimizer_step in steps:
        keep.add(minimizer_step)
    return sorted(keep)


# ----------------------------------------------------------------------------------- per run
def curvature_run(spec, ckpt_dir, minimizer_path, results, settings: dict) -> dict:
    """Measure one trained run; write its ``curvature``, ``spectrum``, ``stationarity`` and
    ``flatness`` parts.

    Each measured checkpoint's model state is restored into the run's model (as a resumed run would
    be) and measured on the same evaluation subset. Stationarity reads every checkpoint (not only the
    ``every`` stride) and x_K from the minimizer file. Flatness (sublevel radius, LLC) is measured at
    the minimizer file's parameters on the same subset; its log-volume proxy uses the top
    eigenvalues of the curvature row at x_K's step (NaN when that step has none).
    Returns {'rows': n, 'wall_s': s, 'stationarity_s': s, 'flatness_s': s, 'llc_s': s}.
    """
    import json
    import time
    from pathlib import Path

    from landscope import store
    from landscope.flatness import flatness_row, stationarity
    from landscope.optim import lr_at
    from landscope.trajectory import build_problem, checkpoint_path, load_checkpoint, load_minimizer

    s = settings_of(settings)
    t_run = time.perf_counter()
    ckpt_dir = Path(ckpt_dir)
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    chash = spec.config_hash()
    if manifest.get("config_hash") != chash:
        raise ValueError(f"curvature {spec.experiment}/{spec.run}: the manifest was written by another "
                         "configuration; re-run the train rule for this run")
    minimizer = load_minimizer(minimizer_path) if minimizer_path else None
    x_k = minimizer.get("step") if minimizer else None
    all_steps = [c["step"] for c in manifest["checkpoints"]]
    steps = measured_steps(all_steps, s["every"], x_k)
    problem = build_problem(spec)
    idx = eval_subset(len(problem.data), s["eval_samples"], s["seed"]).to(problem.device)
    x, y = problem.data.x[idx], problem.data.y[idx]
    rows, spec_rows = [], []
    for step in steps:
        t0 = time.perf_counter()
        problem.model.load_state_dict(load_checkpoint(checkpoint_path(ckpt_dir, step), chash)["model"])
        row, spectrum = measure_operator(hessian_operator(problem.model, problem.loss_fn, x, y), s,
                                         problem.device)
        lr = lr_at(spec.optimizer, spec.schedule, spec.steps, step)
        row.update(step=step, is_minimizer=step == x_k, lr=lr, eval_samples=len(idx),
                   **edge_of_stability(row["lambda_max"], lr), wall_s=time.perf_counter() - t0)
        rows.append(row)
        spec_rows += [{"step": step, **r} for r in spectrum]
    meta = {**store.provenance(chash, str(problem.device)), "settings": json.dumps(s, sort_keys=True)}
    _write(results, "curvature", spec, rows, meta)
    _write(results, "spectrum", spec, spec_rows, meta)

    t0 = time.perf_counter()
    points = []
    for step in all_steps:
        problem.model.load_state_dict(load_checkpoint(checkpoint_path(ckpt_dir, step), chash)["model"])
        points.append(flat_parameters(problem.model))
    if minimizer is not None:
        problem.model.load_state_dict(minimizer["model"])
    pairs, run_level = stationarity(all_steps, points, flat_parameters(problem.model))
    t_stat = time.perf_counter() - t0
    _write(results, "stationarity", spec, [{**p, **run_level} for p in pairs], meta)

    at_min = next((r for r in rows if r["step"] == x_k), None)
    tops = [at_min[c] for c in TOP_COLUMNS] if at_min else []
    flat = flatness_row(problem.model, problem.loss_fn, x, y, s, tops)
    flat.update(step=x_k if x_k is not None else all_steps[-1], eval_samples=len(idx),
                stationarity_wall_s=t_stat)
    _write(results, "flatness", spec, [flat], meta)
    return {"rows": len(rows), "wall_s": time.perf_counter() - t_run, "stationarity_s": t_stat,
            "flatness_s": flat["flatness_wall_s"], "llc_s": flat["llc_wall_s"]}


def _write(results, table: str, spec, rows: list[dict], meta: dict) -> None:
    from landscope import store

    cols = [c for c in store.SCHEMAS[table] if c not in ("experiment", "run")]
    columns = {"experiment": [spec.experiment] * len(rows), "run": [spec.run] * len(rows),
               **{c: [r[c] for r in rows] for c in cols}}
    store.write_table(store.part_path(results, table, spec.experiment, spec.run), table, columns, meta)
