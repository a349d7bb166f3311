"""Hessian-vector products and the estimators built on them (no Hessian is ever formed).

One primitive, :func:`hessian_operator`, turns a model, its loss and a fixed evaluation subset into
``v -> H v`` (double backward through the mean loss, evaluation mode: dropout off, BatchNorm on its
running statistics), in the coordinates of landscope.problem.evaluate's flat vectors. Every
estimator takes any such callable on float64 vectors, so the same code is tested on matrices of
known spectrum and used on networks:

- :func:`lanczos` with full reorthogonalisation: Ritz values (top-k, bottom) and Gauss weights;
- :func:`slq`: stochastic Lanczos quadrature, the spectral density as Ritz nodes and weights per
  probe, smoothed at the resolution of the Lanczos runs, and the fraction of clearly negative
  eigenvalues (below -3 sigma) and the share of near-zero ones (|lambda| < sigma), each with its
  standard error over probes;
- :func:`hutchinson`: trace with Rademacher probes and its standard error;
- :func:`hutchpp`: Hutch++ (Meyer et al. 2021), the trace from a low-rank part plus Hutchinson on
  the rest, far more accurate than Hutchinson at the same budget when the spectrum decays fast;
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

from landscope.problem.evaluate import evaluation_mode, trainable_parameters

F64 = torch.float64


HVP = Callable[[torch.Tensor], torch.Tensor]


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
    """``v -> H v`` for f(θ) = mean_i loss_fn(model, model(x), y)_i in evaluation mode, over the
    trainable parameters (landscope.problem.evaluate.flatten's coordinate order).

    ``loss_fn(model, outputs, targets)`` returns per-sample losses (landscope.problem.models.loss_for).
    The model's modes are restored before returning; the graph already holds evaluation mode.
    """
    params = trainable_parameters(model)
    if not params:
        raise ValueError("hessian operator: the model has no parameter with requires_grad=True")
    # the fused attention kernels have no double backward; the math kernel computes the same
    with evaluation_mode(model), torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        loss = loss_fn(model, model(x), y).mean()
        if not torch.isfinite(loss):
            raise ValueError(f"hessian operator: the loss is {loss.item()} at this point; "
                             "curvature is only defined where the loss is finite")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return HessianOperator(params, list(grads))


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
    """Lanczos tridiagonalisation from ``v0`` with full reorthogonalisation (twice when needed).

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
        # full reorthogonalisation; a second pass only when the first removed most of w (the
        # Kahan-Parlett / DGKS criterion, "twice is enough"): the basis is read once per pass
        before = float(torch.linalg.vector_norm(w))
        w = w - (basis[:j + 1] @ w) @ basis[:j + 1]
        b = float(torch.linalg.vector_norm(w))
        if b < 0.7071 * before:
            w = w - (basis[:j + 1] @ w) @ basis[:j + 1]
            b = float(torch.linalg.vector_norm(w))
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0), 1e-300)
        if j == m - 1 or b <= 1e-10 * scale:
            break
        betas.append(b)
        q = w / b
    a, b = torch.tensor(alphas, dtype=F64), torch.tensor(betas, dtype=F64)
    ritz, vecs = torch.linalg.eigh(torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1))
    return Lanczos(ritz, vecs[0] ** 2, len(alphas), a, b)


def seeded_generator(seed: int, device) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``: every random draw of the measurements
    (probe vectors, evaluation subsets) comes from one, so a measurement is a function of its seed."""
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
    v0 = torch.randn(n, dtype=F64, generator=seeded_generator(seed, device), device=device)
    run = lanczos(hvp, v0, iters)
    return run.top(k), run.bottom, run.n_hvp


NEG_SIGMAS = 3.0  # an eigenvalue counts as negative below -NEG_SIGMAS * sigma (the resolution)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature: per probe, Ritz nodes and weights (each probe's sum to 1).

    ``iters`` is the Lanczos length asked for; the resolution of an m-node Gauss quadrature over a
    spectrum of width R is about R / m, and :attr:`sigma` = (largest - smallest Ritz value over all
    probes) / iters is the width of the Gaussian kernel that smooths the density (Ghorbani et al.
    2019, Papyan 2019 use the same kind of smoothing). Finer detail than sigma is not resolved.
    """
    probes: list[Lanczos] = field(default_factory=list)
    iters: int = 0

    @property
    def n_hvp(self) -> int:
        return sum(p.n_hvp for p in self.probes)

    @property
    def sigma(self) -> float:
        """Kernel width: the Ritz values' range over all probes divided by the Lanczos length."""
        lo = min(float(p.ritz[0]) for p in self.probes)
        hi = max(float(p.ritz[-1]) for p in self.probes)
        return (hi - lo) / (self.iters or max(p.n_hvp for p in self.probes))

    def negative_fraction(self, sigmas: float = NEG_SIGMAS, sigma: float | None = None) -> tuple[float, float]:
        """Mean and standard error over probes of the smoothed density's mass below -sigmas * sigma.

        Per probe: sum_i w_i Phi((-sigmas sigma - theta_i) / sigma) over its Ritz nodes theta_i and
        weights w_i, the Gauss quadrature of g(lambda) = Phi((-sigmas sigma - lambda) / sigma), a
        function smooth at the quadrature's resolution. Its expectation over Rademacher probes is
        (1/n) sum_k g(lambda_k): the fraction of eigenvalues below -sigmas * sigma, each counted
        softly (0.5 at exactly -sigmas sigma, 0.98 two sigma further down, 0.001 at zero). The near-zero
        bulk of a network's Hessian, which a short Lanczos run smears across zero, so counts as
        (almost) nothing. The standard error covers the probe variance only.
        With a zero-width spectrum (sigma = 0) the fraction is that of nodes below zero.
        """
        sig = self.sigma if sigma is None else sigma
        vals = []
        for p in self.probes:
            if sig > 0:
                vals.append(float((p.weights * _normal_cdf((-sigmas * sig - p.ritz) / sig)).sum()))
            else:
                vals.append(float(p.weights[p.ritz < 0].sum()))
        return _mean_se(torch.tensor(vals, dtype=F64))

    def near_zero_fraction(self, sigma: float | None = None) -> tuple[float, float]:
        """Mean and standard error over probes of the Gauss quadrature of 1{|lambda| < sigma}: per probe
        the summed weights of its Ritz nodes within the resolution sigma of zero.

        Its expectation over Rademacher probes is the fraction of eigenvalues with |lambda| < sigma
        (exactly, once the Lanczos runs resolve the spectrum: the weight of a node then is the probe's
        squared projection on that eigenspace, z^T P z / n, whose mean is the eigenspace's dimension / n).
        Before that, a node stands for the eigenvalues around it, so the count is of the near-zero bulk
        at the density's own resolution: singular learning theory's remark that most of a network's
        spectrum sits at zero, measured. Unlike :meth:`negative_fraction` it is a hard count; a smoothed
        one would weigh an exact zero eigenvalue by 0.68 only. The standard error covers the probe
        variance only. With a zero-width spectrum (sigma = 0) it is the weight of nodes at exactly zero.
        """
        sig = self.sigma if sigma is None else sigma
        vals = [float(p.weights[(p.ritz.abs() < sig) if sig > 0 else (p.ritz == 0)].sum()) for p in self.probes]
        return _mean_se(torch.tensor(vals, dtype=F64))

    def density(self, grid: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """The smoothed density (1/n) sum_k N(t; lambda_k, sigma^2) at the points ``grid``, averaged
        over probes (integrates to 1)."""
        sig = self.sigma if sigma is None else sigma
        if not sig > 0:
            raise ValueError("density: the kernel width is 0 (all Ritz values equal); pass sigma > 0")
        return smoothed_density(torch.cat([p.ritz for p in self.probes]),
                                torch.cat([p.weights for p in self.probes]) / len(self.probes), grid, sig)

    def top(self, k: int) -> list[float]:
        """Per rank, the largest i-th Ritz value over probes: still a lower bound of lambda_i."""
        tops = [p.top(k) for p in self.probes]
        width = min(len(t) for t in tops)
        return [max(t[i] for t in tops) for i in range(width)]

    @property
    def bottom(self) -> float:
        """The smallest Ritz value over probes: still an upper bound of lambda_min."""
        return min(p.bottom for p in self.probes)


def smoothed_density(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """sum_i weights_i N(grid; nodes_i, sigma^2): nodes and weights as stored in the spectrum table."""
    z = (grid.to(F64)[:, None] - nodes.to(F64)[None, :]) / sigma
    return (weights.to(F64)[None, :] * torch.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))


def _mean_se(vals: torch.Tensor) -> tuple[float, float]:
    mean = float(vals.mean())
    se = float(vals.std(correction=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return mean, se


def slq(hvp: HVP, n: int, probes: int = 4, iters: int = 20, seed: int = 0, device="cpu") -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature with Rademacher starting vectors."""
    if probes < 1:
        raise ValueError(f"slq: probes must be >= 1, got {probes}")
    gen = seeded_generator(seed, device)
    return SpectralDensity([lanczos(hvp, rademacher(n, gen, device), iters) for _ in range(probes)],
                           _check_iters(iters, n))


def hutchinson(hvp: HVP, n: int, probes: int = 16, seed: int = 0, device="cpu") -> tuple[float, float, int]:
    """(trace estimate, its standard error, products): mean of z^T H z over Rademacher z.

    Var(z^T H z) = 2 sum_{i != j} H_ij^2: exact (SE 0) for a diagonal H.
    """
    if probes < 2:
        raise ValueError(f"hutchinson: probes must be >= 2 for a standard error, got {probes}")
    gen = seeded_generator(seed, device)
    vals = []
    for _ in range(probes):
        z = rademacher(n, gen, device)
        vals.append(float(z @ hvp(z).to(F64)))
    mean, se = _mean_se(torch.tensor(vals, dtype=F64))
    return mean, se, probes


def hutchpp(hvp: HVP, n: int, products: int = 16, seed: int = 0, device="cpu") -> tuple[float, float, int]:
    """(trace estimate, its standard error, products) by Hutch++ (Meyer, Musco, Musco, Woodruff 2021).

    With s = products // 3 and g = products - 2 s: Q = an orthonormal basis of H S for s Rademacher
    columns S (s products), the exact trace of Q^T H Q (s products), plus Hutchinson with g probes
    on the deflated (I - QQ^T) H (I - QQ^T) (g products). Unbiased; the standard error is that of
    the Hutchinson part given Q. When the top eigenvalues carry most of the trace (a fast-decaying
    spectrum, as in trained networks) the deflated part, and so the error, is small.
    """
    if products < 4:
        raise ValueError(f"hutchpp: products must be >= 4 (sketch, its image and 2 probes for a standard "
                         f"error), got {products}")
    s = products // 3
    g_n = products - 2 * s
    gen = seeded_generator(seed, device)
    sketch = torch.stack([hvp(rademacher(n, gen, device)).to(F64) for _ in range(s)], 1)
    q, r = torch.linalg.qr(sketch)
    keep = r.diagonal().abs() > 1e-12 * max(float(r.diagonal().abs().max()), 1e-300)
    q = q[:, keep]  # a rank-deficient sketch (H of low rank): drop the null columns
    low = sum(float(q[:, j] @ hvp(q[:, j]).to(F64)) for j in range(q.shape[1]))
    vals = []
    for _ in range(g_n):
        z = rademacher(n, gen, device)
        z = z - q @ (q.T @ z)
        vals.append(float(z @ hvp(z).to(F64)))  # z^T (I - QQ^T) H (I - QQ^T) z, as Q^T z = 0
    mean, se = _mean_se(torch.tensor(vals, dtype=F64))
    return low + mean, se, s + q.shape[1] + g_n


def power_iteration(hvp: HVP, n: int, tol: float = 1e-3, max_iters: int = 1000, seed: int = 0,
                    device="cpu", history: list | None = None) -> tuple[float, int]:
    """(Rayleigh quotient, products) once it changes by less than ``tol`` relative between steps.

    Finds the eigenvalue of largest magnitude: lambda_max only when lambda_max > |lambda_min|.
    ``history``, when given, receives the Rayleigh quotient of every product (for benchmarks).
    """
    v = torch.randn(n, dtype=F64, generator=seeded_generator(seed, device), device=device)
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
