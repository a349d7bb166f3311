"""Deterministic training with checkpoints, resume, and exact replay of a segment.

The batch of step k is a pure function of (seed, k): a per-epoch permutation drawn from a
generator seeded by (seed, epoch). Training and replay run the very same ``_step`` function, so a
replay from checkpoint j reproduces the trajectory bitwise on CPU; the per-step measurements are
taken between the backward pass and the optimizer step, without touching the trajectory.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscope import measure, store
from landscope.config import RunSpec
from landscope.data import Dataset, load_dataset
from landscope.models import batchnorm_modules, build_model, has_dropout, loss_for
from landscope.optim import lr_at, make_optimizer

log = logging.getLogger("landscope")


class ReplayDriftError(RuntimeError):
    """The replayed trajectory left the checkpointed one by more than the tolerance."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, or does not match its recorded hash."""


# ----------------------------------------------------------------------------------- setup
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device; use device: auto or cpu")
    return torch.device(name)


def enable_determinism(device: torch.device) -> None:
    """Deterministic kernels on accelerators, so that a replay retraces training (the drift check
    measures how far it strays). cuBLAS needs a fixed workspace for deterministic GEMMs; the
    variable must be set before its first use, which is after this call (nothing touched CUDA yet).
    CPU kernels here are deterministic already (and the switch costs ~2 s of imports)."""
    if device.type == "cpu":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False  # autotuning may pick a different kernel per process


@dataclass
class Problem:
    spec: RunSpec
    data: Dataset
    model: nn.Module
    loss_fn: object
    device: torch.device
    fstar: torch.Tensor | None  # per-sample minima (float64) or None for a constant
    recorded: object | None = None  # a recorder.Recording: batches and learning rates of your own loop

    def __post_init__(self):
        if self.fstar is None:  # built once: batch_star runs inside the per-step loops
            self._const_star = torch.tensor(float(self.spec.f_i_star), dtype=torch.float64,
                                            device=self.device)

    def batch(self, step: int) -> torch.Tensor:
        if self.recorded is not None:
            return self.recorded.batch(step)
        if self.spec.source == "recorded":
            raise RuntimeError(_NOT_ATTACHED.format(self.spec))
        return batch_indices(len(self.data), self.spec.batch_size, self.spec.seed, step)

    def lr(self, step: int) -> float:
        if self.recorded is not None:
            return self.recorded.lr(step)
        if self.spec.source == "recorded":
            raise RuntimeError(_NOT_ATTACHED.format(self.spec))
        return lr_at(self.spec.optimizer, self.spec.schedule, self.spec.steps, step)

    def batch_star(self, idx: torch.Tensor) -> torch.Tensor:
        if self.fstar is None:
            return self._const_star
        return self.fstar[idx].mean()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_problem(spec: RunSpec) -> Problem:
    torch.set_num_threads(spec.torch_threads)
    device = resolve_device(spec.device)
    enable_determinism(device)
    data = load_dataset(spec.dataset, spec.data_dir)
    if spec.batch_size > len(data):
        raise ValueError(f"run {spec.experiment}/{spec.run}: batch_size {spec.batch_size} exceeds "
                         f"the dataset size {len(data)}")
    n_classes = data.meta.get("n_classes") or (int(data.y.max().item()) + 1 if not data.y.is_floating_point() else 1)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, int(data.x[0].numel()), n_classes).to(device).train()
    fstar = None
    if spec.f_i_star == "exact":
        if data.f_i_star is None:
            raise ValueError(_no_exact_f_i_star(spec))
        fstar = data.f_i_star.to(device)
    data = Dataset(data.x.to(device), data.y.to(device), data.name, data.f_i_star, data.meta)
    return Problem(spec, data, model, loss_for(model, spec.loss), device, fstar)


_NOT_ATTACHED = ("run {0.experiment}/{0.run} has source: recorded: a replay must use the batches and learning "
                 "rates its loop recorded; call trajectory.attach_recording(problem, ckpt_dir) after build_problem")


def attach_recording(problem: Problem, ckpt_dir) -> Problem:
    """A run of ``source: recorded`` replays the batches and learning rates its own loop recorded."""
    if problem.spec.source == "recorded":
        from landscope.recorder import load_recording

        problem.recorded = load_recording(ckpt_dir, problem.spec)
    return problem


POLYAK_OPTIMIZERS = ("sps_max", "decsps", "ngn")  # their step sizes use f_{i_k}*


def _no_exact_f_i_star(spec: RunSpec) -> str:
    """The message for f_i_star: exact on a dataset that knows no per-sample minima."""
    name = spec.optimizer["name"]
    use = (f"optimizer {name} computes its step size from f_i* and the beta term of T uses it"
           if name in POLYAK_OPTIMIZERS else "the beta term of T uses it")
    return (f"run {spec.experiment}/{spec.run}: f_i_star: exact, but dataset "
            f"{spec.dataset['name']!r} provides no per-sample minima ({use}); give a number "
            "instead, e.g. f_i_star: 0.0 for a non-negative loss such as cross-entropy")


_PERM_CACHE: dict[tuple[int, int, int], torch.Tensor] = {}


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the mini-batch of ``step``: epoch-wise permutations, last partial batch dropped."""
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    key = (n, seed, epoch)
    perm = _PERM_CACHE.get(key)
    if perm is None:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        perm = torch.randperm(n, generator=gen)
        _PERM_CACHE.clear()
        _PERM_CACHE[key] = perm
    return perm[pos * batch_size:(pos + 1) * batch_size]


def epoch_of(n: int, batch_size: int, step: int) -> int:
    return step // (n // batch_size)


def _step(problem: Problem, opt: torch.optim.Optimizer, step: int, hook=None) -> torch.Tensor:
    """One optimizer step of the trajectory; ``hook(idx, xb, yb, loss)`` runs before ``opt.step``."""
    model = problem.model
    idx = problem.batch(step).to(problem.device)
    xb, yb = problem.data.x[idx], problem.data.y[idx]
    lr = problem.lr(step)
    for group in opt.param_groups:
        group["lr"] = lr
    if not model.training:  # every helper that switches modes restores each module's own flag
        model.train()
    opt.zero_grad(set_to_none=True)
    loss = problem.loss_fn(model, model(xb), yb).mean()
    loss.backward()
    if hook is not None:
        hook(idx, xb, yb, loss)
    set_info = getattr(opt, "set_batch_info", None)
    if set_info is not None:  # Polyak-type step sizes need f_{i_k}(x_k) and f_{i_k}*
        set_info(loss.detach(), problem.batch_star(idx))
    opt.step()
    return loss.detach()


# ----------------------------------------------------------------------------------- checkpoints
def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step={step:07d}.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(ckpt_dir: Path, step: int, problem: Problem, opt) -> Path:
    state = {
        "step": step,
        "model": problem.model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if problem.device.type == "cuda" else [],
        "config_hash": problem.spec.config_hash(),
    }
    path = checkpoint_path(ckpt_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    side = {"step": step, "sha256": _sha256(path), "config_hash": problem.spec.config_hash(),
            "provenance": store.provenance(problem.spec.config_hash(), str(problem.device))}
    store.atomic_write_bytes(path.with_suffix(".json"), json.dumps(side, indent=1).encode())
    return path


def checkpoint_valid(path: Path, config_hash: str) -> bool:
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("config_hash") == config_hash and meta.get("sha256") == _sha256(path)


def load_checkpoint(path: Path, config_hash: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint after checking its SHA-256 (and config hash when given)."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; re-run the train rule for this run")
    if not side.is_file():
        raise CheckpointError(f"checkpoint {path} has no sidecar {side.name}; it was not written to the end")
    meta = json.loads(side.read_text())
    got = _sha256(path)
    if got != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted: SHA-256 {got[:12]}... differs from "
                              f"the recorded {str(meta.get('sha256'))[:12]}...; delete it and re-run training")
    if config_hash is not None and meta.get("config_hash") != config_hash:
        raise CheckpointError(f"checkpoint {path} was written by another configuration; re-run training")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_minimizer(path: str | Path, map_location="cpu") -> dict:
    """Load x_K after checking the SHA-256 its sidecar recorded (select_minimizer writes both)."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        raise CheckpointError(f"minimizer {path} or its sidecar {side.name} is missing; re-run the "
                              "train rule for this run")
    want = json.loads(side.read_text()).get("sha256")
    got = _sha256(path)
    if got != want:
        raise CheckpointError(f"minimizer {path} is corrupted: SHA-256 {got[:12]}... differs from the "
                              f"recorded {str(want)[:12]}...; delete it and re-run the train rule")
    return torch.load(path, map_location=map_location, weights_only=True)


def _restore(problem: Problem, opt, state: dict) -> None:
    problem.model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and problem.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng_cuda"])


# ----------------------------------------------------------------------------------- train
def _segment_rows_path(ckpt_dir: Path, j: int) -> Path:
    return Path(ckpt_dir) / f"train-segment={j:05d}.parquet"


def train_run(spec: RunSpec, ckpt_dir: str | Path, results: str | Path, progress: bool = False) -> dict:
    """Train one run deterministically, checkpointing every ``snapshot_every`` steps.

    Resumes from the newest valid checkpoint in ``ckpt_dir`` written by the same configuration.
    Writes the ``train`` and ``runs`` tables and returns the manifest (also written as
    ``ckpt_dir/manifest.json``).
    """
    ckpt_dir = Path(ckpt_dir)
    if spec.source == "recorded":
        raise ValueError(f"run {spec.experiment}/{spec.run} has source: recorded: its trajectory comes from "
                         "your own loop (landscope.Recorder), not from train_run; see recorder.finish_recording")
    t0 = time.perf_counter()
    # evaluation parts of an earlier configuration (e.g. more segments) must not outlive it
    for table in ("steps", "directions", "drift"):
        for part in store.table_dir(results, table, spec.experiment, spec.run).glob("part-*.parquet"):
            part.unlink()
    problem = build_problem(spec)
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    marks = spec.checkpoint_steps
    chash = spec.config_hash()
    # resume after the longest prefix of valid checkpoints (a corrupted one is recomputed)
    good = -1
    for j, s in enumerate(marks):
        if not (checkpoint_valid(checkpoint_path(ckpt_dir, s), chash)
                and (j == 0 or _segment_rows_path(ckpt_dir, j - 1).is_file())):
            if checkpoint_path(ckpt_dir, s).exists():
                log.warning("checkpoint step=%d is invalid (truncated, corrupted or from another "
                            "configuration): recomputing from step %d", s, marks[max(j - 1, 0)])
            break
        good = j
    start_j = max(good, 0)
    diverged = read_divergence(ckpt_dir, chash)
    if diverged is not None:  # deterministic: it would diverge again at the same step
        return _finish_train(spec, problem, ckpt_dir, results, time.perf_counter() - t0, diverged)
    _diverged_path(ckpt_dir).unlink(missing_ok=True)
    if good >= 0:
        _restore(problem, opt, load_checkpoint(checkpoint_path(ckpt_dir, marks[good]), chash))
        if good > 0:
            log.info("resuming %s/%s from step %d", spec.experiment, spec.run, marks[good])
    else:
        save_checkpoint(ckpt_dir, 0, problem, opt)
    n = len(problem.data)
    bar = _progress(progress, spec.steps, marks[start_j], f"train {spec.run}")
    for j in range(start_j, len(marks) - 1):
        lo, hi = marks[j], marks[j + 1]
        losses = torch.empty(hi - lo, dtype=torch.float64, device=problem.device)
        for step in range(lo, hi):
            losses[step - lo] = _step(problem, opt, step)
        losses_cpu = losses.cpu().tolist()
        bad = [lo + i for i, v in enumerate(losses_cpu) if not math.isfinite(v)]
        end = bad[0] + 1 if bad else hi
        steps = list(range(lo, end))
        store.write_table(_segment_rows_path(ckpt_dir, j), "train", {
            "experiment": [spec.experiment] * len(steps), "run": [spec.run] * len(steps),
            "step": steps, "epoch": [epoch_of(n, spec.batch_size, s) for s in steps],
            "lr": [lr_at(spec.optimizer, spec.schedule, spec.steps, s) for s in steps],
            "batch_loss": losses_cpu[:len(steps)]})
        if bad:
            log.warning("run %s/%s diverged: loss %s at step %d; the run is marked diverged and left "
                        "out of the conditions; the rest of the study goes on", spec.experiment,
                        spec.run, losses_cpu[bad[0] - lo], bad[0])
            store.atomic_write_bytes(_diverged_path(ckpt_dir), json.dumps(
                {"step": bad[0], "segment": j, "config_hash": chash}).encode())
            break
        save_checkpoint(ckpt_dir, hi, problem, opt)
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    return _finish_train(spec, problem, ckpt_dir, results, time.perf_counter() - t0,
                         read_divergence(ckpt_dir, chash))


def _diverged_path(ckpt_dir) -> Path:
    return Path(ckpt_dir) / "diverged.json"


def read_divergence(ckpt_dir, config_hash: str) -> dict | None:
    """{'step': first non-finite loss, 'segment': j} when this configuration's run diverged."""
    path = _diverged_path(ckpt_dir)
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("config_hash") == config_hash else None


def _finish_train(spec: RunSpec, problem: Problem, ckpt_dir: Path, results, wall_s: float,
                  diverged: dict | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    marks = spec.checkpoint_steps
    if diverged is not None:  # checkpoints up to the start of the segment that diverged
        marks = marks[:diverged["segment"] + 1]
    n_parts = len(marks) - 1 + (diverged is not None)
    status = "completed" if diverged is None else "diverged"
    meta = store.provenance(spec.config_hash(), str(problem.device))
    parts = [pq.read_table(_segment_rows_path(ckpt_dir, j)) for j in range(n_parts)]
    rows = pa.concat_tables(parts).to_pydict()
    store.write_table(store.part_path(results, "train", spec.experiment, spec.run), "train", rows, meta)
    opt_name = spec.optimizer["name"] + (f"(momentum={spec.optimizer['momentum']})"
                                         if spec.optimizer.get("momentum") else "")
    store.write_table(store.part_path(results, "runs", spec.experiment, spec.run), "runs", {
        "experiment": [spec.experiment], "run": [spec.run], "point": [spec.point],
        "seed": [spec.seed], "sweep_json": [json.dumps(spec.sweep, sort_keys=True)],
        "model": [json.dumps(spec.model, sort_keys=True)], "dataset": [spec.dataset["name"]],
        "optimizer": [opt_name], "lr": [float(spec.optimizer["lr"])], "batch_size": [spec.batch_size],
        "steps": [spec.steps], "snapshot_every": [spec.snapshot_every], "n_params": [problem.n_params],
        "n_train": [len(problem.data)], "status": [status],
        "diverged_step": [None if diverged is None else diverged["step"]], "train_wall_s": [wall_s],
        "device": [str(problem.device)], "config_hash": [spec.config_hash()]}, meta)
    manifest = {
        "experiment": spec.experiment, "run": spec.run, "config_hash": spec.config_hash(), "spec": spec.to_dict(),
        "n_params": problem.n_params, "status": status, "train_wall_s": wall_s,
        "diverged_step": None if diverged is None else diverged["step"],
        "checkpoints": [{"step": s, "file": checkpoint_path(ckpt_dir, s).name,
                         "sha256": json.loads(checkpoint_path(ckpt_dir, s).with_suffix(".json").read_text())["sha256"]}
                        for s in marks],
    }
    store.atomic_write_bytes(Path(ckpt_dir) / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", mininterval=1.0)


# ----------------------------------------------------------------------------------- replay
STEP_COLUMNS = ("batch_loss", "batch_loss_at_min", "batch_loss_star", "grad_dot_dir", "grad_norm", "dist_to_min")


def _flat(tensors) -> torch.Tensor:
    """One contiguous vector of ``tensors`` (a copy): one kernel per reduction instead of one per
    parameter tensor."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


CPU_FORWARD_SAMPLES = 512  # measured: MLP and CNN forwards on one core are fastest near 512 samples


def _losses_at(problem: Problem, model: nn.Module, steps: range) -> torch.Tensor:
    """f_{i_k}(x) for every step k in ``steps`` (float64), the batches of many steps in one no-grad
    forward of up to ``eval_batch_size`` samples (on a CPU at most ~512: larger activations leave
    the cache and are slower, 1.4-1.7x per-step forwards here). Valid only for a model without
    batch-dependent layers (no batch-norm in batch-statistics mode): each sample's loss is its own."""
    spec = problem.spec
    samples = spec.eval_batch_size if problem.device.type != "cpu" else min(spec.eval_batch_size, CPU_FORWARD_SAMPLES)
    per = max(1, samples // spec.batch_size)
    out = torch.empty(len(steps), dtype=torch.float64, device=problem.device)
    with torch.no_grad():
        for a in range(0, len(steps), per):
            chunk = steps[a:a + per]
            idx = torch.cat([problem.batch(s) for s in chunk]).to(problem.device)
            losses = problem.loss_fn(model, model(problem.data.x[idx]), problem.data.y[idx])
            out[a:a + len(chunk)] = losses.reshape(len(chunk), -1).mean(1).double()
    return out


def _loss_at(problem: Problem, model: nn.Module, step: int) -> torch.Tensor:
    """f_{i_k}(x) of one step's batch (no grad, float64)."""
    idx = problem.batch(step).to(problem.device)
    with torch.no_grad():
        return problem.loss_fn(model, model(problem.data.x[idx]), problem.data.y[idx]).mean().double()


def replay_segment(spec: RunSpec, ckpt_dir: str | Path, minimizer_path: str | Path, segment: int,
                   results: str | Path, progress: bool = False) -> dict:
    """Replay segment ``segment`` from its checkpoint, measuring every step against x_K.

    Writes the ``steps`` rows of the segment, the ``directions`` rows of its start checkpoint (and
    of the final checkpoint for the last segment) and a ``drift`` row. Raises ReplayDriftError when
    the replayed parameters differ from the next checkpoint by more than the tolerance.

    Cost: the training step itself, three dot products over the flat parameter vector, and f_{i_k}(x_K).
    When x_K is fixed and the model has no batch-norm, f_{i_k}(x_K) of all steps is computed after
    the loop in large no-grad batches (checked against a per-step forward at the first and last
    step); nothing is copied to the host before the segment ends.
    """
    t0 = time.perf_counter()
    ckpt_dir = Path(ckpt_dir)
    marks = spec.checkpoint_steps
    if not 0 <= segment < len(marks) - 1:
        raise ValueError(f"run {spec.run} has segments 0..{len(marks) - 2}, not {segment}")
    lo, hi = marks[segment], marks[segment + 1]
    chash = spec.config_hash()
    if read_divergence(ckpt_dir, chash) is not None:
        return _empty_segment(spec, segment, results, chash)
    problem = attach_recording(build_problem(spec), ckpt_dir)
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    _restore(problem, opt, load_checkpoint(checkpoint_path(ckpt_dir, lo), chash))
    xk_state = load_minimizer(minimizer_path, problem.device)["model"]
    model_k = copy.deepcopy(problem.model)
    model_k.load_state_dict(xk_state)
    model_k.eval()
    for p in model_k.parameters():
        p.requires_grad_(False)
    params = list(problem.model.parameters())
    params_k = list(model_k.parameters())
    # With dropout the measurement needs its own forward (dropout off). Without it, the training
    # forward (batch-norm on this batch's statistics) already gives f_{i_k}(x_k) and its gradient.
    separate = has_dropout(problem.model)
    batchnorm = bool(batchnorm_modules(model_k))
    if batchnorm:  # x_K is only measured: batch statistics of each batch, running statistics never written
        _batch_statistics(model_k)
    projecting = spec.minimizer == "projection"
    if projecting and not hasattr(problem.model, "project"):
        raise ValueError(f"experiment {spec.experiment}: minimizer: projection needs a model that knows "
                         f"its set of minimizers (a 'project' method), which {type(problem.model).__name__} "
                         "has not; use minimizer: last or best")
    # x_K fixed and every sample's loss its own: f_{i_k}(x_K) for all steps after the loop, batched
    deferred = not projecting and not batchnorm
    reference = {"flat": _flat(params_k).double()}

    def sync_reference():
        """With minimizer: projection, the reference point is Proj(x_k, S), step by step."""
        if projecting:
            with torch.no_grad():
                for q, v in zip(params_k, problem.model.project(params)):
                    q.copy_(v)
            reference["flat"] = _flat(params_k).double()

    n_steps = hi - lo
    dev, f64 = problem.device, torch.float64
    # per step: f_{i_k}(x_k), f_{i_k}(x_K), and the Gram matrix of (g, d) = (grad f_{i_k}(x_k), x_k - x_K)
    losses = torch.full((n_steps, 2), math.nan, dtype=f64, device=dev)
    grams = torch.empty(n_steps, 4, dtype=f64, device=dev)
    pair = torch.empty(2, sum(p.numel() for p in params), dtype=f64, device=dev)
    state = {"i": 0}

    def hook(idx, xb, yb, loss):
        i = state["i"]
        sync_reference()
        if separate:  # dropout off, batch-norm on this batch's statistics, running stats untouched
            with measurement_mode(problem.model):
                out = problem.model(xb)
                mloss = problem.loss_fn(problem.model, out, yb).mean()
                grads = torch.autograd.grad(mloss, params)
        else:
            mloss, grads = loss, [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        with torch.no_grad():
            # g and d side by side in float64 (exact products of float32 numbers), then one BLAS
            # product gives <g, d>, |g|^2, |d|^2: six kernels per step, no allocation
            torch.cat([t.reshape(-1) for t in grads], out=pair[0])
            torch.cat([t.detach().reshape(-1) for t in params], out=pair[1])
            pair[1].sub_(reference["flat"])
            torch.mm(pair, pair.T, out=grams[i].view(2, 2))
            losses[i, 0] = mloss.detach()
            if not deferred:
                losses[i, 1] = problem.loss_fn(model_k, model_k(xb), yb).mean()
        state["i"] = i + 1

    meta = store.provenance(chash, str(problem.device))
    full_batch_s = [0.0]  # seconds spent on full-batch direction rows (reported, for the benchmarks)

    def direction(step: int, f_k: float | None = None) -> dict:
        t = time.perf_counter()
        sync_reference()
        out = measure.direction_row(problem, model_k, step, f_k)
        full_batch_s[0] += time.perf_counter() - t
        return out

    directions = [direction(lo)]
    f_at_min = None if projecting else directions[0]["full_loss_at_min"]  # x_K fixed: f(x_K) once
    bar = _progress(progress, n_steps, 0, f"replay {spec.run} [{lo},{hi})")
    every = spec.directions_every
    for step in range(lo, hi):
        if every and step > lo and (step - lo) % every == 0:  # full-batch rows between checkpoints
            directions.append(direction(step, f_at_min))
        _step(problem, opt, step, hook)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    drift = parameter_drift(problem.model, load_checkpoint(checkpoint_path(ckpt_dir, hi), chash,
                                                           map_location=problem.device)["model"])
    tol = drift_tolerance(spec, problem.device)
    if deferred:
        losses[:, 1] = _deferred_losses_at_min(problem, model_k, range(lo, hi))
    wall = time.perf_counter() - t0
    store.write_table(store.part_path(results, "drift", spec.experiment, spec.run, segment), "drift", {
        "experiment": [spec.experiment], "run": [spec.run], "segment": [segment], "step": [hi],
        "max_abs_drift": [drift], "tolerance": [tol], "replay_wall_s": [wall]}, meta)
    if not drift <= tol:
        raise ReplayDriftError(
            f"run {spec.experiment}/{spec.run} segment {segment} (steps {lo}..{hi}): replayed "
            f"parameters differ from checkpoint step={hi} by max |diff| = {drift:.3e} > tolerance "
            f"{tol:.1e}. Training is not reproducible here (nondeterministic kernels?); raise "
            "drift_tolerance only if you accept approximate measurements")
    if hi == spec.steps:
        directions.append(direction(hi, f_at_min))
    star = (problem.batch_star(None).expand(n_steps) if problem.fstar is None else
            torch.stack([problem.batch_star(problem.batch(s).to(dev)) for s in range(lo, hi)]))
    rows = torch.stack([losses[:, 0], losses[:, 1], star.to(f64), grams[:, 1],
                        grams[:, 0].sqrt(), grams[:, 3].sqrt()], 1)
    cols = dict(zip(STEP_COLUMNS, rows.cpu().T.tolist()))  # the segment's one copy to the host
    steps = list(range(lo, hi))
    cols["lr"] = [problem.lr(s) for s in steps]
    store.write_table(store.part_path(results, "steps", spec.experiment, spec.run, segment), "steps",
                      {"experiment": [spec.experiment] * n_steps, "run": [spec.run] * n_steps,
                       "step": steps, **cols}, meta)
    dcols = {k: [r[k] for r in directions] for k in directions[0]}
    store.write_table(store.part_path(results, "directions", spec.experiment, spec.run, segment),
                      "directions", {"experiment": [spec.experiment] * len(directions),
                                     "run": [spec.run] * len(directions), **dcols}, meta)
    return {"segment": segment, "drift": drift, "wall_s": wall, "full_batch_s": full_batch_s[0]}


BATCHED_RTOL, BATCHED_ATOL = 1e-4, 1e-6


def _deferred_losses_at_min(problem: Problem, model_k: nn.Module, steps: range) -> torch.Tensor:
    """f_{i_k}(x_K) of every step, batched across steps, after checking on the first and last step
    that batching does not change a sample's loss (a model whose layers mix the samples of a batch
    in ways landscope cannot see, e.g. a hand-written normalisation, falls back to per-step forwards)."""
    batched = _losses_at(problem, model_k, steps)
    ends = sorted({steps[0], steps[-1]})
    single = torch.stack([_loss_at(problem, model_k, s) for s in ends])
    if torch.allclose(batched[[s - steps[0] for s in ends]], single, rtol=BATCHED_RTOL, atol=BATCHED_ATOL):
        return batched
    log.info("run %s/%s: losses at x_K change when batches are stacked (batch-dependent layers): "
             "measuring them one step at a time", problem.spec.experiment, problem.spec.run)
    return torch.stack([_loss_at(problem, model_k, s) for s in steps])


def _batch_statistics(model: nn.Module) -> None:
    """For good: dropout off; batch-norm normalises with each batch's own statistics and never writes
    its running statistics (which evaluation mode, e.g. for f(x_K), still uses)."""
    model.eval()
    for m in batchnorm_modules(model):
        m.train()
        m.track_running_stats = False


@contextlib.contextmanager
def measurement_mode(model: nn.Module):
    """Measure f_{i_k} as the paper does: dropout off; batch-norm normalises with the statistics of
    the batch itself (train mode) without updating its running statistics (no buffer is written,
    so nothing needs restoring); every module's mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    norms = [(m, m.track_running_stats) for m in batchnorm_modules(model)]
    _batch_statistics(model)
    try:
        yield model
    finally:
        for m, tracked in norms:
            m.track_running_stats = tracked
        for m, was in modes:
            m.training = was


def _empty_segment(spec: RunSpec, segment: int, results, chash: str) -> dict:
    """A diverged run has no trajectory to measure: its parts exist (the DAG is static) but are empty."""
    meta = {**store.provenance(chash), "status": "diverged"}
    for table in ("steps", "directions", "drift"):
        cols = {c: [] for c in store.SCHEMAS[table]}
        store.write_table(store.part_path(results, table, spec.experiment, spec.run, segment), table, cols, meta)
    log.info("run %s/%s diverged during training: segment %d left empty", spec.experiment, spec.run, segment)
    return {"segment": segment, "drift": 0.0, "wall_s": 0.0, "status": "diverged"}


def parameter_drift(model: nn.Module, reference: dict) -> float:
    worst = 0.0
    for name, p in model.state_dict().items():
        ref = reference[name]
        if p.is_floating_point():
            worst = max(worst, (p.double() - ref.double()).abs().max().item() if p.numel() else 0.0)
        elif not torch.equal(p, ref):
            worst = math.inf
    return worst


def drift_tolerance(spec: RunSpec, device: torch.device) -> float:
    if spec.drift_tolerance == "auto":
        return 0.0 if device.type == "cpu" else 1e-4
    return float(spec.drift_tolerance)


def run_manifest(spec: RunSpec, ckpt_dir: str | Path, job: str) -> dict:
    """The run's ``manifest.json``, refused (naming ``job`` and the run) when another configuration
    wrote it: the checkpoints it lists are not this spec's."""
    manifest = json.loads((Path(ckpt_dir) / "manifest.json").read_text())
    if manifest.get("config_hash") != spec.config_hash():
        raise ValueError(f"{job} {spec.experiment}/{spec.run}: the manifest was written by another "
                         "configuration; re-run the train rule for this run")
    return manifest


def parameter_path(ckpt_dir: str | Path, max_params: int = 16) -> tuple[list[int], np.ndarray]:
    """Every iterate x_0 .. x_K of a small model (at most ``max_params`` parameters), replayed from
    its first checkpoint with the run's own spec (from ``manifest.json``): (steps, array (K+1, d)).

    For drawing whole trajectories of the analytic examples, whose checkpoints are few."""
    ckpt_dir = Path(ckpt_dir)
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    if "spec" not in manifest:
        raise CheckpointError(f"{ckpt_dir}/manifest.json has no run spec (written by an older landscope); re-run training")
    spec = RunSpec.from_dict(manifest["spec"])
    problem = attach_recording(build_problem(spec), ckpt_dir)
    if problem.n_params > max_params:
        raise ValueError(f"run {spec.run} has {problem.n_params} parameters; parameter_path is for <= {max_params}")
    opt = make_optimizer(spec.optimizer, problem.model.parameters())
    _restore(problem, opt, load_checkpoint(checkpoint_path(ckpt_dir, 0), spec.config_hash()))
    stop = manifest["diverged_step"] if manifest.get("diverged_step") is not None else spec.steps

    def flat() -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in problem.model.parameters()]).double().cpu().numpy()

    path = [flat()]
    for step in range(stop):
        _step(problem, opt, step)
        path.append(flat())
    return list(range(stop + 1)), np.stack(path)
