"""Stationarity of the iterates, flatness around x_K and the local learning coefficient.

Three measurements the per-run ``curvature`` job adds (landscope.measures.curvature.curvature_run):

- :func:`stationarity`: per consecutive checkpoint pair the mean step length
  ||x_{k+1} - x_k|| / (steps between them); for the run the RMS spread of the last-quarter
  checkpoints around their mean, ||x_K - x_0|| and the path length (an invariant-measure view: the
  weights may keep moving while the loss is flat).
- :func:`sublevel_radius` / :func:`flatness_radii`: the eps-sublevel radius, the largest t with
  f(x_K + t d) - f(x_K) <= eps before the first crossing, along random filter-normalised
  directions d (Li et al. 2018), and :func:`log_volume_proxy`, -1/2 sum log lambda_i over the
  positive top eigenvalues (volume ~ eps^(d/2) / prod sqrt(lambda_i)).
- :func:`local_learning_coefficient`: the local learning coefficient by SGLD on the localised
  tempered posterior exp(-n beta L_n(w) - gamma/2 |w - w*|^2), beta = 1 / log n (Lau et al. 2023),
  with the step size and length planned from the curvature at w* (:func:`llc_plan`), run by
  :func:`sgld_llc` and diagnosed (per-chain drift, split R-hat, equilibrated or not and why).

The estimators take plain callables on float64 vectors (like the Hessian estimators), so they are
tested on functions with closed-form answers and used on networks through :func:`model_loss`, in the
flat coordinates of landscope.problem.evaluate (:func:`~landscope.problem.evaluate.flatten`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from landscope.measures.hvp import hessian_operator
from landscope.measures.hvp import top_eigenvalues as lanczos_top
from landscope.problem.evaluate import flatten, restoring_parameters, trainable_parameters, write_flat

F64 = torch.float64


# ----------------------------------------------------------------------------------- stationarity
def stationarity(steps: list[int], points: list[torch.Tensor], x_k: torch.Tensor) -> tuple[list[dict], dict]:
    """(one row per consecutive checkpoint pair, run-level numbers) of a trajectory.

    ``points[i]`` are the flat parameters at ``steps[i]`` (ascending). Pair rows hold ``step``,
    ``next_step``, ``distance`` and ``mean_step_length`` = distance / (next_step - step). The run
    level holds ``tail_spread``, sqrt(mean ||x_k - mean||^2) over the checkpoints in the last quarter
    of the recorded steps (step >= first + 3/4 (last - first)), ``tail_checkpoints`` (how many),
    ``dist_xk_x0`` = ||x_K - x_0|| and ``path_length`` (the sum of the pair distances).
    """
    if len(steps) != len(points) or not steps:
        raise ValueError(f"stationarity: {len(steps)} steps and {len(points)} points; need equal, >= 1")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"stationarity: steps must be strictly increasing, got {steps}")
    pts = [p.to(F64).reshape(-1) for p in points]
    rows = []
    for (s0, p0), (s1, p1) in zip(zip(steps, pts), zip(steps[1:], pts[1:])):
        dist = float(torch.linalg.vector_norm(p1 - p0))
        rows.append({"step": s0, "next_step": s1, "distance": dist, "mean_step_length": dist / (s1 - s0)})
    cut = steps[0] + 0.75 * (steps[-1] - steps[0])
    tail = torch.stack([p for s, p in zip(steps, pts) if s >= cut])
    spread = float(((tail - tail.mean(0)) ** 2).sum(1).mean().sqrt())
    run = {"tail_spread": spread, "tail_checkpoints": len(tail),
           "dist_xk_x0": float(torch.linalg.vector_norm(x_k.to(F64).reshape(-1) - pts[0])),
           "path_length": sum(r["distance"] for r in rows)}
    return rows, run


# ----------------------------------------------------------------------------------- model glue
def model_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
               grad: bool = False) -> Callable:
    """``w -> L(w)`` (or ``w -> (L(w), ∇L(w))`` with ``grad``), the mean loss over (x, y) in
    evaluation mode at flat parameters w (landscope.problem.evaluate's coordinates), the gradient a
    float64 vector on the host. It overwrites the model's parameters and expects evaluation mode: use
    it inside :func:`~landscope.problem.evaluate.restoring_parameters`."""
    params = trainable_parameters(model)

    def f(w: torch.Tensor):
        write_flat(params, w)
        if not grad:
            with torch.no_grad():
                return float(loss_fn(model, model(x), y).mean())
        with torch.enable_grad():
            loss = loss_fn(model, model(x), y).mean()
            gs = torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss.detach()), flatten([g if g is not None else torch.zeros_like(p)
                                              for g, p in zip(gs, params)], "cpu")

    return f


# ----------------------------------------------------------------------------------- flatness
def filter_normalized_direction(params: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """A Gaussian direction with each filter's norm set to the parameter's (Li et al. 2018).

    A filter is a slice along the first axis of a parameter with >= 2 axes (a conv filter, a row of a
    linear weight); a 1-D parameter (bias, norm scale) is one filter. Zero filters get zero
    directions. Returns a flat float64 vector in the parameters' order.
    """
    out = []
    for p in params:
        w = p.detach().to(F64).cpu()
        d = torch.randn(w.shape, dtype=F64, generator=gen)
        rows_w = w.reshape(w.shape[0], -1) if w.dim() >= 2 else w.reshape(1, -1)
        rows_d = d.reshape(rows_w.shape)
        scale = torch.linalg.vector_norm(rows_w, dim=1, keepdim=True) / \
            torch.linalg.vector_norm(rows_d, dim=1, keepdim=True).clamp_min(1e-300)
        out.append((rows_d * scale).reshape(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=F64)


def sublevel_radius(excess: Callable[[float], float], eps: float, t_max: float, grid: int = 10,
                    iters: int = 24) -> tuple[float, bool]:
    """(radius, capped): the largest t before the first crossing of ``excess(t) <= eps`` on [0, t_max].

    The crossing is bracketed on the geometric grid t_max * 2^-j (j = grid .. 0, ascending) so a
    loss that rises, falls and rises again is not jumped over at coarse scale; then ``iters``
    bisection steps. The radius returned is the bracket's lower end, within t_max * 2^-iters below
    the crossing. Non-finite excess counts as above eps. ``capped`` is True when excess(t_max) <= eps
    at every grid point (the radius is then t_max, a lower bound).
    """
    if not eps > 0 or not t_max > 0:
        raise ValueError(f"sublevel_radius: eps and t_max must be > 0, got eps={eps}, t_max={t_max}")
    if grid < 0 or iters < 1:
        raise ValueError(f"sublevel_radius: grid must be >= 0 and iters >= 1, got {grid}, {iters}")

    def below(t: float) -> bool:
        e = excess(t)
        return math.isfinite(e) and e <= eps

    lo = 0.0
    for j in range(grid, -1, -1):
        hi = t_max * 2.0 ** -j
        if not below(hi):
            break
        lo = hi
    else:
        return t_max, True
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if below(mid) else (lo, mid)
    return lo, False


def flatness_radii(loss: Callable[[torch.Tensor], float], x0: torch.Tensor, directions: list[torch.Tensor],
                   eps: float, t_max: float, **kw) -> tuple[float, list[float], list[bool]]:
    """(f(x0), radius per direction, capped per direction) for ``loss`` on flat float64 vectors."""
    f0 = loss(x0)
    if not math.isfinite(f0):
        raise ValueError(f"flatness: the loss at x_K is {f0}; the sublevel radius needs a finite loss")
    radii, capped = [], []
    for d in directions:
        r, c = sublevel_radius(lambda t: loss(x0 + t * d) - f0, eps, t_max, **kw)
        radii.append(r)
        capped.append(c)
    return f0, radii, capped


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25 %, median, 75 %) by linear interpolation (torch.quantile's default); NaN when empty."""
    if not values:
        return (math.nan,) * 3
    q = torch.quantile(torch.tensor(values, dtype=F64), torch.tensor([0.25, 0.5, 0.75], dtype=F64))
    return tuple(float(v) for v in q)


def log_volume_proxy(eigenvalues: list[float | None]) -> tuple[float, int]:
    """(-1/2 sum log lambda_i over the positive eigenvalues given, how many); NaN when none is."""
    pos = [float(v) for v in eigenvalues if v is not None and math.isfinite(v) and v > 0]
    return (-0.5 * sum(math.log(v) for v in pos) if pos else math.nan), len(pos)


# ----------------------------------------------------------------------------------- LLC
# SGLD on the localised tempered posterior exp(-U), U(w) = n beta L_n(w) + gamma/2 |w - w*|^2:
#     w' = w - (eps/2) grad U(w) + N(0, eps I).
# Near w* the drift in a Hessian eigendirection h is that of an AR(1) process with precision
# p = n beta h + gamma: stable for eps p < 4, with stationary variance 1 / (p (1 - eps p / 4)) (a
# relative step-size bias eps p / 4 in that direction's share of lambda), and its second moment --
# what the loss, hence the estimate, measures -- relaxes as exp(-eps p t). The stiffest direction
# (p_max = n beta lambda_max + gamma) bounds the step, the loosest (p_min = gamma + n beta
# min(lambda_min, 0); gamma for a convex loss, the Bakry-Emery rate of a gamma-strongly convex U)
# bounds the time to equilibrium.
LLC_STEP_FRACTION = 0.2  # auto step: eps = 0.2 / p_max (step-size bias <= 5 % in the stiffest direction)
LLC_RELAXATIONS = 8      # equilibrated: steps >= 8 relaxation times 1/(eps p_min); burn-in 1/4 of them
LLC_BURNIN = 0.25        # burn-in 2 relaxation times, averaging over 6: <= 2.3 % residual deficit
LLC_MIN_STEPS = 200      # auto steps: at least this many, so a fast-mixing chain still averages enough
LLC_RETRIES = 2          # auto step: a diverged chain retries the estimate at a 4x smaller step
LLC_RHAT_WARN = 1.1      # split R-hat above this is named in llc_note


@dataclass
class SGLDRun:
    """One SGLD estimate: per chain the estimate n beta (mean post-burn-in loss - L_n(w*)) and its
    drift n beta (mean of the second half - mean of the first half of the post-burn-in losses, in
    lambda units: ~0 at equilibrium), the split R-hat of the post-burn-in loss traces over all
    chains (Gelman et al. 2013; each chain split in halves, so it works with one chain), and which
    chains left the finite numbers (their estimate and drift are NaN)."""

    estimates: list[float]
    drifts: list[float]
    rhat: float
    diverged: list[bool]
    burnin_steps: int

    @property
    def mean(self) -> float:
        return float(torch.tensor(self.estimates, dtype=F64).mean())

    @property
    def std(self) -> float:
        """Standard deviation over chains (Bessel's correction; NaN for one chain)."""
        vals = torch.tensor(self.estimates, dtype=F64)
        return float(vals.std(correction=1)) if len(vals) > 1 else math.nan


def split_rhat(traces: list[list[float]]) -> float:
    """Split R-hat (potential scale reduction) of equal-length traces: each trace is cut into two
    halves (the middle value of an odd length dropped), then R = sqrt(((N-1)/N W + B/N) / W) over
    the 2m halves of length N, W the mean within-half variance, B/N the variance of the half means.
    NaN when a half has fewer than 2 values or W = 0."""
    half = min((len(t) for t in traces), default=0) // 2
    if half < 2:
        return math.nan
    seqs = torch.tensor([s for t in traces for s in (t[:half], t[len(t) - half:])], dtype=F64)
    w = float(seqs.var(dim=1, correction=1).mean())
    if not w > 0:
        return math.nan
    b_over_n = float(seqs.mean(dim=1).var(correction=1))
    return math.sqrt(((half - 1) / half * w + b_over_n) / w)


def sgld_llc(loss_grad: Callable[[torch.Tensor], tuple[float, torch.Tensor]], w_star: torch.Tensor, n: int,
             chains: int, steps: int, step_size: float, gamma: float, seed: int = 0,
             burnin: float = LLC_BURNIN) -> SGLDRun:
    """The local learning coefficient lambda = n beta (E[L_n(w)] - L_n(w*)), beta = 1 / log n, by SGLD.

    Each chain starts at w* and runs ``steps`` full-batch SGLD steps on the localised tempered
    posterior (see the comment above); the first ``int(burnin * steps)`` are burn-in. A chain whose
    loss leaves the finite numbers stops and gives NaN. Plain numbers in, no planning: see
    :func:`local_learning_coefficient` for the step size and length chosen from the curvature.
    """
    if n < 2:
        raise ValueError(f"sgld_llc: n must be >= 2 (beta = 1/log n), got {n}")
    if chains < 1 or steps < 1:
        raise ValueError(f"sgld_llc: chains and steps must be >= 1, got {chains}, {steps}")
    if not step_size > 0 or gamma < 0 or not 0 <= burnin < 1:
        raise ValueError(f"sgld_llc: need step_size > 0, gamma >= 0, 0 <= burnin < 1; got "
                         f"{step_size}, {gamma}, {burnin}")
    nbeta = n / math.log(n)
    w_star = w_star.to(F64)
    l_star = loss_grad(w_star)[0]
    gen = torch.Generator().manual_seed(int(seed))
    first = int(burnin * steps)
    sd = math.sqrt(step_size)
    estimates, drifts, diverged, traces = [], [], [], []
    for _ in range(chains):
        w, trace, blown = w_star.clone(), [], False
        for s in range(steps):
            loss, g = loss_grad(w)
            if not math.isfinite(loss):
                blown = True
                break
            if s >= first:
                trace.append(loss)
            # drawn in float32 and widened: 4.7x cheaper than float64 draws on CPU (150k parameters: 0.64 ms
            # against 3.0 ms, a quarter of a ResNet9 chain's time), and a chain's statistics do not hang on the
            # noise's last bits
            noise = torch.randn(w.shape, dtype=torch.float32, generator=gen).to(w.device, F64)
            w = w - 0.5 * step_size * (nbeta * g + gamma * (w - w_star)) + sd * noise
        diverged.append(blown)
        if blown or not trace:
            estimates.append(math.nan)
            drifts.append(math.nan)
            continue
        traces.append(trace)
        estimates.append(nbeta * (math.fsum(trace) / len(trace) - l_star))
        h = len(trace) // 2
        drifts.append(nbeta * (math.fsum(trace[len(trace) - h:]) - math.fsum(trace[:h])) / h if h else math.nan)
    return SGLDRun(estimates, drifts, split_rhat(traces) if traces else math.nan, diverged, first)


@dataclass
class LLCPlan:
    """Step size and length of an SGLD LLC estimate, and whether they reach equilibrium.

    ``relax_steps`` = 1 / (eps p_min), the relaxation time of the loss in steps (inf when the
    posterior is not localised, p_min <= 0); ``needed_steps`` = LLC_RELAXATIONS of them;
    ``equilibrated`` is None when there is no bound to judge by (gamma = 0 with a convex loss).
    ``note`` names what is wrong and the fix, or is None."""

    step_size: float
    steps: int
    p_max: float
    p_min: float
    relax_steps: float
    needed_steps: float
    equilibrated: bool | None
    note: str | None


def llc_plan(n: int, gamma: float, lambda_max: float, lambda_min: float = 0.0, step_size: float | str = "auto",
             steps: int | str = "auto", max_steps: int = 2000) -> LLCPlan:
    """Choose (or check) the SGLD step size and length from the curvature at w*.

    ``step_size`` 'auto': eps = LLC_STEP_FRACTION / p_max, p_max = n beta max(lambda_max, 0) + gamma.
    ``steps`` 'auto': LLC_RELAXATIONS / (eps p_min) (at least LLC_MIN_STEPS), capped at
    ``max_steps``; when the cap binds the plan is not equilibrated and says so. Explicit values are
    used as given and checked the same way (an explicit step with eps p_max >= 2 is named: its
    stationary variance is off by >= 2x in the stiffest direction, and it diverges at 4).
    """
    if n < 2:
        raise ValueError(f"llc_plan: n must be >= 2 (beta = 1/log n), got {n}")
    if gamma < 0 or max_steps < 1:
        raise ValueError(f"llc_plan: need gamma >= 0 and max_steps >= 1, got {gamma}, {max_steps}")
    auto_step, auto_steps = step_size == "auto", steps == "auto"
    if not auto_step and not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(f"llc_plan: step_size must be 'auto' or a number > 0, got {step_size!r}")
    if not auto_steps and not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"llc_plan: steps must be 'auto' or an integer >= 1, got {steps!r}")
    if auto_step and not math.isfinite(lambda_max):
        raise ValueError(f"llc_plan: step_size 'auto' needs a finite lambda_max at w*, got {lambda_max}; "
                         "measure it (Lanczos) or give llc_step_size a number")
    nbeta = n / math.log(n)
    p_max = nbeta * max(lambda_max, 0.0) + gamma if math.isfinite(lambda_max) else math.nan
    lam_min = lambda_min if math.isfinite(lambda_min) else 0.0
    p_min = gamma + nbeta * min(lam_min, 0.0)
    if auto_step and not p_max > 0:
        raise ValueError("llc_plan: step_size 'auto' needs lambda_max > 0 or gamma > 0 (the stiffest "
                         "precision n beta lambda_max + gamma is 0); give llc_step_size a number")
    eps = LLC_STEP_FRACTION / p_max if auto_step else float(step_size)
    notes = []
    if p_min > 0:
        relax = 1.0 / (eps * p_min)
        needed = LLC_RELAXATIONS * relax
    elif gamma == 0 and lam_min >= 0:
        relax = needed = math.nan
    else:
        relax = needed = math.inf
        notes.append(f"not localised: n beta lambda_min = {nbeta * lam_min:.4g} <= -gamma = {-gamma:g}, the "
                     f"posterior is not confined near w*; raise llc_gamma above {-nbeta * lam_min:.4g}")
    if auto_steps:
        if math.isnan(needed):
            raise ValueError("llc_plan: steps 'auto' needs llc_gamma > 0 (the relaxation time is 1/(eps gamma)); "
                             "set llc_gamma > 0 or give llc_steps a number")
        want = max(math.ceil(needed), LLC_MIN_STEPS) if math.isfinite(needed) else max_steps
        n_steps = min(want, max_steps)
    else:
        n_steps = steps
    if math.isnan(needed):
        equilibrated = None
        notes.append("gamma = 0: no relaxation bound; judge equilibrium by llc_rhat and llc_drift")
    else:
        equilibrated = n_steps >= needed
        if not equilibrated and math.isfinite(needed):
            fix = (f"llc_max_steps = {max_steps} caps it; raise llc_max_steps or llc_gamma" if auto_steps
                   else "use llc_steps: auto or more steps")
            notes.append(f"not equilibrated: {n_steps} steps < {math.ceil(needed)} needed ({LLC_RELAXATIONS} "
                         f"relaxation times 1/(eps p_min) = {relax:.4g} steps each); {fix}")
    if not auto_step and math.isfinite(p_max) and eps * p_max >= 2:
        equilibrated = False
        notes.append(f"unstable step: llc_step_size * (n beta lambda_max + gamma) = {eps * p_max:.3g} >= 2 "
                     f"(diverges at 4); use llc_step_size: auto or at most {LLC_STEP_FRACTION / p_max:.3g}")
    return LLCPlan(eps, n_steps, p_max, p_min, relax, needed, equilibrated, "; ".join(notes) or None)


@dataclass
class LLCResult:
    """A planned, diagnosed LLC estimate (the flatness table's llc_* columns)."""

    plan: LLCPlan
    run: SGLDRun
    lambda_max: float
    retries: int
    equilibrated: bool | None
    note: str | None

    @property
    def mean(self) -> float:
        return self.run.mean

    @property
    def std(self) -> float:
        return self.run.std


def local_learning_coefficient(loss_grad: Callable[[torch.Tensor], tuple[float, torch.Tensor]], w_star: torch.Tensor,
                               n: int, chains: int, gamma: float, lambda_max: float, lambda_min: float = 0.0,
                               step_size: float | str = "auto", steps: int | str = "auto",
                               max_steps: int = 2000, seed: int = 0) -> LLCResult:
    """:func:`llc_plan` then :func:`sgld_llc`, with diagnostics.

    With an automatic step, a chain that diverges (the curvature away from w* can exceed
    lambda_max) makes the whole estimate restart at a 4x smaller step (and the longer plan that
    goes with it), at most LLC_RETRIES times. ``equilibrated`` is the plan's, False when a chain
    still diverged; ``note`` adds the retries, diverged chains and a split R-hat above LLC_RHAT_WARN.
    """
    lam_top = lambda_max
    retries, notes = 0, []
    while True:
        plan = llc_plan(n, gamma, lam_top, lambda_min, step_size, steps, max_steps)
        run = sgld_llc(loss_grad, w_star, n, chains, plan.steps, plan.step_size, gamma, seed)
        if not any(run.diverged) or step_size != "auto" or retries == LLC_RETRIES:
            break
        retries += 1
        notes.append(f"a chain diverged at step size {plan.step_size:.3g}; retried at a 4x smaller one")
        lam_top = (4 * plan.p_max - gamma) * math.log(n) / n  # p_max 4x larger: eps exactly 4x smaller
    equilibrated = plan.equilibrated
    if any(run.diverged):
        equilibrated = False
        notes.append(f"{sum(run.diverged)} of {chains} chains diverged (NaN); lower llc_step_size")
    if run.rhat > LLC_RHAT_WARN:
        notes.append(f"split R-hat {run.rhat:.3g} > {LLC_RHAT_WARN}: the chains disagree or drift")
    note = "; ".join([plan.note] * (plan.note is not None) + notes) or None
    return LLCResult(plan, run, lambda_max, retries, equilibrated, note)


# ----------------------------------------------------------------------------------- per run
def flatness_row(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, settings: dict,
                 top_eigenvalues: list[float | None], lambda_min: float | None = None) -> dict:
    """The ``flatness`` table's measured columns at the model's current parameters (x_K).

    ``settings`` is a validated ``curvature:`` section (landscope.settings.curvature_settings): the radius
    uses ``flatness_directions`` directions (seed + 2) and is skipped (NaN) when that is 0; the LLC
    (:func:`local_learning_coefficient`) uses ``llc_chains`` chains (seed + 3) over the n = len(x)
    evaluation samples, skipped when 0, with its step size and length planned from lambda_max (the
    first of ``top_eigenvalues``; when missing, a ``lanczos_iters``-step Lanczos run at x_K
    measures it) and ``lambda_min``. The model's parameters and train flags are restored before
    returning.
    """
    s = settings
    params = trainable_parameters(model)
    x0 = flatten(params, "cpu")
    row = {"eps": s["flatness_eps"], "t_max": s["flatness_t_max"], "directions": s["flatness_directions"],
           "llc_chains": s["llc_chains"], "llc_gamma": s["llc_gamma"], "llc_max_steps": s["llc_max_steps"]}
    row["log_volume_proxy"], row["n_positive_eigs"] = log_volume_proxy(top_eigenvalues)
    t0 = time.perf_counter()
    with restoring_parameters(model):
        row["loss_at_xk"] = model_loss(model, loss_fn, x, y)(x0)
        radii, capped = [], []
        if s["flatness_directions"] > 0:
            gen = torch.Generator().manual_seed(int(s["seed"]) + 2)
            dirs = [filter_normalized_direction(params, gen) for _ in range(s["flatness_directions"])]
            _, radii, capped = flatness_radii(model_loss(model, loss_fn, x, y), x0, dirs,
                                              s["flatness_eps"], s["flatness_t_max"])
        row["radius_q25"], row["radius_median"], row["radius_q75"] = quartiles(radii)
        row["capped_fraction"] = sum(capped) / len(capped) if capped else math.nan
    t1 = time.perf_counter()
    row.update(llc_mean=math.nan, llc_std=math.nan, llc_steps=None, llc_step_size=math.nan, llc_burnin_steps=None,
               llc_lambda_max=math.nan, llc_relax_steps=math.nan, llc_equilibrated=None, llc_rhat=math.nan,
               llc_drift=math.nan, llc_per_chain_json=None, llc_note=None)
    if s["llc_chains"] > 0:
        top = top_eigenvalues[0] if top_eigenvalues and top_eigenvalues[0] is not None else math.nan
        low = math.nan if lambda_min is None else lambda_min
        if not math.isfinite(top) and s["llc_step_size"] == "auto":
            (top,), low, _ = lanczos_top(hessian_operator(model, loss_fn, x, y), len(x0), 1, s["lanczos_iters"],
                                         int(s["seed"]) + 3, x.device)
        with restoring_parameters(model):
            res = local_learning_coefficient(model_loss(model, loss_fn, x, y, grad=True), x0, len(x),
                                             s["llc_chains"], s["llc_gamma"], top, low, s["llc_step_size"],
                                             s["llc_steps"], s["llc_max_steps"], int(s["seed"]) + 3)
        drifts = [d for d in res.run.drifts if math.isfinite(d)]
        row.update(llc_mean=res.mean, llc_std=res.std, llc_steps=res.plan.steps, llc_step_size=res.plan.step_size,
                   llc_burnin_steps=res.run.burnin_steps, llc_lambda_max=top, llc_relax_steps=res.plan.relax_steps,
                   llc_equilibrated=res.equilibrated, llc_rhat=res.run.rhat,
                   llc_drift=sum(drifts) / len(drifts) if drifts else math.nan, llc_note=res.note,
                   llc_per_chain_json=json.dumps([{"llc": e if math.isfinite(e) else None,
                                                   "drift": d if math.isfinite(d) else None}
                                                  for e, d in zip(res.run.estimates, res.run.drifts)]))
    row.update(flatness_wall_s=t1 - t0, llc_wall_s=time.perf_counter() - t1)
    return row

