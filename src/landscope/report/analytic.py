"""Surface plots of the paper's analytic examples (like its Figure 3): f(x, y) on a grid around the
trajectories, the set of minimizers S, every seed's checkpoints and its x_K.

The example number comes from the runs table (the model's JSON: ``{"name": "analytic", "example": k}``);
the points come from the checkpoints in each run's training folder (landscope.trajectory.rundir:
the runs table names its training key) and x_K from ``minimizer.pt`` in its run folder (for
``minimizer: projection`` x_K is the projection of each iterate onto S, drawn for the last checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import numpy as np
import polars as pl
import torch

from landscope.problem import analytic
from landscope.report.base import Section
from landscope.trajectory.replay import parameter_path
from landscope.trajectory.rundir import (
    checkpoint_path,
    key_dir,
    load_checkpoint,
    load_minimizer,
    minimizer_path,
    run_dir,
)

GRID_N = 50  # grid cells per axis of the surface
PAD = 0.25  # the box extends this fraction of its size beyond the plotted points
SEED_COLORS = ["#ffffff", "#ff9f1c", "#00e5ff", "#ff4fd8", "#b6ff3b", "#c0c0c0"]  # visible on viridis, not red


def analytic_runs(con, experiment: str) -> pl.DataFrame:
    """run, point, seed, training_key, example of the experiment's runs whose model is an analytic example."""
    df = con.sql("SELECT run, point, seed, training_key, model FROM runs WHERE experiment = $e "
                 "ORDER BY point, seed, run",
                 params={"e": experiment}).pl()
    rows = []
    for r in df.iter_rows(named=True):
        try:
            model = json.loads(r["model"] or "")
        except json.JSONDecodeError:
            continue
        if isinstance(model, dict) and model.get("name") == "analytic":
            rows.append({**{k: r[k] for k in ("run", "point", "seed", "training_key")},
                         "example": int(model.get("example", 1))})
    return pl.DataFrame(rows, schema={"run": pl.String, "point": pl.String, "seed": pl.Int64,
                                      "training_key": pl.String, "example": pl.Int64})


def _w(state: dict) -> tuple[float, float]:
    w = state["model"]["w"]
    return float(w[0]), float(w[1])


def checkpoint_points(results: str | Path, experiment: str, runs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(path, x_K): one row per iterate (run, point, seed, step, x, y) and one x_K row per run.

    The whole trajectory x_0 .. x_K is replayed from the first checkpoint (exact, and cheap for two
    parameters); without a replayable manifest only the checkpoints are drawn. Every file is loaded
    through its SHA-256 check. x_K comes from minimizer.pt; for ``projection`` it is Proj(x_last, S).
    """

    cps, xks = [], []
    for r in runs.iter_rows(named=True):
        folder = key_dir(results, r["training_key"])
        try:
            steps, path = parameter_path(folder)
            pts = [(s, float(w[0]), float(w[1])) for s, w in zip(steps, path)]
        except (OSError, ValueError, RuntimeError):
            marks = sorted(int(p.stem.split("=")[1]) for p in folder.glob("step=*.pt"))
            pts = [(s, *_w(load_checkpoint(checkpoint_path(folder, s)))) for s in marks]
        cps += [{"run": r["run"], "point": r["point"], "seed": r["seed"], "step": s, "x": x, "y": y} for s, x, y in pts]
        mfile = minimizer_path(run_dir(results, experiment, r["run"]))
        if mfile.is_file():
            state = load_minimizer(mfile)
            x, y = _w(state)
            label = f"x_K ({state.get('method', '?')})"
            if state.get("method") == "projection":
                p = analytic.project(r["example"], torch.tensor([x, y], dtype=torch.float64))
                x, y, label = float(p[0]), float(p[1]), "x_K = Proj(x_last, S)"
            xks.append({"run": r["run"], "point": r["point"], "seed": r["seed"], "x": x, "y": y, "label": label})
    cp_schema = {"run": pl.String, "point": pl.String, "seed": pl.Int64, "step": pl.Int64, "x": pl.Float64,
                 "y": pl.Float64}
    return (pl.DataFrame(cps, schema=cp_schema),
            pl.DataFrame(xks, schema={**{k: v for k, v in cp_schema.items() if k != "step"}, "label": pl.String}))


def plot_box(xs, ys, pad: float = PAD) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square-ish box around the points, padded by ``pad`` of its size (at least 1 wide)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    half = max(xs.max() - xs.min(), ys.max() - ys.min(), 1.0) * (0.5 + pad)
    return (cx - half, cx + half), (cy - half, cy + half)


def surface_grid(example: int, xlim, ylim, n: int = GRID_N) -> pl.DataFrame:
    """f(x, y) at the centres of an n x n grid of cells (x0, x1, y0, y1 are the cell edges)."""

    ex, ey = np.linspace(*xlim, n + 1), np.linspace(*ylim, n + 1)
    cx, cy = (ex[:-1] + ex[1:]) / 2, (ey[:-1] + ey[1:]) / 2
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    i, j = i.ravel(), j.ravel()
    w = torch.tensor(np.stack([cx[i], cy[j]], 1), dtype=torch.float64)  # (n*n, 2): every cell at once
    f1, f2 = analytic.terms(example, w)
    return pl.DataFrame({"x0": ex[i], "x1": ex[i + 1], "y0": ey[j], "y1": ey[j + 1], "x": cx[i], "y": cy[j],
                         "f": ((f1 + f2) / 2).numpy()})


def minimizer_set(example: int, xlim, ylim) -> pl.DataFrame:
    """S inside the box: Example 1's line x + y = -1/2 (two end points, part 0), else its points."""
    if example == 1:
        xs = np.clip(np.array([xlim[0], xlim[1]]), -0.5 - ylim[1], -0.5 - ylim[0])
        return pl.DataFrame({"x": xs, "y": -0.5 - xs, "part": [0, 0]})

    pts = analytic.minimizers(example)
    inside = [(x, y) for x, y in pts if xlim[0] <= x <= xlim[1] and ylim[0] <= y <= ylim[1]]
    return pl.DataFrame({"x": [p[0] for p in inside], "y": [p[1] for p in inside],
                         "part": list(range(len(inside)))}, schema={"x": pl.Float64, "y": pl.Float64, "part": pl.Int64})


def surface_chart(example: int, grid: pl.DataFrame, cps: pl.DataFrame, xks: pl.DataFrame,
                  s_set: pl.DataFrame, title: str) -> alt.LayerChart:
    """Heatmap of f, S in red (line or points), each seed's checkpoints joined in step order, x_K as crosses."""
    xlim, ylim = [grid["x0"].min(), grid["x1"].max()], [grid["y0"].min(), grid["y1"].max()]
    x = alt.X("x:Q", title="x", scale=alt.Scale(domain=xlim, nice=False))
    y = alt.Y("y:Q", title="y", scale=alt.Scale(domain=ylim, nice=False))
    layers = [alt.Chart(grid).mark_rect(strokeWidth=0).encode(
        x=alt.X("x0:Q", title="x", scale=alt.Scale(domain=xlim, nice=False)), x2="x1:Q",
        y=alt.Y("y0:Q", title="y", scale=alt.Scale(domain=ylim, nice=False)), y2="y1:Q",
        color=alt.Color("f:Q", title="f(x, y)", scale=alt.Scale(scheme="viridis")),
        tooltip=[alt.Tooltip("x:Q", format=".3g"), alt.Tooltip("y:Q", format=".3g"), alt.Tooltip("f:Q", format=".4g")])]
    if not s_set.is_empty():
        mark = (alt.Chart(s_set).mark_line(color="red", strokeWidth=2, clip=True) if example == 1
                else alt.Chart(s_set).mark_point(color="red", shape="diamond", size=120, filled=True))
        layers.append(mark.encode(x=x, y=y, tooltip=[alt.Tooltip("x:Q", format=".4g"), alt.Tooltip("y:Q", format=".4g")]))
    if not cps.is_empty():
        layers.append(alt.Chart(cps).mark_line(strokeWidth=1.5, clip=True).encode(
            x=x, y=y, detail="run:N", order="step:Q", stroke=alt.Stroke("seed:N", title="seed", scale=alt.Scale(range=SEED_COLORS)),
            tooltip=["run:N", "step:Q", alt.Tooltip("x:Q", format=".4g"), alt.Tooltip("y:Q", format=".4g")]))
    if not xks.is_empty():
        layers.append(alt.Chart(xks).mark_point(shape="cross", size=160, filled=True, color="black",
                                                stroke="white", strokeWidth=1).encode(
            x=x, y=y, tooltip=["run:N", "label:N", alt.Tooltip("x:Q", format=".4g"), alt.Tooltip("y:Q", format=".4g")]))
    return alt.layer(*layers).properties(title=title, width=360, height=360).resolve_scale(color="independent")


def analytic_sections(con, results: str | Path, experiment: str) -> list[Section]:
    """One section per sweep point of an analytic experiment (else []): f(x, y) around the trajectories."""
    runs = analytic_runs(con, experiment)
    if runs.is_empty():
        return []

    cps, xks = checkpoint_points(results, experiment, runs)
    out = []
    for point in sorted(set(runs["point"].to_list())):
        example = int(runs.filter(pl.col("point") == point)["example"][0])
        c, k = cps.filter(pl.col("point") == point), xks.filter(pl.col("point") == point)
        if c.is_empty() and k.is_empty():
            continue
        pts = analytic.minimizers(example) if example != 1 else np.zeros((0, 2))
        xs = np.concatenate([c["x"].to_numpy(), k["x"].to_numpy(), pts[:, 0]])
        ys = np.concatenate([c["y"].to_numpy(), k["y"].to_numpy(), pts[:, 1]])
        xlim, ylim = plot_box(xs, ys)
        chart = surface_chart(example, surface_grid(example, xlim, ylim), c, k, minimizer_set(example, xlim, ylim),
                              f"Example {example}: f(x, y), S (red), every iterate per seed, x_K (×) — {point}")
        out.append(Section(f"Surface: {point}", chart))
    return out
