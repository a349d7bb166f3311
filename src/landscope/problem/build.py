"""What is trained: a Problem (data, model, loss, device, f_i*, batch order and learning rates),
built once from a RunSpec."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from landscope.problem.data import load_dataset
from landscope.problem.dataset import Dataset
from landscope.problem.models import build_model, loss_for
from landscope.problem.optim import lr_at
from landscope.spec import RunSpec


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


class BatchOrder(Protocol):
    """Where a run's steps take their samples and learning rates from: the config's seeded order
    (SeededOrder) or a recorded loop's (trajectory.rundir.Recording). Chosen once, in build_problem."""

    def batch(self, step: int) -> torch.Tensor: ...

    def lr(self, step: int) -> float: ...


class SeededOrder:
    """The config's order: epoch-wise seeded permutations (batch_indices) and the schedule's lr_at."""

    def __init__(self, spec: RunSpec, n: int):
        self.n, self.batch_size, self.seed = n, spec.batch_size, spec.seed
        self.optimizer, self.schedule, self.steps = spec.optimizer, spec.schedule, spec.steps

    def batch(self, step: int) -> torch.Tensor:
        return batch_indices(self.n, self.batch_size, self.seed, step)

    def lr(self, step: int) -> float:
        return lr_at(self.optimizer, self.schedule, self.steps, step)


class NoRecording:
    """A ``source: recorded`` run built without its recording: its model and data are usable (the
    Recorder and the train job need them), its steps are not (the order is in the recording)."""

    def __init__(self, spec: RunSpec):
        self.message = (f"run {spec.experiment}/{spec.run} has source: recorded: a replay must use the batches "
                        "and learning rates its loop recorded; call trajectory.replay.attach_recording(problem, "
                        "ckpt_dir) after build_problem")

    def batch(self, step: int) -> torch.Tensor:
        raise RuntimeError(self.message)

    def lr(self, step: int) -> float:
        raise RuntimeError(self.message)


@dataclass
class Problem:
    spec: RunSpec
    data: Dataset
    model: nn.Module
    loss_fn: object
    device: torch.device
    fstar: torch.Tensor | None  # per-sample minima (float64) or None for a constant
    order: BatchOrder  # the batches and learning rates of every step

    def __post_init__(self):
        if self.fstar is None:  # built once: batch_star runs inside the per-step loops
            self._const_star = torch.tensor(float(self.spec.f_i_star), dtype=torch.float64, device=self.device)

    def batch(self, step: int) -> torch.Tensor:
        return self.order.batch(step)

    def lr(self, step: int) -> float:
        return self.order.lr(step)

    def batch_star(self, idx: torch.Tensor) -> torch.Tensor:
        if self.fstar is None:
            return self._const_star
        return self.fstar[idx].mean()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_problem(spec: RunSpec, recording: BatchOrder | None = None) -> Problem:
    """The Problem of ``spec``; its steps follow ``recording`` when given (a recorded loop's batches
    and learning rates), else the config's seeded order (a ``source: recorded`` run without its
    recording can build its model but not step: see NoRecording)."""
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
    if recording is not None:
        order = recording
    elif spec.source == "recorded":
        order = NoRecording(spec)
    else:
        order = SeededOrder(spec, len(data))
    return Problem(spec, data, model, loss_for(model, spec.loss), device, fstar, order)


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
