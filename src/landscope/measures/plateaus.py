"""Plateaus of the training loss and their escapes, from the replayed per-step table."""

from __future__ import annotations

import json
import math

from landscope import store
from landscope.settings import PLATEAU_KEYS, curvature_settings


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
    (landscope.settings.curvature_settings). Runs without steps (diverged) have no events.
    """
    s = curvature_settings(settings)
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
