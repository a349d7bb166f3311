"""Stationarity of the iterates, flatness around x_K and the local learning coefficient.

Three measurements the per-run ``curvature`` job adds (landscope.curvature.curvature_run):

- :func:`stationarity`: per consecutive checkpoint pair the mean step length
  ||x_{k+1} - x_k|| / (steps between them); for the run the RMS spread of the last-quarter
  checkpoints around their mean, ||x_K - x_0|| and the path length (an invariant-measure view: the
  weights may keep moving while the loss is flat).
- :func:`sublevel_radius` / :func:`flatness_radii`: the eps-sublevel radius, the largest t with
  f(x_K + t d) - f(x_K) <= eps before the first crossing, along random filter-normalised
  directions d (Li et al. 2018), and :func:`log_volume_proxy`, -1/2 sum log lambda_i over the
  positive top eigenvalues (volume ~ eps^(d/2) / prod sqrt(lambda_i)).
- :func:`sgld_llc`: the local learning coefficient by SGLD on the localised tempered posterior
  exp(-n beta L_n(w) - gamma/2 |w - w*|^2), beta = 1 / log n (Lau et al. 2023).
- :func:`plateau_events`: plateaus of the training loss (flat, with a small gradient) and whether
  the loss then dropped (an escape, as from a saddle), from the replayed per-step table.

The estimators take plain callables on float64 vectors (like the Hessian estimators), so they are
tested on functions with closed-form answers and used on networks through :func:`model_loss`.
"""

from __future__ import annotations

import json
import math
from typing import Callable

import torch
from torch import nn

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
def trainable(model: nn.Module) -> list[torch.Tensor]:
    """The trainable parameters, in landscope.curvature.flat_parameters' order."""
    return [p for p in model.parameters() if p.requires_grad]


def set_flat(params: list[torch.Tensor], w: torch.Tensor) -> None:
    """Copy the flat float64 vector ``w`` into ``params`` (each in its own dtype)."""
    with torch.no_grad():
        for p, chunk in zip(params, torch.split(w, [p.numel() for p in params])):
            p.copy_(chunk.reshape(p.shape).to(device=p.device, dtype=p.dtype))


def model_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
               grad: bool = False) -> Callable:
    """``w -> L(w)`` (or ``w -> (L(w), ∇L(w))`` with ``grad``), the mean loss over (x, y) in
    evaluation mode at flat parameters w. It overwrites the model's parameters: save and restore
    them around its use (see :func:`restoring`)."""
    params = trainable(model)

    def f(w: torch.Tensor):
        set_flat(params, w)
        if not grad:
            with torch.no_grad():
                return float(loss_fn(model, model(x), y).mean())
        with torch.enable_grad():
            loss = loss_fn(model, model(x), y).mean()
            gs = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to("cpu", F64)
                          for g, p in zip(gs, params)])
        return float(loss.detach()), flat

    return f


class restoring:
    """Context manager: the model in eval mode inside, its parameters and train flags restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.saved = [p.detach().clone() for p in trainable(self.model)]
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        with torch.no_grad():
            for p, s in zip(trainable(self.model), self.saved):
                p.copy_(s)
        for m, was in self.modes:
            m.training = was
        return False


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
def sgld_llc(loss_grad: Callable[[torch.Tensor], tuple[float, torch.Tensor]], w_star: torch.Tensor, n: int,
             chains: int, steps: int, step_size: float, gamma: float, seed: int = 0,
             burnin: float = 0.25) -> tuple[float, float, list[float]]:
    """(mean, standard deviation over chains, per-chain estimates) of the local learning coefficient.

    Each chain starts at w* and runs SGLD on the localised tempered posterior (full batch over the
    n samples behind ``loss_grad``):
        w' = w - (eps/2) (n beta grad L_n(w) + gamma (w - w*)) + N(0, eps),   beta = 1 / log n,
    and estimates lambda = n beta (E[L_n(w)] - L_n(w*)) from the losses after the first ``burnin``
    fraction of its steps. A chain that leaves the finite numbers gives NaN. The standard deviation
    has Bessel's correction (NaN for one chain).
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
    estimates = []
    for _ in range(chains):
        w, total, count = w_star.clone(), 0.0, 0
        for s in range(steps):
            loss, g = loss_grad(w)
            if not math.isfinite(loss):
                total = math.nan
                break
            if s >= first:
                total, count = total + loss, count + 1
            noise = torch.randn(w.shape, dtype=F64, generator=gen).to(w.device)
            w = w - 0.5 * step_size * (nbeta * g + gamma * (w - w_star)) + sd * noise
        estimates.append(nbeta * (total / count - l_star) if count and math.isfinite(total) else math.nan)
    vals = torch.tensor(estimates, dtype=F64)
    std = float(vals.std(correction=1)) if chains > 1 else math.nan
    return float(vals.mean()), std, estimates


# ----------------------------------------------------------------------------------- per run
def flatness_row(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, settings: dict,
                 top_eigenvalues: list[float | None]) -> dict:
    """The ``flatness`` table's measured columns at the model's current parameters (x_K).

    ``settings`` is a validated ``curvature:`` section (landscope.curvature.settings_of): the radius
    uses ``flatness_directions`` directions (seed + 2) and is skipped (NaN) when that is 0; the LLC
    uses ``llc_chains`` chains (seed + 3) over the n = len(x) evaluation samples, skipped when 0.
    The model's parameters and train flags are restored before returning.
    """
    import time

    s = settings
    params = trainable(model)
    x0 = torch.cat([p.detach().reshape(-1).to("cpu", F64) for p in params])
    row = {"eps": s["flatness_eps"], "t_max": s["flatness_t_max"], "directions": s["flatness_directions"],
           "llc_chains": s["llc_chains"], "llc_steps": s["llc_steps"], "llc_step_size": s["llc_step_size"],
           "llc_gamma": s["llc_gamma"]}
    row["log_volume_proxy"], row["n_positive_eigs"] = log_volume_proxy(top_eigenvalues)
    t0 = time.perf_counter()
    with restoring(model):
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
        llc = (math.nan, math.nan)
        if s["llc_chains"] > 0:
            llc = sgld_llc(model_loss(model, loss_fn, x, y, grad=True), x0, len(x), s["llc_chains"],
                           s["llc_steps"], s["llc_step_size"], s["llc_gamma"], int(s["seed"]) + 3)[:2]
        row["llc_mean"], row["llc_std"] = llc
    row.update(flatness_wall_s=t1 - t0, llc_wall_s=time.perf_counter() - t1)
    return row


# ----------------------------------------------------------------------------------- plateaus
PLATEAU_KEYS = ("plateau_window", "plateau_min_windows", "plateau_flat_tol", "plateau_grad_tol", "plateau_drop")


def plateau_events(steps: list[int], loss: list[float], grad_norm: list[float], window: int,
                   min_windows: int, flat_tol: float, grad_tol: float, drop: float) -> list[dict]:
    """Plateaus of one run's per-step (mini-batch) loss and gradient norm, and whether each was escaped.

    The steps are cut into consecutive blocks of ``window`` steps (a last block shorter than half a
    window is dropped); each block has its mean loss L_j and mean gradient norm G_j; G_max is the
    largest G_j of the run. Blocks j-1, j are a *flat pair* when |L_j - L_{j-1}| <= flat_tol |L_{j-1}|
    and both G_{j-1}, G_j <= grad_tol G_max. A plateau is a maximal chain of flat pairs covering at
    least ``min_windows`` blocks a..b. It is *escaped* when a block c in b+1 .. b+min_windows has
    L_c <= (1 - drop) * (mean loss of the plateau): the loss was flat with a small gradient, then
    dropped. Plateaus that last to the end of the run (converged, or stuck) have ``at_end`` True.

    One dict per plateau: start_step, end_step (last step of block b), n_windows, plateau_loss,
    plateau_grad_norm (mean G over the plateau), grad_norm_max (G_max), escaped, escape_step (first
    step of block c, or None), loss_after (L_c, or the next block's loss, or None), relative_drop
    (1 - loss_after / plateau_loss, or None), at_end.
    """
    if not len(steps) == len(loss) == len(grad_norm):
        raise ValueError(f"plateau_events: {len(steps)} steps, {len(loss)} losses, {len(grad_norm)} "
                         "gradient norms; need one of each per step")
    if window < 1 or min_windows < 2:
        raise ValueError(f"plateau_events: need window >= 1 and min_windows >= 2, got {window}, {min_windows}")
    if not (flat_tol >= 0 and 0 < grad_tol <= 1 and 0 < drop < 1):
        raise ValueError(f"plateau_events: need flat_tol >= 0, 0 < grad_tol <= 1, 0 < drop < 1; got "
                         f"{flat_tol}, {grad_tol}, {drop}")
    order = sorted(range(len(steps)), key=lambda i: steps[i])
    blocks = []  # (first step, last step, mean loss, mean grad norm)
    for b0 in range(0, len(order), window):
        idx = order[b0:b0 + window]
        if len(idx) * 2 < window:
            break
        vals = [(loss[i], grad_norm[i]) for i in idx if math.isfinite(loss[i]) and math.isfinite(grad_norm[i])]
        if not vals:
            break
        blocks.append((steps[idx[0]], steps[idx[-1]], sum(v[0] for v in vals) / len(vals),
                       sum(v[1] for v in vals) / len(vals)))
    if len(blocks) < min_windows:
        return []
    g_max = max(b[3] for b in blocks)
    small = [b[3] <= grad_tol * g_max for b in blocks]
    flat = [small[j - 1] and small[j] and abs(blocks[j][2] - blocks[j - 1][2]) <= flat_tol * abs(blocks[j - 1][2])
            for j in range(1, len(blocks))]  # flat[j-1]: the pair (j-1, j)
    events, j = [], 0
    while j < len(flat):
        if not flat[j]:
            j += 1
            continue
        k = j
        while k + 1 < len(flat) and flat[k + 1]:
            k += 1
        a, b = j, k + 1  # blocks a..b
        j = k + 1
        if b - a + 1 < min_windows:
            continue
        level = sum(blk[2] for blk in blocks[a:b + 1]) / (b - a + 1)
        after = blocks[b + 1:b + 1 + min_windows]
        hit = next((blk for blk in after if blk[2] <= (1 - drop) * level), None)
        ref = hit or (after[0] if after else None)
        events.append({
            "start_step": blocks[a][0], "end_step": blocks[b][1], "n_windows": b - a + 1,
            "plateau_loss": level, "plateau_grad_norm": sum(blk[3] for blk in blocks[a:b + 1]) / (b - a + 1),
            "grad_norm_max": g_max, "escaped": hit is not None, "escape_step": hit[0] if hit else None,
            "loss_after": ref[2] if ref else None,
            "relative_drop": (1 - ref[2] / level) if ref and level != 0 else None,
            "at_end": b == len(blocks) - 1,
        })
    return events


def plateaus_experiment(results, experiment: str, runs: list[str], settings: dict) -> int:
    """Write the ``plateaus`` table of one experiment from its ``steps`` table; returns the events.

    Per run, :func:`plateau_events` on the replayed per-step mini-batch loss (``batch_loss``) and
    gradient norm (``grad_norm``) with the ``plateau_*`` settings of the ``curvature:`` section
    (landscope.curvature.settings_of). Runs without steps (diverged) have no events.
    """
    from landscope import store
    from landscope.curvature import settings_of

    s = settings_of(settings)
    con = store.connect(results)
    rows = []
    for run in runs:
        data = con.sql("SELECT step, batch_loss, grad_norm FROM steps WHERE experiment = $e AND run = $r "
                       "ORDER BY step", params={"e": experiment, "r": run}).fetchall()
        if not data:
            continue
        steps, loss, grad = (list(c) for c in zip(*data))
        for ev in plateau_events(steps, [math.nan if v is None else v for v in loss],
                                 [math.nan if v is None else v for v in grad], s["plateau_window"],
                                 s["plateau_min_windows"], s["plateau_flat_tol"], s["plateau_grad_tol"],
                                 s["plateau_drop"]):
            rows.append({"run": run, **ev, "window_steps": s["plateau_window"]})
    cols = [c for c in store.SCHEMAS["plateaus"] if c != "experiment"]
    columns = {"experiment": [experiment] * len(rows), **{c: [r[c] for r in rows] for c in cols}}
    meta = {**store.provenance("", "cpu"), "settings": json.dumps({k: s[k] for k in PLATEAU_KEYS})}
    store.write_table(store.part_path(results, "plateaus", experiment), "plateaus", columns, meta)
    return len(rows)
