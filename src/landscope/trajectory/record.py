"""Record your own PyTorch training loop so the pipeline can measure it.

An experiment with ``source: recorded`` describes your loop in the config (model factory, dataset,
optimizer, batch_size, steps, snapshot_every, seeds) and is not trained by landscope. Instead::


    with Recorder("my_study.yaml", "mine", run="seed-0", model=model, optimizer=opt) as rec:
        x, y = rec.data.x, rec.data.y          # the dataset exactly as the pipeline loads it
        for idx in batches:                    # your order, your schedule, your loop
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            rec.step(idx, loss)

writes, in the run's training folder ``results/checkpoints/train=KEY/``
(landscope.trajectory.rundir.training_dir), what landscope's own training writes (a checkpoint
every ``snapshot_every`` steps with its SHA-256 sidecar, the per-step train rows) plus the
recording (landscope.trajectory.rundir.RECORDING): the sample indices, learning rate and loss of
every step. Then
``snakemake --cores all --configfile my_study.yaml`` runs the rest of the DAG on it: the train job
of a recorded run only imports the recording (manifest), the snapshot job measures the checkpoints
and select_minimizer chooses x_K; the replay re-runs every segment with the recorded batches and learning rates and
fails if the parameters do not reach the next checkpoint (bitwise on CPU). So a loop that does
something the config does not say (another loss, data augmentation, gradient clipping, two
optimizer steps per batch) is caught, not measured wrongly.

What the replay needs from your loop: the batch of each step is ``rec.data.x[idx]`` unchanged;
every batch has the config's ``batch_size`` samples; the loss is the mean over the batch of the
config's ``loss`` (cross-entropy by default); one
``optimizer.step()`` per ``rec.step``; the optimizer is one the config can name (torch's SGD, Adam,
AdamW, or landscope's own); with dropout, nothing but the model draws from torch's global random
generator (give your DataLoader its own ``generator=``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from landscope import store
from landscope.config import load_study
from landscope.factories import ConfigError
from landscope.problem.build import build_problem
from landscope.problem.optim import make_optimizer
from landscope.spec import RunSpec
from landscope.trajectory.rundir import (
    RECORDING,
    RecordingError,
    clear_recorded_files,
    mark_diverged,
    save_checkpoint,
    save_recording,
    training_dir,
    write_segment_rows,
)

# optimizer settings that do not change the numbers of a step (or that the replay sets itself)
_NOT_COMPARED = {"params", "lr", "initial_lr", "foreach", "fused", "capturable", "differentiable"}


def recorded_runs(config: dict | str | Path, experiment: str) -> list[RunSpec]:
    """The runs (sweep points x seeds) of a ``source: recorded`` experiment: record each one."""
    study = load_study(config)
    if experiment not in study.experiments:
        why = study.skipped.get(experiment)
        raise ConfigError(f"no experiment {experiment!r} in the config" + (f" (skipped: {why})" if why else "")
                          + f"; experiments: {', '.join(study.experiments)}")
    runs = study.experiments[experiment].runs
    if runs[0].source != "recorded":
        raise ConfigError(f"experiment {experiment!r} has source: {runs[0].source}, so the pipeline trains it "
                          "itself; set `source: recorded` in experiments.{experiment} to record your own loop")
    return runs


class Recorder:
    """Record one run of a ``source: recorded`` experiment from your own training loop.

    ``spec``: a RunSpec (from :func:`recorded_runs`), or a config (YAML path or dict) together with
    ``experiment`` and ``run`` (``run`` may be left out when the experiment has a single run).
    ``model`` and ``optimizer`` are yours, created but not yet trained: the first checkpoint is
    taken here. The model must have the architecture the config's model factory builds (the replay
    rebuilds it from there), the optimizer the class and settings of the config's ``optimizer:``.

    The Recorder sets torch's thread count to the config's ``torch_threads`` (the replay computes
    with it too) and leaves torch's random generator as it found it.
    """

    def __init__(self, spec: RunSpec | dict | str | Path, experiment: str | None = None, *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, run: str | None = None, results: str | Path = "results"):
        self.spec = _resolve_spec(spec, experiment, run)
        if self.spec.source != "recorded":
            raise ConfigError(f"experiment {self.spec.experiment!r} has source: {self.spec.source}, so the "
                              "pipeline trains it itself; set `source: recorded` in its config to record your own loop")
        self.results = Path(results)
        self.ckpt_dir = training_dir(results, self.spec)
        with torch.random.fork_rng(devices=[]):  # build_problem seeds torch to build its model
            reference = build_problem(self.spec)
        _check_model(model, reference.model, self.spec)
        _check_optimizer(optimizer, model, self.spec)
        self.problem = dataclasses.replace(reference, model=model)
        self.data = self.problem.data  # x, y on the run's device, as the replay will index them
        self.model, self.optimizer = model, optimizer
        self.steps = self.spec.steps
        self._marks = set(self.spec.checkpoint_steps)
        self._indices: list[torch.Tensor] = []
        self._lrs: list[float] = []
        self._losses: list[float] = []
        self._epochs: list[int] = []
        self._seen = 0  # samples consumed so far (epochs = seen // n)
        self._opt_lrs: list[float] = []
        self._segment_start = 0
        self.diverged: dict | None = None
        self.closed = False
        self._t0 = time.perf_counter()
        clear_recorded_files(self.ckpt_dir)
        self._hook = optimizer.register_step_pre_hook(self._before_opt_step)
        save_checkpoint(self.ckpt_dir, 0, self.problem, optimizer)

    # ----------------------------------------------------------------------------- the loop
    @property
    def step_count(self) -> int:
        return len(self._losses)

    def _before_opt_step(self, optimizer, args, kwargs) -> None:
        lrs = {float(g["lr"]) for g in optimizer.param_groups}
        if len(lrs) != 1:
            raise RecordingError(f"run {self.spec.run}: the optimizer's parameter groups have different learning "
                                 f"rates {sorted(lrs)}; the replay uses one learning rate per step")
        self._opt_lrs.append(lrs.pop())

    def step(self, indices, loss, epoch: int | None = None) -> None:
        """Record the step just taken: call once after each ``optimizer.step()``.

        ``indices``: the positions in ``rec.data`` of this step's samples; ``loss``: the batch loss
        at the parameters before the step (what ``backward()`` was called on); ``epoch``: your
        loop's epoch, for the train table (default: samples seen before this step // dataset size)."""
        if self.closed:
            raise RecordingError(f"run {self.spec.run}: the recording is closed; no more steps can be added")
        k = self.step_count
        lrs = self._opt_lrs  # learning rates of the optimizer steps since the last rec.step()
        n_opt = len(lrs)
        self._opt_lrs = []
        if self.diverged is not None:  # the loop may go on after a NaN; nothing more is measured
            self._losses.append(math.nan)
            return
        if k >= self.steps:
            raise RecordingError(f"run {self.spec.run}: the experiment has steps: {self.steps}, and all of them "
                                 "are recorded; stop the loop there (or raise steps in the config)")
        if n_opt != 1:
            raise RecordingError(
                f"run {self.spec.run}, step {k}: rec.step() must follow exactly one optimizer.step() of the "
                f"recorded optimizer, but {n_opt} happened since the last rec.step()"
                + ("; call rec.step() after optimizer.step()" if n_opt == 0 else
                   "; several optimizer steps per recorded batch (e.g. gradient accumulation done "
                   "differently) cannot be replayed"))
        idx = _as_indices(indices, len(self.data), self.spec.run, k)
        if len(idx) != self.spec.batch_size:  # the replay's batched measurements assume it
            raise RecordingError(f"run {self.spec.run}, step {k}: {len(idx)} samples, but the experiment has "
                                 f"batch_size: {self.spec.batch_size}; every recorded step must use batch_size "
                                 "samples (set batch_size in the config; drop a last partial batch, e.g. "
                                 "DataLoader(..., drop_last=True))")
        value = float(loss.detach().item() if isinstance(loss, torch.Tensor) else loss)
        self._indices.append(idx)
        self._lrs.append(lrs[0])
        self._losses.append(value)
        self._epochs.append(int(epoch) if epoch is not None else self._seen // len(self.data))
        self._seen += len(idx)
        done = k + 1
        if not math.isfinite(value):
            self._diverge(k)
        elif done in self._marks:
            self._write_segment_rows(done)
            save_checkpoint(self.ckpt_dir, done, self.problem, self.optimizer)

    def close(self) -> Path:
        """Check that every step was recorded and write the recording (+ sidecar); returns its path."""
        if self.closed:
            return self.ckpt_dir / RECORDING
        self._hook.remove()
        self.closed = True
        if self.diverged is None and self.step_count != self.steps:
            raise RecordingError(f"run {self.spec.run}: recorded {self.step_count} steps, but the experiment has "
                                 f"steps: {self.steps}; record all of them (or set steps: {self.step_count})")
        n = len(self._indices)
        chash = self.spec.training_key()
        return save_recording(self.ckpt_dir, self._indices, self._lrs, self._losses[:n], {
            "experiment": self.spec.experiment, "run": self.spec.run, "config_hash": chash, "steps": n,
            "wall_s": time.perf_counter() - self._t0,
            "diverged_step": None if self.diverged is None else self.diverged["step"],
            "provenance": store.provenance(chash, str(self.problem.device))})

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # an interrupted loop leaves no recording (nor its sidecar): the pipeline will not use it
            self._hook.remove()
            self.closed = True

    # ----------------------------------------------------------------------------- files
    def _write_segment_rows(self, end: int) -> None:
        lo = self._segment_start
        j = self.spec.checkpoint_steps.index(lo)
        write_segment_rows(self.ckpt_dir, j, self.spec, list(range(lo, end)), self._epochs[lo:end],
                           self._lrs[lo:end], self._losses[lo:end])
        self._segment_start = end

    def _diverge(self, k: int) -> None:
        """A non-finite loss: as landscope's training does, keep the rows up to it, mark the run
        diverged, and take no more checkpoints."""
        j = self.spec.checkpoint_steps.index(self._segment_start)
        self._write_segment_rows(k + 1)
        self.diverged = mark_diverged(self.ckpt_dir, k, j, self.spec.training_key())


def _resolve_spec(spec, experiment, run) -> RunSpec:
    if isinstance(spec, RunSpec):
        return spec
    if experiment is None:
        raise ConfigError("Recorder(config, experiment, ...): name the experiment to record")
    runs = recorded_runs(spec, experiment)
    names = [r.run for r in runs]
    if run is None:
        if len(runs) == 1:
            return runs[0]
        raise ConfigError(f"experiment {experiment!r} has {len(runs)} runs; pass run= one of {', '.join(names)}")
    if run not in names:
        raise ConfigError(f"experiment {experiment!r} has no run {run!r}; its runs: {', '.join(names)}")
    return runs[names.index(run)]


def _check_model(model: torch.nn.Module, reference: torch.nn.Module, spec: RunSpec) -> None:
    """Same parameter and buffer names, shapes, dtypes and device as the config's model factory."""
    fix = (f"the replay rebuilds the model from the config (model: {json.dumps(spec.model)}); pass a model "
           "built by that factory with those options")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"Recorder: model must be a torch.nn.Module, got {type(model).__name__}")
    mine, ref = model.state_dict(), reference.state_dict()
    if list(mine) != list(ref):
        missing, extra = [k for k in ref if k not in mine], [k for k in mine if k not in ref]
        what = (f"missing {missing[:3]}" if missing else "") + (f" extra {extra[:3]}" if extra else "")
        raise RecordingError(f"run {spec.run}: the model's parameters differ from the config's model "
                             f"({what.strip() or 'same names in another order'}); {fix}")
    for k in ref:
        a, b = mine[k], ref[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise RecordingError(f"run {spec.run}: model tensor {k!r} is {a.dtype} {tuple(a.shape)}, the config's "
                                 f"model has {b.dtype} {tuple(b.shape)}; {fix}")
        if a.device.type != b.device.type:
            raise RecordingError(f"run {spec.run}: model tensor {k!r} is on {a.device}, but the run computes on "
                                 f"{b.device} (config key device: {spec.device}); move the model there")


def _check_optimizer(opt: torch.optim.Optimizer, model: torch.nn.Module, spec: RunSpec) -> None:
    """The class and settings of the config's optimizer, over the model's parameters in order, fresh."""
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"Recorder: optimizer must be a torch.optim.Optimizer, got {type(opt).__name__}")
    want = json.dumps(spec.optimizer)
    params = [p for g in opt.param_groups for p in g["params"]]
    if [id(p) for p in params] != [id(p) for p in model.parameters()]:
        raise RecordingError(f"run {spec.run}: the optimizer must hold all of the model's parameters, in the order "
                             "of model.parameters(), in one group (as the replay creates it)")
    if opt.state:
        raise RecordingError(f"run {spec.run}: the optimizer has already taken steps; create the Recorder before "
                             "training, so that its first checkpoint is the start of the run")
    try:
        ref = make_optimizer(spec.optimizer, [torch.nn.Parameter(p.detach().clone()) for p in params])
    except ValueError as exc:
        raise ConfigError(f"experiment {spec.experiment}: optimizer {want}: {exc}") from exc
    if type(opt) is not type(ref) or len(opt.param_groups) != len(ref.param_groups):
        raise RecordingError(f"run {spec.run}: the optimizer is {_describe(opt)}, but the config says optimizer: "
                             f"{want}, which the replay builds as {_describe(ref)}; make them the same")
    mine, theirs = opt.param_groups[0], ref.param_groups[0]
    diff = {k: (mine.get(k), theirs[k]) for k in theirs if k not in _NOT_COMPARED and mine.get(k) != theirs[k]}
    if diff:
        text = ", ".join(f"{k}: yours {a!r}, config {b!r}" for k, (a, b) in diff.items())
        raise RecordingError(f"run {spec.run}: the optimizer's settings differ from the config's optimizer: "
                             f"{want} ({text}); set them equal in the config or in your loop")


def _describe(opt: torch.optim.Optimizer) -> str:
    g = opt.param_groups[0]
    keys = [k for k in sorted(g) if k not in _NOT_COMPARED | {"maximize"}]
    return f"{type(opt).__module__}.{type(opt).__name__}(" + ", ".join(f"{k}={g[k]!r}" for k in keys) + ")"


def _as_indices(indices, n: int, run: str, step: int) -> torch.Tensor:
    idx = torch.as_tensor(indices).detach().to("cpu").reshape(-1)
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise RecordingError(f"run {run}, step {step}: indices must be integer sample positions, got {idx.dtype}")
    if idx.numel() == 0:
        raise RecordingError(f"run {run}, step {step}: an empty batch")
    idx = idx.to(torch.int64)
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise RecordingError(f"run {run}, step {step}: indices must lie in 0..{n - 1} (positions in rec.data), "
                             f"got {int(idx.min())}..{int(idx.max())}")
    return idx.clone()
