"""Curvature of the loss landscape from Hessian-vector products (no Hessian is ever formed).

One primitive, :func:`hessian_operator`, turns a model, its loss and a fixed evaluation subset into
``v -> H v`` (double backward through the mean loss, evaluation mode: dropout off, BatchNorm on its
running statistics). Every estimator takes any such callable on float64 vectors, so the same code is
tested on matrices of known spectrum and used on networks:

- :func:`lanczos` with full reorthogonalisation: Ritz values (top-k, bottom) and Gauss weights;
- :func:`slq`: stochastic Lanczos quadrature, the spectral density as Ritz nodes and weights per
  probe, smoothed at the resolution of the Lanczos runs, and the fraction of clearly negative
  eigenvalues (below -3 sigma) with its standard error over probes;
- :func:`hutchinson`: trace with Rademacher probes and its standard error;
- :func:`hutchpp`: Hutch++ (Meyer et al. 2021), the trace from a low-rank part plus Hutchinson on
  the rest, far more accurate than Hutchinson at the same budget when the spectrum decays fast;
- :func:`preconditioned_operator`: ``v -> D H D`` with D = P^{-1/2}, P Adam's preconditioner read
  from the optimizer state, whose largest eigenvalue is the preconditioned sharpness;
- :func:`eos_threshold`: the stability threshold of the optimizer's linearised update on a
  quadratic (2/lr for gradient descent, 38/lr for Adam with beta1 = 0.9);
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
    gen = _generator(seed, device)
    return SpectralDensity([lanczos(hvp, rademacher(n, gen, device), iters) for _ in range(probes)],
                           _check_iters(iters, n))


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
    gen = _generator(seed, device)
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


# ----------------------------------------------------------------------------------- edge of stability
ADAM_TYPES = ("adam", "adamw", "nadamw")


def adam_preconditioner(opt_state: dict, params: list[torch.Tensor], optimizer: dict) -> torch.Tensor:
    """Adam's diagonal preconditioner at a checkpoint, flat in the parameters' order (float64).

    The update is x <- x - lr m_t / P with P = (1 - b1^t) (sqrt(v_t / (1 - b2^t)) + eps) (Adam,
    AdamW; NAdamW divides the same way), read from the optimizer's ``state_dict()``: ``state[i]``
    holds ``exp_avg_sq`` (v_t) and ``step`` (t) of the i-th parameter of the (single-group) optimizer
    built on ``model.parameters()``. A parameter without state (it never had a gradient) gets P = inf
    (it does not move). Cohen et al. (2022, arXiv 2207.14484) define the preconditioned sharpness as
    the largest eigenvalue of P^{-1} H.
    """
    from landscope.optim import OPTIMIZER_DEFAULTS

    b1, b2 = (float(b) for b in (optimizer.get("betas") or OPTIMIZER_DEFAULTS["betas"]))
    eps = float(optimizer.get("eps") if optimizer.get("eps") is not None else OPTIMIZER_DEFAULTS["eps"])
    ids = [i for g in opt_state["param_groups"] for i in g["params"]]
    if len(ids) != len(params):
        raise ValueError(f"adam_preconditioner: the optimizer state has {len(ids)} parameters, the model "
                         f"{len(params)}; the checkpoint does not belong to this model")
    out = []
    for i, p in zip(ids, params):
        st = opt_state["state"].get(i)
        if not st or "exp_avg_sq" not in st:
            out.append(torch.full((p.numel(),), math.inf, dtype=F64))
            continue
        t = float(st["step"])
        v = st["exp_avg_sq"].detach().reshape(-1).to("cpu", F64)
        out.append((1 - b1 ** t) * ((v / (1 - b2 ** t)).sqrt() + eps))
    return torch.cat(out)


def preconditioned_operator(hvp: HVP, precond: torch.Tensor) -> HVP:
    """``v -> P^{-1/2} H P^{-1/2} v`` (symmetric, same eigenvalues as P^{-1} H) for a diagonal P > 0."""
    d = precond.to(F64).rsqrt()

    def op(v: torch.Tensor) -> torch.Tensor:
        return d.to(v.device) * hvp(d.to(v.device) * v).to(F64)

    return op


def eos_threshold(optimizer: dict, lr: float) -> tuple[float, str]:
    """(threshold, rule): the largest curvature (preconditioned for Adam types) at which the
    optimizer's update, linearised on a quadratic with frozen preconditioner, stays stable.

    The boundary is where an eigenmode flips sign every step (z = -1 in the recurrence):
    gradient descent 2/lr; heavy-ball momentum b (PyTorch SGD) 2(1 + b)/lr; Nesterov
    2(1 + b)/(lr (1 + 2b)); Adam/AdamW with EMA momentum b1 (2 + 2 b1)/((1 - b1) lr), 38/lr at
    b1 = 0.9 (Cohen et al. 2022); NAdamW's Nesterov EMA 2(1 + b1)/((1 - b1)(1 + 2 b1) lr).
    SPS_max and NGN never step further than lr: 2/lr is their threshold at the largest step.
    The other adaptive methods (DecSPS, AdaGrad-norm-max, normalized SGD) have none: NaN, 'none'.
    """
    from landscope.optim import OPTIMIZER_DEFAULTS

    name = optimizer.get("name", "sgd")
    if not lr > 0:
        return math.inf, "gd"

    def get(key):
        return optimizer.get(key) if optimizer.get(key) is not None else OPTIMIZER_DEFAULTS[key]

    if name == "sgd":
        b = float(get("momentum"))
        if b == 0:
            return 2.0 / lr, "gd"
        if get("nesterov"):
            return 2 * (1 + b) / (lr * (1 + 2 * b)), "nesterov"
        return 2 * (1 + b) / lr, "heavy_ball"
    if name in ("adam", "adamw"):
        b1 = float(get("betas")[0])
        return 2 * (1 + b1) / ((1 - b1) * lr), "adam"
    if name == "nadamw":
        b1 = float(get("betas")[0])
        return 2 * (1 + b1) / ((1 - b1) * (1 + 2 * b1) * lr), "nadam"
    if name in ("sps_max", "ngn"):
        return 2.0 / lr, "gd_max_step"
    return math.nan, "none"


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
            "llc_chains": 2, "llc_steps": "auto", "llc_step_size": "auto", "llc_gamma": 100.0, "llc_max_steps": 2000,
            # plateau-escape events from the steps table (landscope.flatness.plateau_events)
            "plateau_window": 50, "plateau_min_windows": 3, "plateau_flat_tol": 0.02,
            "plateau_grad_tol": 0.25, "plateau_drop": 0.1}
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
    if out["llc_steps"] != "auto" and not (isinstance(out["llc_steps"], int) and out["llc_steps"] >= 1):
        raise ValueError(f"curvature.llc_steps must be auto or an integer >= 1, got {out['llc_steps']!r}")
    if out["llc_step_size"] != "auto" and not (isinstance(out["llc_step_size"], (int, float))
                                               and out["llc_step_size"] > 0):
        raise ValueError(f"curvature.llc_step_size must be auto or a number > 0, got {out['llc_step_size']!r}")
    if out["llc_max_steps"] < 1:
        raise ValueError(f"curvature.llc_max_steps must be >= 1, got {out['llc_max_steps']}")
    if out["llc_steps"] == "auto" and out["llc_gamma"] == 0 and out["llc_chains"] > 0:
        raise ValueError("curvature.llc_steps auto needs llc_gamma > 0 (its relaxation time is "
                         "1/(step size * gamma)); set llc_gamma > 0 or llc_steps to a number")
    for key in ("flatness_eps", "flatness_t_max"):
        if not out[key] > 0:
            raise ValueError(f"curvature.{key} must be > 0, got {out[key]}")
    if out["llc_gamma"] < 0:
        raise ValueError(f"curvature.llc_gamma must be >= 0, got {out['llc_gamma']}")
    if out["plateau_window"] < 1 or out["plateau_min_windows"] < 2:
        raise ValueError(f"curvature.plateau_window must be >= 1 and plateau_min_windows >= 2, got "
                         f"{out['plateau_window']}, {out['plateau_min_windows']}")
    if not (out["plateau_flat_tol"] >= 0 and 0 < out["plateau_grad_tol"] <= 1 and 0 < out["plateau_drop"] < 1):
        raise ValueError("curvature: need plateau_flat_tol >= 0, 0 < plateau_grad_tol <= 1 and "
                         f"0 < plateau_drop < 1, got {out['plateau_flat_tol']}, {out['plateau_grad_tol']}, "
                         f"{out['plateau_drop']}")
    if out["hutchinson_probes"] < 2:
        raise ValueError(f"curvature.hutchinson_probes must be >= 2 (for a standard error), got "
                         f"{out['hutchinson_probes']}")
    return out


def eval_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a fixed random subset (the same at every checkpoint of a run)."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=_generator(seed, "cpu"))[:size].sort().values


def measure_operator(op: HessianOperator, settings: dict, device="cpu",
                     precond: torch.Tensor | None = None) -> tuple[dict, list[dict]]:
    """One checkpoint's curvature row and its SLQ spectrum rows from one Hessian operator.

    The top-k eigenvalues and lambda_min come from the SLQ probes' Lanczos runs themselves
    (per rank the best Ritz value over probes), so they cost no extra products. Hutchinson and
    Hutch++ each spend ``hutchinson_probes`` products (Hutch++ is NaN below 4). With ``precond``
    (Adam's P, :func:`adam_preconditioner`) one more Lanczos run of ``lanczos_iters`` products gives
    the preconditioned sharpness (else NaN). Per-estimator wall seconds are in the ``*_wall_s`` keys.
    """
    import time

    s = settings
    nan = math.nan
    t0 = time.perf_counter()
    dens = slq(op, op.n, s["slq_probes"], s["lanczos_iters"], s["seed"], device)
    top = dens.top(s["top_k"])
    neg, neg_se = dens.negative_fraction()
    t1 = time.perf_counter()
    trace, trace_se, _ = hutchinson(op, op.n, s["hutchinson_probes"], s["seed"] + 1, device)
    t2 = time.perf_counter()
    pp, pp_se = (nan, nan)
    if s["hutchinson_probes"] >= 4:
        pp, pp_se, _ = hutchpp(op, op.n, s["hutchinson_probes"], s["seed"] + 4, device)
    t3 = time.perf_counter()
    pre = nan
    if precond is not None:
        v0 = torch.randn(op.n, dtype=F64, generator=_generator(s["seed"] + 5, device), device=device)
        pre = float(lanczos(preconditioned_operator(op, precond), v0, s["lanczos_iters"]).ritz[-1])
    t4 = time.perf_counter()
    row = {c: (top[i] if i < len(top) else None) for i, c in enumerate(TOP_COLUMNS)}
    row.update(lambda_min=dens.bottom, neg_fraction=neg, neg_fraction_se=neg_se, density_sigma=dens.sigma,
               trace=trace, trace_se=trace_se, trace_hutchpp=pp, trace_hutchpp_se=pp_se,
               precond_lambda_max=pre, n_hvp=op.n_hvp, slq_wall_s=t1 - t0, hutchinson_wall_s=t2 - t1,
               hutchpp_wall_s=t3 - t2, precond_wall_s=t4 - t3)
    spectrum = [{"probe": j, "node": i, "ritz": float(r), "weight": float(w)}
                for j, p in enumerate(dens.probes) for i, (r, w) in enumerate(zip(p.ritz, p.weights))]
    return row, spectrum


def edge_of_stability(lambda_max: float, lr: float, optimizer: dict | None = None,
                      precond_lambda_max: float = math.nan) -> dict:
    """Sharpness against the optimizer's stability threshold (:func:`eos_threshold`).

    ``two_over_lr`` is always 2/lr (gradient descent's threshold, the classic reference line);
    ``eos_sharpness`` is the preconditioned sharpness for Adam types and lambda_max otherwise;
    ``above_eos`` compares it with ``eos_threshold`` (None where the optimizer has no threshold).
    """
    optimizer = optimizer or {"name": "sgd"}
    two = 2.0 / lr if lr > 0 else math.inf
    threshold, rule = eos_threshold(optimizer, lr)
    sharp = precond_lambda_max if optimizer.get("name") in ADAM_TYPES else lambda_max
    above = None if not (math.isfinite(sharp) and not math.isnan(threshold)) else bool(sharp > threshold)
    return {"two_over_lr": two, "eos_threshold": threshold, "eos_rule": rule, "eos_sharpness": sharp,
            "above_eos": above}


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
    from landscope.trajectory import (attach_recording, build_problem, checkpoint_path, load_checkpoint,
                                      load_minimizer, run_manifest)

    s = settings_of(settings)
    t_run = time.perf_counter()
    ckpt_dir = Path(ckpt_dir)
    manifest = run_manifest(spec, ckpt_dir, "curvature")
    chash = spec.config_hash()
    minimizer = load_minimizer(minimizer_path) if minimizer_path else None
    x_k = minimizer.get("step") if minimizer else None
    all_steps = [c["step"] for c in manifest["checkpoints"]]
    steps = measured_steps(all_steps, s["every"], x_k)
    problem = attach_recording(build_problem(spec), ckpt_dir)  # a recorded loop's own learning rates
    idx = eval_subset(len(problem.data), s["eval_samples"], s["seed"]).to(problem.device)
    x, y = problem.data.x[idx], problem.data.y[idx]
    rows, spec_rows = [], []
    adam = spec.optimizer.get("name") in ADAM_TYPES
    for step in steps:
        t0 = time.perf_counter()
        state = load_checkpoint(checkpoint_path(ckpt_dir, step), chash)
        problem.model.load_state_dict(state["model"])
        op = hessian_operator(problem.model, problem.loss_fn, x, y)
        precond = (adam_preconditioner(state["optimizer"], list(problem.model.parameters()), spec.optimizer)
                   if adam and state["optimizer"]["state"] else None)  # step 0: no state yet
        if precond is not None and len(precond) != op.n:
            raise ValueError(f"curvature {spec.experiment}/{spec.run}: parameters without requires_grad; "
                             "the preconditioned sharpness needs every parameter trainable")
        row, spectrum = measure_operator(op, s, problem.device, precond)
        lr = problem.lr(step)
        row.update(step=step, is_minimizer=step == x_k, lr=lr, eval_samples=len(idx),
                   **edge_of_stability(row["lambda_max"], lr, spec.optimizer, row["precond_lambda_max"]),
                   wall_s=time.perf_counter() - t0)
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
    flat = flatness_row(problem.model, problem.loss_fn, x, y, s, tops, at_min["lambda_min"] if at_min else None)
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
