"""Diffusion along the minimum: does the iterate keep moving once the loss is flat?

The loss-landscape essay's claim: once converged, SGD random-walks across the set of minimisers while the
training loss stays put (and drifts toward flatter regions); the alternative is convergence to a point. The
mean squared displacement of the iterates over a lag tau tells them apart by its growth MSD(tau) ~ tau^alpha:

- alpha ~ 1: diffusion (a random walk; the MSD grows linearly);
- alpha ~ 0: a converged or stationary sequence (the MSD saturates, e.g. at twice the spread of a bounded
  stationary cloud);
- alpha ~ 2: ballistic drift (x_t = x_0 + v t).

:func:`msd` estimates MSD(tau) from checkpoints, :func:`msd_exponent` fits alpha on a log-log scale, and
:func:`diffusion_summary` gathers what a page quotes for one window of checkpoints (e.g. after the loss
plateau): alpha with its standard error, the relative change of the loss and of the gradient norm over the
window, and the drift of any other scalar series measured there (lambda_max, log-volume proxy, ...).

Plain numpy: iterates may be numpy arrays or torch tensors (anything with ``detach``/``cpu``/``numpy``), read
as float64. :func:`diffusion_run` applies them to one run's checkpoints (the ``diffusion`` rule): the window
after the loss plateau (:func:`plateau_start`), drifts whose standard errors allow for autocorrelation
(:func:`ar1_factor`), and the verdicts on the essay's claims.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from landscope import store
from landscope.measures.flatness import log_volume_proxy
from landscope.problem.build import build_problem
from landscope.problem.evaluate import flatten, trainable_parameters
from landscope.settings import section_defaults
from landscope.trajectory.rundir import checkpoint_path, load_checkpoint, manifest_checkpoints, run_manifest


def _as_matrix(iterates) -> np.ndarray:
    """(n, d) float64 array of n flat parameter vectors (a sequence of vectors or an (n, d) array/tensor)."""
    def host(v):
        return v.detach().cpu().numpy() if hasattr(v, "detach") else v

    if hasattr(iterates, "shape"):
        x = np.asarray(host(iterates), dtype=np.float64)
        return x.reshape(x.shape[0], -1)
    rows = [np.asarray(host(v), dtype=np.float64).reshape(-1) for v in iterates]
    if not rows:
        return np.zeros((0, 0))
    if len({r.size for r in rows}) != 1:
        raise ValueError(f"msd: iterates of different sizes {sorted({r.size for r in rows})}")
    return np.stack(rows)


# ----------------------------------------------------------------------------------- MSD
@dataclass(frozen=True)
class MSD:
    """Mean squared displacement per lag: ``msd[k]`` the mean of ||x(s + lags[k]) - x(s)||^2 over the
    ``n_pairs[k]`` checkpoint pairs exactly ``lags[k]`` steps apart (lags ascending, each with >= 1 pair)."""

    lags: np.ndarray
    msd: np.ndarray
    n_pairs: np.ndarray


def default_lags(steps: Sequence[int], max_lags: int = 40) -> np.ndarray:
    """The lags :func:`msd` uses by default: the distinct positive differences between the checkpoint steps;
    when there are more than ``max_lags``, the ones nearest to ``max_lags`` log-spaced points between the
    smallest and the largest (duplicates merged), so short and long lags are both covered.

    The differences are those of checkpoints k positions apart for every k up to 2000 positions; beyond
    2000 checkpoints (a replayed path) only for 8 * ``max_lags`` log-spaced k, so memory stays linear.
    """
    s = np.asarray(steps, dtype=np.int64).reshape(-1)
    n = s.size
    offsets = range(1, n) if n <= 2000 else np.unique(np.geomspace(1, n - 1, 8 * max_lags).astype(np.int64))
    diffs = np.unique(np.concatenate([s[k:] - s[:-k] for k in offsets])) if n > 1 else np.zeros(0, np.int64)
    diffs = diffs[diffs > 0]
    if diffs.size <= max_lags:
        return diffs
    grid = np.geomspace(diffs[0], diffs[-1], max_lags)
    pos = np.clip(np.searchsorted(diffs, grid), 1, diffs.size - 1)
    nearest = np.where(np.abs(diffs[pos - 1] - grid) <= np.abs(diffs[pos] - grid), pos - 1, pos)
    return np.unique(diffs[nearest])


def msd(iterates, steps: Sequence[int], lags: Sequence[int] | None = None) -> MSD:
    """Mean squared displacement of the iterates over lag.

    ``iterates[i]`` is the flat parameter vector at ``steps[i]`` (strictly increasing integers; the spacing
    may be uneven). For each lag L (``lags``, default :func:`default_lags`), every pair of checkpoints whose
    steps differ by exactly L contributes ||x_j - x_i||^2 (computed from the differences, not from a Gram
    matrix, so no cancellation when the iterates sit far from the origin); lags no pair realises are
    dropped. Overlapping pairs are correlated: n_pairs counts pairs, not independent samples. With uneven
    spacing (e.g. log-spaced checkpoints) few pairs share a lag and the estimate is noisy.
    """
    x = _as_matrix(iterates)
    s = np.asarray(steps, dtype=np.int64).reshape(-1)
    if x.shape[0] != s.size or s.size < 2:
        raise ValueError(f"msd: {x.shape[0]} iterates and {s.size} steps; need equal and >= 2")
    if np.any(np.diff(s) <= 0):
        raise ValueError("msd: steps must be strictly increasing")
    grid = default_lags(s) if lags is None else np.unique(np.asarray(lags, dtype=np.int64))
    if np.any(grid <= 0):
        raise ValueError(f"msd: lags must be positive, got {grid.tolist()}")
    out_lags, out_msd, out_n = [], [], []
    for lag in grid:
        target = s + lag
        pos = np.minimum(np.searchsorted(s, target), s.size - 1)
        first = np.flatnonzero(s[pos] == target)
        if first.size == 0:
            continue
        d = x[pos[first]] - x[first]
        out_lags.append(int(lag))
        out_msd.append(float(np.einsum("ij,ij->", d, d) / first.size))
        out_n.append(int(first.size))
    return MSD(np.array(out_lags, dtype=np.int64), np.array(out_msd), np.array(out_n, dtype=np.int64))


# ----------------------------------------------------------------------------------- exponent
@dataclass(frozen=True)
class Exponent:
    """alpha in MSD ~ tau^alpha: the least-squares slope of log MSD on log lag, its standard error ``se`` and
    the number of lags fitted (``n_lags``)."""

    alpha: float
    se: float
    n_lags: int


def msd_exponent(lags, msd_values, lag_min: float | None = None, lag_max: float | None = None) -> Exponent:
    """The exponent alpha of MSD ~ lag^alpha on the lags in [lag_min, lag_max] (default: all).

    Ordinary least squares of log MSD on log lag, each lag weighted equally; lags with a non-positive or
    non-finite MSD are left out. The standard error is the OLS one, sqrt(RSS / (m - 2) / Sxx) over m lags,
    NaN for m = 2 (alpha itself NaN for m < 2). MSDs at different lags share checkpoints, so their errors
    are correlated and this SE is a scale of the scatter about the power law, not a calibrated interval.
    About 1 for diffusion, 0 for a converged or stationary sequence, 2 for ballistic drift.
    """
    t = np.asarray(lags, dtype=np.float64).reshape(-1)
    m = np.asarray(msd_values, dtype=np.float64).reshape(-1)
    if t.shape != m.shape:
        raise ValueError(f"msd_exponent: {t.size} lags and {m.size} MSD values")
    keep = np.isfinite(m) & (m > 0) & (t > 0)
    if lag_min is not None:
        keep &= t >= lag_min
    if lag_max is not None:
        keep &= t <= lag_max
    return Exponent(*_line(np.log(t[keep]), np.log(m[keep])))


def _line(u: np.ndarray, v: np.ndarray) -> tuple[float, float, int]:
    """(least-squares slope of v on u, its OLS standard error, number of points)."""
    n = u.size
    if n < 2 or np.ptp(u) == 0:
        return math.nan, math.nan, n
    du = u - u.mean()
    sxx = float(du @ du)
    slope = float(du @ (v - v.mean()) / sxx)
    if n == 2:
        return slope, math.nan, n
    resid = v - v.mean() - slope * du
    return slope, math.sqrt(float(resid @ resid) / (n - 2) / sxx), n


# ----------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class Drift:
    """A scalar series over the window, fitted by a straight line in the step: ``slope`` (per step) with its
    OLS ``slope_se``, ``mean`` over the window, and ``rel_change`` = slope * (last step - first step) / |mean|
    (the fitted change across the window relative to the level; NaN when the mean is 0) with
    ``rel_change_se``; ``n`` the finite points used."""

    slope: float
    slope_se: float
    mean: float
    rel_change: float
    rel_change_se: float
    n: int


def drift(steps: Sequence[int], values: Sequence[float]) -> Drift:
    """:class:`Drift` of ``values`` (one per step; non-finite ones left out) over the span of ``steps``."""
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if s.shape != v.shape:
        raise ValueError(f"drift: {s.size} steps and {v.size} values")
    keep = np.isfinite(v)
    slope, se, n = _line(s[keep], v[keep])
    mean = float(v[keep].mean()) if n else math.nan
    span = float(s[keep].max() - s[keep].min()) if n else math.nan
    scale = span / abs(mean) if mean else math.nan
    return Drift(slope, se, mean, slope * scale, se * scale, n)


@dataclass(frozen=True)
class DiffusionSummary:
    """What a page quotes for one window of checkpoints: the window (``start_step``, ``end_step``,
    ``n_checkpoints``), the MSD exponent (``exponent``: alpha, se, n_lags over the fitted lags), the MSD
    itself, the :class:`Drift` of the loss and of the gradient norm, and of each named scalar series in
    ``series`` (lambda_max, log-volume proxy, ...)."""

    start_step: int
    end_step: int
    n_checkpoints: int
    exponent: Exponent
    msd: MSD
    loss: Drift
    grad_norm: Drift
    series: dict[str, Drift]

    def row(self) -> dict:
        """The summary as one flat table row: window, exponent, exponent_se, n_lags, then for loss,
        grad_norm and each series ``<name>_slope``, ``_slope_se``, ``_rel_change``, ``_rel_change_se``."""
        out = {"start_step": self.start_step, "end_step": self.end_step, "n_checkpoints": self.n_checkpoints,
               "exponent": self.exponent.alpha, "exponent_se": self.exponent.se, "n_lags": self.exponent.n_lags}
        for name, d in {"loss": self.loss, "grad_norm": self.grad_norm, **self.series}.items():
            out.update({f"{name}_slope": d.slope, f"{name}_slope_se": d.slope_se,
                        f"{name}_rel_change": d.rel_change, f"{name}_rel_change_se": d.rel_change_se})
        return out


def diffusion_summary(steps: Sequence[int], iterates, loss: Sequence[float], grad_norm: Sequence[float],
                      series: Mapping[str, Sequence[float]] | None = None, start_step: int | None = None,
                      end_step: int | None = None, lag_fraction: float = 0.5,
                      lags: Sequence[int] | None = None) -> DiffusionSummary:
    """Diffusion diagnostics of the checkpoints with start_step <= step <= end_step (default: all).

    ``iterates``, ``loss``, ``grad_norm`` and each of ``series`` hold one value per entry of ``steps``
    (NaN where a series was not measured at that checkpoint; the caller aligns them, e.g. by joining on the
    step). The MSD is taken over ``lags`` (default :func:`default_lags` of the window) and the exponent is
    fitted on the lags up to ``lag_fraction`` of the window's span: longer lags rest on few pairs. Loss,
    gradient norm and the series get a straight-line :class:`Drift` over the window: a flat loss with a
    diffusive exponent (alpha near 1) is the essay's random walk along the minimum; a drift in lambda_max
    or the log-volume proxy while the loss is flat is its drift toward flatter regions.
    """
    if series and {"loss", "grad_norm"} & set(series):
        raise ValueError("diffusion_summary: 'loss' and 'grad_norm' are arguments of their own, not series")
    s = np.asarray(steps, dtype=np.int64).reshape(-1)
    x = _as_matrix(iterates)
    named = {"loss": loss, "grad_norm": grad_norm, **(series or {})}
    vals = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in named.items()}
    bad = {k: v.size for k, v in vals.items() if v.size != s.size}
    if x.shape[0] != s.size or bad:
        raise ValueError(f"diffusion_summary: {s.size} steps, {x.shape[0]} iterates, series sizes {bad}; "
                         "need one value per step")
    if not 0 < lag_fraction <= 1:
        raise ValueError(f"diffusion_summary: need 0 < lag_fraction <= 1, got {lag_fraction}")
    lo = s.min() if start_step is None else start_step
    hi = s.max() if end_step is None else end_step
    w = (s >= lo) & (s <= hi)
    if w.sum() < 3:
        raise ValueError(f"diffusion_summary: {int(w.sum())} checkpoints in steps [{lo}, {hi}]; need >= 3")
    sw = s[w]
    table = msd(x[w], sw, lags)
    exponent = msd_exponent(table.lags, table.msd, lag_max=lag_fraction * float(sw[-1] - sw[0]))
    drifts = {k: drift(sw, v[w]) for k, v in vals.items()}
    return DiffusionSummary(int(sw[0]), int(sw[-1]), int(sw.size), exponent, table, drifts.pop("loss"),
                            drifts.pop("grad_norm"), drifts)


# ----------------------------------------------------------------------------------- a run's window
DIFFUSION_DEFAULTS = section_defaults("diffusion")

# alpha below each bound (and at or above the previous one) names the motion; 0.75..1.25 counts as diffusion
MOTIONS = ((0.25, "converged"), (0.75, "subdiffusive"), (1.25, "diffusive"), (1.75, "superdiffusive"),
           (math.inf, "ballistic"))
SIGNIFICANCE_Z = 2.0  # a drift is significant when |rel_change| >= 2 of its (autocorrelation-widened) SEs
MEMORY_CAP_BYTES = 1 << 30  # the parameters of the window's checkpoints in memory: a longer window is thinned
FLATTER = {"lambda_max": -1, "trace": -1, "log_volume": +1}  # the sign of a drift toward flatter regions


def diffusion_settings(raw: Mapping | None) -> dict:
    """The experiment's ``diffusion:`` section over DIFFUSION_DEFAULTS (the schema's); unknown keys are named."""
    unknown = sorted(set(raw or {}) - set(DIFFUSION_DEFAULTS))
    if unknown:
        raise ValueError(f"diffusion: unknown setting(s) {unknown}; known: {sorted(DIFFUSION_DEFAULTS)}")
    return {**DIFFUSION_DEFAULTS, **(raw or {})}


def running_median(values: Sequence[float], width: int) -> np.ndarray:
    """The median of each value and its neighbours, ``width // 2`` on each side (fewer at the ends); NaN where
    that stretch holds a non-finite value."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    h = max(0, int(width) // 2)
    out = np.empty_like(v)
    for i in range(v.size):
        w = v[max(0, i - h):i + h + 1]
        out[i] = np.median(w) if np.all(np.isfinite(w)) else math.nan
    return out


def plateau_start(steps: Sequence[int], loss: Sequence[float], tol: float, tail_fraction: float = 0.1,
                  median: int = 1) -> int | None:
    """The first step from which the loss stays on its plateau, or None when it never settles.

    f_end is the median loss over the last ``tail_fraction`` of the checkpoints (at least one; its finite
    values) and f_first the first finite loss; with g the loss's :func:`running_median` over ``median``
    checkpoints (1: the loss itself), the plateau starts at the first checkpoint j with
    g_i - f_end <= tol (f_first - f_end) and g_i finite for every i >= j, i.e. once the loss has done all
    but ``tol`` of its total decrease and never goes back above that (an excursion shorter than half the
    median's width does not count). A loss that did not decrease (f_first <= f_end) is on its plateau from
    the first checkpoint. None: no finite loss at the end, or the last checkpoint is above the band
    (possible only for tol < 1/2 with a noisy tail).
    """
    s = np.asarray(steps, dtype=np.int64).reshape(-1)
    f = np.asarray(loss, dtype=np.float64).reshape(-1)
    if s.size != f.size:
        raise ValueError(f"plateau_start: {s.size} steps and {f.size} losses")
    tail = f[-max(1, math.ceil(tail_fraction * f.size)):] if f.size else f
    tail = tail[np.isfinite(tail)]
    if tail.size == 0:
        return None
    f_end = float(np.median(tail))
    drop = float(f[np.isfinite(f)][0]) - f_end
    if not drop > 0:
        return int(s[0])
    g = running_median(f, median)
    bad = np.flatnonzero(~(np.isfinite(g) & (g - f_end <= tol * drop)))
    k = int(bad[-1]) + 1 if bad.size else 0
    return int(s[k]) if k < s.size else None


def ar1_factor(steps: Sequence[int], values: Sequence[float]) -> float:
    """sqrt((1 + r) / (1 - r)) for r the lag-1 autocorrelation of the residuals about the straight line (r
    clipped to [0, 0.95]; 1 with fewer than 4 finite points or an exact line): the factor by which positively correlated
    residuals (AR(1)) widen the standard error of a fitted trend, which the OLS SE of :func:`drift` assumes
    independent. Checkpoint series are smooth, so without it a drift looks significant far too often."""
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.isfinite(v)
    s, v = s[keep], v[keep]
    if s.size < 4 or np.ptp(s) == 0:
        return 1.0
    resid = v - np.polyval(np.polyfit(s, v, 1), s)
    denom = float(resid @ resid)
    if denom <= 1e-24 * float(((v - v.mean()) ** 2).sum()):  # an exact line: the residuals are rounding
        return 1.0
    r = min(max(float(resid[1:] @ resid[:-1]) / denom, 0.0), 0.95)
    return math.sqrt((1 + r) / (1 - r))


def trend_label(rel_change: float, rel_change_se: float, n: int) -> str:
    """'increased' / 'decreased' when |rel_change| >= SIGNIFICANCE_Z standard errors (an exact line with SE 0
    and a change counts), 'no significant drift' otherwise, 'not measured' without enough points."""
    if n < 3 or not math.isfinite(rel_change):
        return "not measured"
    if abs(rel_change) >= SIGNIFICANCE_Z * rel_change_se and rel_change != 0:
        return "increased" if rel_change > 0 else "decreased"
    return "no significant drift"


def motion_label(alpha: float) -> str:
    """The motion an MSD exponent names (MOTIONS), 'no exponent' for NaN."""
    if not math.isfinite(alpha):
        return "no exponent"
    return next(name for bound, name in MOTIONS if alpha < bound)


def claims(motion: str, loss_flat: bool, trends: Mapping[str, str]) -> tuple[str, str]:
    """(diffusion claim, flattening claim) of one run.

    Diffusion (the essay: once converged, SGD random-walks along the minimum while the loss stays put):
    'held' when the loss is flat and the motion diffusive, 'not held: <motion>' when the loss is flat and the
    motion is another, 'not tested: the loss was not flat'. Flattening (it drifts toward flatter regions): with
    a flat loss, 'held' when lambda_max or the trace decreased or the log-volume proxy increased significantly
    and nothing drifted the other way, 'contradicted' for the reverse, 'mixed' for both, 'no significant drift';
    'not tested' without curvature or a flat loss."""
    if not loss_flat:
        return "not tested: the loss was not flat", "not tested: the loss was not flat"
    diffusion = "held" if motion == "diffusive" else f"not held: {motion}"
    measured = {k: trends.get(k, "not measured") for k in FLATTER}
    if all(v == "not measured" for v in measured.values()):
        return diffusion, "not tested: no curvature"
    toward = {k for k, v in measured.items() if v == ("decreased" if FLATTER[k] < 0 else "increased")}
    away = {k for k, v in measured.items() if v == ("increased" if FLATTER[k] < 0 else "decreased")}
    flattening = ("mixed" if toward and away else "held" if toward else "contradicted" if away
                  else "no significant drift")
    return diffusion, flattening


# ----------------------------------------------------------------------------------- a run
def _read_part(path: Path, columns: list[str]) -> dict[str, list]:
    return pq.read_table(path, columns=columns).to_pydict()


def _by_step(steps: np.ndarray, rows: dict, column: str) -> np.ndarray:
    """``rows[column]`` aligned on ``steps`` (NaN where a step has no row or the value is null)."""
    at = {s: (math.nan if v is None else float(v)) for s, v in zip(rows["step"], rows[column])}
    return np.array([at.get(int(s), math.nan) for s in steps], dtype=np.float64)


def run_series(steps: np.ndarray, snapshots: dict, curvature: dict | None) -> dict[str, np.ndarray]:
    """Every DIFFUSION_SERIES aligned on ``steps``: loss, gradient norm and parameter norm (full batch) and the
    test loss from the snapshot rows; lambda_max, trace and the log-volume proxy (-1/2 sum log of the positive
    top eigenvalues, landscope.measures.flatness.log_volume_proxy) from the curvature rows (NaN without)."""
    out = {"loss": _by_step(steps, snapshots, "full_loss"), "grad_norm": _by_step(steps, snapshots, "full_grad_norm"),
           "param_norm": _by_step(steps, snapshots, "param_norm"), "test_loss": _by_step(steps, snapshots, "test_loss")}
    nan = np.full(steps.size, math.nan)
    if not curvature:
        return {**out, "lambda_max": nan, "trace": nan, "log_volume": nan.copy()}
    tops = [_by_step(steps, curvature, c) for c in ("lambda_max", "lambda_2", "lambda_3")]
    logv = np.array([log_volume_proxy([t[i] for t in tops if math.isfinite(t[i])])[0] for i in range(steps.size)])
    return {**out, "lambda_max": tops[0], "trace": _by_step(steps, curvature, "trace"), "log_volume": logv}


def _empty_row(spec, steps_total: int, plateau, n_params: int, note: str) -> dict:
    row = {c: None for c in store.SCHEMAS["diffusion"]}
    row.update(experiment=spec.experiment, run=spec.run, steps=steps_total, plateau_step=plateau, n_params=n_params,
               motion="no exponent", diffusion_claim="not tested: " + note, flattening_claim="not tested: " + note,
               note=note, **{f"{s}_trend": "not measured" for s in store.DIFFUSION_SERIES})
    return row


def diffusion_run(spec, ckpt_dir, results, settings: Mapping | None, curvature_part=None) -> dict:
    """Diffusion along the minimum for one run; writes its ``diffusion`` row and ``diffusion_msd`` rows.

    The window: the checkpoints from max(:func:`plateau_start` of the full loss with ``plateau_tol``,
    ``tail_fraction`` and ``plateau_median``, ``start_fraction`` * steps) to the last; longer than
    ``max_checkpoints`` (or than MEMORY_CAP_BYTES of float64 parameters) it keeps every k-th (``thin_stride``).
    Each kept checkpoint of the training folder ``ckpt_dir`` is loaded into the run's model and flattened (its
    trainable parameters, float64); :func:`diffusion_summary` gives the MSD, its exponent on lags up to
    ``lag_fraction`` of the span (``lag_max``; ``exponent_long`` on lag_max / 4 .. lag_max: whether the MSD
    still grows at the longest lags, where a jitter floor at short lags no longer flattens it), and the drift
    of every series of :func:`run_series` (the run's snapshots part in ``results``, and its curvature part
    ``curvature_part`` when given). Each drift's standard errors are widened by :func:`ar1_factor`; a trend is
    significant at SIGNIFICANCE_Z of them. The motion (:func:`motion_label`) is that of ``exponent_long`` (the
    long-time motion the essay speaks of; ``exponent`` where it has too few lags). The loss is flat when its
    |rel_change| <= ``flat_tol``. Fewer than
    ``min_checkpoints`` in the window: a row with NULL numbers and the reason in ``note``. Returns
    {'checkpoints', 'exponent', 'exponent_long', 'motion', 'wall_s'}.
    """
    t0 = time.perf_counter()
    s = diffusion_settings(settings)
    ckpt_dir = Path(ckpt_dir)
    key = spec.training_key()
    all_steps = np.array(manifest_checkpoints(run_manifest(spec, ckpt_dir, "diffusion")), dtype=np.int64)
    snaps = _read_part(store.part_path(results, "snapshots", spec.experiment, spec.run),
                       ["step", "full_loss", "full_grad_norm", "param_norm", "test_loss"])
    curv = (_read_part(Path(curvature_part), ["step", "lambda_max", "lambda_2", "lambda_3", "trace"])
            if curvature_part else None)
    series = run_series(all_steps, snaps, curv)
    problem = build_problem(replace(spec, device="cpu"))  # the model to load states into; no accelerator needed
    params = trainable_parameters(problem.model)
    n_params = sum(p.numel() for p in params)
    plateau = plateau_start(all_steps, series["loss"], s["plateau_tol"], s["tail_fraction"], s["plateau_median"])
    start = None if plateau is None else max(plateau, math.ceil(s["start_fraction"] * spec.steps))
    window = np.flatnonzero(all_steps >= start) if start is not None else np.zeros(0, np.int64)
    msd_rows: list[dict] = []
    if plateau is None:
        row = _empty_row(spec, spec.steps, None, n_params, "the loss never settled on a plateau")
    elif window.size < s["min_checkpoints"]:
        row = _empty_row(spec, spec.steps, plateau, n_params, f"{window.size} checkpoints after the plateau "
                         f"(step {start}); need {s['min_checkpoints']}")
    else:
        stride = max(1, math.ceil(window.size / s["max_checkpoints"]),
                     math.ceil(window.size * n_params * 8 / MEMORY_CAP_BYTES))
        kept = window[::stride]
        x = np.empty((kept.size, n_params), dtype=np.float64)
        for i, step in enumerate(all_steps[kept]):
            problem.model.load_state_dict(load_checkpoint(checkpoint_path(ckpt_dir, int(step)), key)["model"])
            x[i] = flatten(trainable_parameters(problem.model)).numpy()
        sw = all_steps[kept]
        named = {k: v[kept] for k, v in series.items()}
        summary = diffusion_summary(sw, x, named.pop("loss"), named.pop("grad_norm"), named,
                                    lag_fraction=s["lag_fraction"])
        drifts = {"loss": summary.loss, "grad_norm": summary.grad_norm, **summary.series}
        row = {"experiment": spec.experiment, "run": spec.run, "steps": spec.steps, "plateau_step": plateau,
               "start_step": summary.start_step, "end_step": summary.end_step,
               "n_checkpoints": summary.n_checkpoints, "thin_stride": stride, "n_params": n_params,
               "exponent": summary.exponent.alpha, "exponent_se": summary.exponent.se,
               "n_lags": summary.exponent.n_lags, "lag_max": s["lag_fraction"] * float(sw[-1] - sw[0]),
               "displacement": float(np.linalg.norm(x[-1] - x[0])), "note": ""}
        long = msd_exponent(summary.msd.lags, summary.msd.msd, lag_min=row["lag_max"] / 4, lag_max=row["lag_max"])
        row.update(exponent_long=long.alpha, exponent_long_se=long.se, n_lags_long=long.n_lags)
        for name, d in drifts.items():
            f = ar1_factor(sw, (series[name])[kept])
            trend = trend_label(d.rel_change, d.rel_change_se * f, d.n)
            row.update({f"{name}_mean": d.mean, f"{name}_slope": d.slope, f"{name}_slope_se": d.slope_se * f,
                        f"{name}_rel_change": d.rel_change, f"{name}_rel_change_se": d.rel_change_se * f,
                        f"{name}_trend": trend})
        flat = math.isfinite(summary.loss.rel_change) and abs(summary.loss.rel_change) <= s["flat_tol"]
        row["loss_trend"] = "flat" if flat else row["loss_trend"].replace("no significant drift", "not flat")
        row["motion"] = motion_label(long.alpha if math.isfinite(long.alpha) else summary.exponent.alpha)
        row["diffusion_claim"], row["flattening_claim"] = claims(
            row["motion"], flat, {k: row[f"{k}_trend"] for k in FLATTER})
        msd_rows = msd_table(summary.msd, summary.exponent, row["lag_max"])
    meta = {**store.provenance(spec.config_hash(), "cpu"), "settings": json.dumps(s, sort_keys=True)}
    cols = store.SCHEMAS["diffusion"]
    store.write_table(store.part_path(results, "diffusion", spec.experiment, spec.run), "diffusion",
                      {c: [_plain(row.get(c))] for c in cols}, meta)
    store.write_table(store.part_path(results, "diffusion_msd", spec.experiment, spec.run), "diffusion_msd", {
        "experiment": [spec.experiment] * len(msd_rows), "run": [spec.run] * len(msd_rows),
        **{c: [r[c] for r in msd_rows] for c in store.SCHEMAS["diffusion_msd"] if c not in ("experiment", "run")}},
        meta)
    return {"checkpoints": row["n_checkpoints"] or 0, "exponent": row["exponent"],
            "exponent_long": row["exponent_long"], "motion": row["motion"], "wall_s": time.perf_counter() - t0}


def msd_table(table: MSD, exponent: Exponent, lag_max: float) -> list[dict]:
    """The MSD rows of a run: lag, msd, n_pairs, in_fit (a lag the exponent was fitted on: 0 < lag <= lag_max,
    MSD > 0) and msd_fit, the fitted power law c lag^alpha through those lags' geometric mean (NaN elsewhere)."""
    fit = (table.lags <= lag_max) & (table.msd > 0) & np.isfinite(table.msd)
    c = math.nan
    if fit.any() and math.isfinite(exponent.alpha):
        c = float(np.mean(np.log(table.msd[fit]) - exponent.alpha * np.log(table.lags[fit])))
    return [{"lag": int(lag), "msd": float(m), "n_pairs": int(n), "in_fit": bool(f),
             "msd_fit": math.exp(c + exponent.alpha * math.log(lag)) if f and math.isfinite(c) else math.nan}
            for lag, m, n, f in zip(table.lags, table.msd, table.n_pairs, fit)]


def _plain(v):
    """A table cell: numpy scalars as Python numbers, NaN kept (DuckDB reads it as NaN, not NULL)."""
    return v.item() if isinstance(v, np.generic) else v
