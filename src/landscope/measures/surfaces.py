"""Loss surfaces around x_K: 1-D interpolation curves and 2-D planes with the trajectory on them.

Three tables per run (rule ``surfaces``, :func:`surfaces_run`):

- ``surface_1d``: the loss (and accuracy) on the line x(t) = x_a + t (x_K - x_a) for t on a grid
  over [-span_1d, 1 + span_1d] that always holds t = 0 and t = 1, from x_a = x_0 and from a few
  later iterates x_k (Goodfellow et al. 2015's linear interpolation; ``start_step`` names x_a).
- ``surface_2d``: the loss on a grid x_K + a d1 + b d2 in two planes through x_K (Li et al. 2018):
  ``random``, two Gaussian directions filter-normalised to x_K (each filter of a direction, i.e. a
  slice along the first axis of a weight with >= 2 axes, gets the norm of the same filter of x_K; a
  1-D parameter (bias, norm scale) is one filter: the convention of landscope.measures.flatness, whose
  :func:`~landscope.measures.flatness.filter_normalized_direction` draws them), with a, b in
  [-span_2d, span_2d]; and ``pca``, the top-2 principal directions of the iterates' offsets
  x_k - x_K (orthonormal), with a, b covering the path's coordinates widened by ``pca_margin``.
- ``surface_path``: per plane, the iterates' coordinates (a, b) on it, their own loss, the loss at
  their projection x_K + a d1 + b d2, their distance off the plane and the fraction of the path's
  squared offsets the plane captures. The drawn path is this projection.

The PCA is uncentred: the SVD of the matrix of offsets x_k - x_K. Of all planes through x_K (the
surface is centred on x_K) its span minimises the squared distances of the iterates to the plane, so
``captured_fraction`` = (s1^2 + s2^2) / sum s_i^2 = 1 - sum off_plane^2 / sum ||x_k - x_K||^2 is
exactly how much of the drawn path the picture shows (Li et al. centre the offsets first, as
scikit-learn's PCA does; on a path that starts far from x_K the two planes nearly agree). Coordinates
on either plane are least-squares solutions in the plane's basis (exact dot products for PCA).

Iterates: the checkpoints, plus with ``path_points`` > 0 (``auto``: 20 when the run has fewer than 8
checkpoints, else 0) every iterate on an evenly spaced grid of ``path_points`` steps. The surfaces
job replays nothing: the evaluate job of each segment, which replays it anyway (the training step
itself, bitwise on CPU, checked against the next checkpoint: ``drift_tolerance``), keeps the
iterates inside it in the run folder (landscope.trajectory.rundir.load_path_states reads them).
With 0 only the saved checkpoints are used.

Losses are means over a fixed random subset of the training set (``eval_samples``, seed ``seed``),
in evaluation mode without gradients, as the full-batch measurements are (dropout off, BatchNorm on
running statistics; landscope.problem.evaluate.loss_and_accuracy, with its accuracy rule). Only
trainable parameters move; running statistics (buffers) are x_K's on the planes. On a 1-D line
floating buffers are interpolated like the parameters for t in [0, 1] and held at the end values
outside it (extrapolated variances could turn negative), so t = 0 and t = 1 give exactly the losses
at x_a and x_K.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from landscope import store
from landscope.measures.curvature import eval_subset
from landscope.measures.flatness import filter_normalized_direction
from landscope.problem.build import build_problem
from landscope.problem.evaluate import flatten, loss_and_accuracy, trainable_parameters, write_flat
from landscope.settings import path_steps, surfaces_settings
from landscope.trajectory.rundir import load_minimizer, load_path_states, manifest_checkpoints, run_manifest

F64 = torch.float64


# ----------------------------------------------------------------------------------- settings


def t_grid(points: int, span: float) -> list[float]:
    """``points`` values evenly spaced over [-span, 1 + span], with 0 and 1 added when missing."""
    ts = torch.linspace(-span, 1 + span, points, dtype=F64).tolist()
    for exact in (0.0, 1.0):
        if min(abs(t - exact) for t in ts) > 1e-12:
            ts.append(exact)
        else:  # snap the nearest value, so that t = 0 and t = 1 are exact
            ts[min(range(len(ts)), key=lambda i: abs(ts[i] - exact))] = exact
    return sorted(ts)


def axis_grid(lo: float, hi: float, points: int) -> list[float]:
    return torch.linspace(lo, hi, points, dtype=F64).tolist()


# ----------------------------------------------------------------------------------- geometry
def line_losses(loss: Callable[[float], float], ts: list[float]) -> list[float]:
    """``loss(t)`` at every t (the callable puts the model at x_a + t (x_K - x_a))."""
    return [loss(t) for t in ts]


def plane_losses(loss: Callable[[torch.Tensor], float], center: torch.Tensor, d1: torch.Tensor,
                 d2: torch.Tensor, a_values: list[float], b_values: list[float]) -> list[dict]:
    """[{a, b, loss}] of ``loss(center + a d1 + b d2)`` over the product grid, a-major."""
    return [{"a": a, "b": b, "loss": loss(center + a * d1 + b * d2)} for a in a_values for b in b_values]


@dataclass
class Plane:
    """A plane through x_K: its directions, and the path's coordinates on it."""
    name: str
    d1: torch.Tensor
    d2: torch.Tensor
    coords: torch.Tensor  # (m, 2): least-squares coordinates of the offsets
    off_plane: torch.Tensor  # (m,): distance of each iterate to the plane
    captured_fraction: float  # 1 - sum off_plane^2 / sum ||offset||^2 (NaN when all offsets are 0)


def plane_coordinates(offsets: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coordinates (m, 2), distance to the plane (m,)) of the rows of ``offsets`` (m, n) in the
    basis (d1, d2): the least-squares solution, exact for any two independent directions."""
    basis = torch.stack([d1.to(F64), d2.to(F64)])  # (2, n)
    gram = basis @ basis.T
    if torch.linalg.matrix_rank(gram) < 2:
        raise ValueError("plane: the two directions are linearly dependent (or zero); no plane to project on")
    offsets = offsets.to(F64)
    coords = torch.linalg.solve(gram, basis @ offsets.T).T
    resid = offsets - coords @ basis
    return coords, torch.linalg.vector_norm(resid, dim=1)


def _captured(offsets: torch.Tensor, off_plane: torch.Tensor) -> float:
    total = float((offsets.to(F64) ** 2).sum())
    return 1.0 - float((off_plane ** 2).sum()) / total if total > 0 else math.nan


def make_plane(name: str, offsets: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> Plane:
    coords, off = plane_coordinates(offsets, d1, d2)
    return Plane(name, d1.to(F64), d2.to(F64), coords, off, _captured(offsets, off))


def pca_plane(offsets: torch.Tensor) -> Plane:
    """The plane through x_K spanned by the top-2 right singular vectors of the offsets (m, n)
    (uncentred PCA): orthonormal d1, d2, signed so that the first iterate (x_0) has coordinates <= 0."""
    offsets = offsets.to(F64)
    m, n = offsets.shape
    if n < 2:
        raise ValueError(f"pca plane: the model has {n} parameter(s); a plane needs at least 2")
    if m < 2 or float(torch.linalg.vector_norm(offsets)) == 0.0:
        raise ValueError(f"pca plane: {m} iterate(s) with nonzero offsets from x_K; need at least 2 "
                         "(more path_points, or a smaller snapshot_every)")
    _, _, vh = torch.linalg.svd(offsets, full_matrices=False)  # (min(m, n), n): m >= 2 rows
    d1, d2 = vh[0].clone(), vh[1].clone()
    for d in (d1, d2):
        if float(offsets[0] @ d) > 0:
            d.neg_()
    return make_plane("pca", offsets, d1, d2)


def pca_ranges(coords: torch.Tensor, margin: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """((a_lo, a_hi), (b_lo, b_hi)) covering the path's coordinates and x_K (0, 0), each widened by
    ``margin`` times its width on both sides; an axis narrower than 5 % of the other gets that width
    (centred on its range), so a path along a line still gets a readable plane."""
    lo = torch.minimum(coords.min(0).values, torch.zeros(2, dtype=F64))
    hi = torch.maximum(coords.max(0).values, torch.zeros(2, dtype=F64))
    width = hi - lo
    wmax = float(width.max())
    if wmax == 0:
        raise ValueError("pca plane: every iterate projects onto x_K; nothing to draw")
    out = []
    for i in range(2):
        w, mid = max(float(width[i]), 0.05 * wmax), float(lo[i] + hi[i]) / 2
        out.append((mid - (0.5 + margin) * w, mid + (0.5 + margin) * w))
    return out[0], out[1]


# ----------------------------------------------------------------------------------- model glue
class SurfaceModel:
    """Puts a model at points of parameter space (trainable parameters as flat float64 vectors on the
    host, landscope.problem.evaluate's coordinates, and the floating buffers separately) and evaluates it."""

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, chunk: int):
        self.model, self.loss_fn, self.x, self.y, self.chunk = model, loss_fn, x, y, chunk
        self.params = trainable_parameters(model)
        self.n_evals = 0

    def flat(self) -> torch.Tensor:
        """The model's trainable parameters as one float64 vector on the host."""
        return flatten(self.params, "cpu")

    def buffers(self) -> dict[str, torch.Tensor]:
        return {k: b.detach().clone() for k, b in self.model.named_buffers() if b.is_floating_point()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def set_params(self, w: torch.Tensor) -> None:
        write_flat(self.params, w)

    def set_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        named = dict(self.model.named_buffers())
        with torch.no_grad():
            for k, v in buffers.items():
                named[k].copy_(v)

    def evaluate(self) -> tuple[float, float]:
        """(loss, accuracy or NaN) over the subset at the model's current point."""
        self.n_evals += 1
        return loss_and_accuracy(self.model, self.loss_fn, self.x, self.y, self.chunk)

    def loss_at(self, w: torch.Tensor) -> float:
        """Loss at trainable parameters ``w``, the buffers as they are."""
        self.set_params(w)
        return self.evaluate()[0]

    def line(self, w_a: torch.Tensor, buf_a: dict, w_b: torch.Tensor, buf_b: dict,
             ts: list[float]) -> list[tuple[float, float]]:
        """(loss, accuracy) at w_a + t (w_b - w_a) for every t; floating buffers interpolated at
        min(max(t, 0), 1)."""
        out, d = [], w_b - w_a
        for t in ts:
            c = min(max(t, 0.0), 1.0)
            self.set_buffers({k: buf_a[k] + c * (buf_b[k] - buf_a[k]) for k in buf_b})
            self.set_params(w_a + t * d)
            out.append(self.evaluate())
        return out


def random_plane(surface: SurfaceModel, w_k: torch.Tensor, seed: int, offsets: torch.Tensor) -> Plane:
    """Two filter-normalised Gaussian directions at x_K (landscope.measures.flatness's draw, generator
    seeded with ``seed``) and the path's coordinates on their plane."""
    surface.set_params(w_k)
    gen = torch.Generator().manual_seed(int(seed))
    d1 = filter_normalized_direction(surface.params, gen)
    d2 = filter_normalized_direction(surface.params, gen)
    if float(torch.linalg.vector_norm(d1)) == 0.0:
        raise ValueError("random plane: every filter of x_K is zero, so filter-normalised directions are "
                         "zero; use surfaces.planes: [pca]")
    return make_plane("random", offsets, d1, d2)


# ----------------------------------------------------------------------------------- iterates
def start_steps(steps: list[int], distances: list[float], count: int) -> list[int]:
    """``count`` starting iterates for the x_k -> x_K lines: of the path's iterates that differ
    from x_K, the first (x_0) and those at the fractions 1/count, 2/count, ... of the list
    (deduplicated), so the last line does not start next to x_K."""
    cands = [s for s, d in zip(steps, distances) if d > 0]
    idx = sorted({i * len(cands) // count for i in range(count)}) if count else []
    return [cands[i] for i in idx if i < len(cands)]


# ----------------------------------------------------------------------------------- per run
def surfaces_run(spec, ckpt_dir, minimizer_path, results, settings: dict) -> dict:
    """Measure one run's surfaces; write its ``surface_1d``, ``surface_2d`` and ``surface_path`` parts.

    Returns {'evals': forward passes over the subset, 'wall_s', 'iterates_s' (building the problem,
    reading x_K and the path), 'path': iterates, 'max_drift' (of the evaluate replays that kept
    them), 'captured': {plane: fraction}}.
    """

    s = surfaces_settings(settings)
    t0 = time.perf_counter()
    ckpt_dir = Path(ckpt_dir)
    manifest = run_manifest(spec, ckpt_dir, "surfaces")
    chash = spec.config_hash()
    problem = build_problem(spec)  # no step is taken: a recorded run needs no recording here
    minimizer = load_minimizer(minimizer_path, problem.device)
    steps = path_steps(manifest_checkpoints(manifest), s["path_points"])  # fewer checkpoints: diverged
    # checkpoints, and the iterates between them that the evaluate jobs kept (with their replay's drift)
    states, drift = load_path_states(spec, ckpt_dir, Path(minimizer_path).parent, steps, problem.device)
    t_iterates = time.perf_counter() - t0

    idx = eval_subset(len(problem.data), s["eval_samples"], s["seed"]).to(problem.device)
    surface = SurfaceModel(problem.model, problem.loss_fn, problem.data.x[idx], problem.data.y[idx],
                           spec.eval_batch_size)
    surface.load(minimizer["model"])
    w_k, buf_k = surface.flat(), surface.buffers()
    loss_k = surface.evaluate()[0]
    if not math.isfinite(loss_k):
        raise ValueError(f"surfaces {spec.experiment}/{spec.run}: the loss at x_K is {loss_k}; surfaces "
                         "around x_K need a finite loss")
    flats, bufs, own = [], [], []
    for step in steps:
        surface.load(states[step])
        flats.append(surface.flat())
        bufs.append(surface.buffers())
        own.append(surface.evaluate()[0])
    offsets = torch.stack(flats) - w_k
    dists = torch.linalg.vector_norm(offsets, dim=1).tolist()
    base = {"experiment": spec.experiment, "run": spec.run, "seed": spec.seed}

    rows_1d, ts = [], t_grid(s["points_1d"], s["span_1d"])
    for start in start_steps(steps, dists, s["starts_1d"]):
        i = steps.index(start)
        for t, (loss, acc) in zip(ts, surface.line(flats[i], bufs[i], w_k, buf_k, ts)):
            rows_1d.append({**base, "start_step": start, "end_step": minimizer["step"], "t": t, "loss": loss,
                            "accuracy": acc, "distance": dists[i], "eval_samples": len(idx)})

    surface.set_buffers(buf_k)
    rows_2d, rows_path, captured = [], [], {}
    for name in s["planes"]:
        if name == "random":
            plane = random_plane(surface, w_k, s["seed"], offsets)
            a_rng = b_rng = (-s["span_2d"], s["span_2d"])
        else:
            plane = pca_plane(offsets)
            a_rng, b_rng = pca_ranges(plane.coords, s["pca_margin"])
        captured[name] = plane.captured_fraction
        grid = plane_losses(surface.loss_at, w_k, plane.d1, plane.d2, axis_grid(*a_rng, s["grid"]),
                            axis_grid(*b_rng, s["grid"]))
        rows_2d += [{**base, "plane": name, **g} for g in grid]
        for i, step in enumerate(steps):
            a, b = (float(v) for v in plane.coords[i])
            rows_path.append({**base, "plane": name, "step": step, "a": a, "b": b, "loss": own[i],
                              "loss_on_plane": surface.loss_at(w_k + a * plane.d1 + b * plane.d2),
                              "off_plane": float(plane.off_plane[i]),
                              "captured_fraction": plane.captured_fraction})
    meta = {**store.provenance(chash, str(problem.device)), "settings": json.dumps(s, sort_keys=True),
            "x_k_step": str(minimizer["step"]), "x_k_method": str(minimizer.get("method")),
            "replay_max_drift": repr(drift)}
    for table, rows in (("surface_1d", rows_1d), ("surface_2d", rows_2d), ("surface_path", rows_path)):
        _write(results, table, spec, rows, meta)
    return {"evals": surface.n_evals, "wall_s": time.perf_counter() - t0, "iterates_s": t_iterates,
            "path": len(steps), "max_drift": drift, "captured": captured}


def _write(results, table: str, spec, rows: list[dict], meta: dict) -> None:
    columns = {c: [r[c] for r in rows] for c in store.SCHEMAS[table]}
    store.write_table(store.part_path(results, table, spec.experiment, spec.run), table, columns, meta)
