"""Full-batch measurements at every checkpoint and the choice of x_K."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from landscope import store
from landscope.problem.build import build_problem
from landscope.problem.evaluate import full_loss_and_grad, norm_of
from landscope.trajectory.rundir import checkpoint_path, load_checkpoint, save_minimizer


def snapshot_run(spec, ckpt_dir: str | Path, results: str | Path) -> Path:
    """Full-batch loss, gradient norm, parameter norm and accuracy at every checkpoint."""

    problem = build_problem(spec)
    rows = {k: [] for k in store.SCHEMAS["snapshots"]}
    manifest = json.loads((Path(ckpt_dir) / "manifest.json").read_text())
    for step in [c["step"] for c in manifest["checkpoints"]]:  # fewer when the run diverged
        state = load_checkpoint(checkpoint_path(ckpt_dir, step), spec.config_hash(), problem.device)
        problem.model.load_state_dict(state["model"])
        f, grads, acc = full_loss_and_grad(problem, problem.model)
        for k, v in (("experiment", spec.experiment), ("run", spec.run), ("step", step),
                     ("full_loss", f), ("full_grad_norm", norm_of(grads)),
                     ("param_norm", norm_of([p.detach() for p in problem.model.parameters()])),
                     ("accuracy", acc)):
            rows[k].append(v)
    meta = store.provenance(spec.config_hash(), str(problem.device))
    return store.write_table(store.part_path(results, "snapshots", spec.experiment, spec.run),
                             "snapshots", rows, meta)


def select_minimizer(spec, ckpt_dir: str | Path, snapshots_path: str | Path, out_pt: str | Path,
                     results: str | Path) -> dict:
    """Choose x_K among the checkpoints: ``last`` (the paper) or ``best`` (lowest full loss)."""


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


TAIL_FRACTION = 0.25


def tail_steps(checkpoints: list[int], steps: int) -> list[int]:
    """Checkpoints in the last quarter of training (at least the last two)."""
    tail = [s for s in checkpoints if s >= (1 - TAIL_FRACTION) * steps]
    return tail if len(tail) >= 2 else sorted(checkpoints)[-2:]


def _tail_average(spec, ckpt_dir, snaps, out_pt, results) -> dict:
    """x_K = mean of the parameters of the tail checkpoints (integer buffers: from the last one)."""

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
