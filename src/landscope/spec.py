"""The plain data that crosses the Snakemake boundary: one run, one experiment, one study.

``RunSpec`` and ``ExperimentSpec`` travel to jobs as ``params`` (``to_dict``) and back (``from_dict``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, as plain data (JSON-able)."""

    experiment: str
    run: str
    point: str
    sweep: dict
    seed: int
    model: dict
    dataset: dict
    loss: str | None
    optimizer: dict
    schedule: dict
    batch_size: int
    steps: int
    snapshot_every: int
    f_i_star: float | str
    minimizer: str
    drift_tolerance: float | str
    eval_batch_size: int
    directions_every: int | None = None
    device: str = "auto"
    data_dir: str | None = None
    torch_threads: int = 1
    source: str = "train"

    @property
    def checkpoint_steps(self) -> list[int]:
        return checkpoint_steps(self.steps, self.snapshot_every)

    @property
    def n_segments(self) -> int:
        return len(self.checkpoint_steps) - 1

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["source"] == "train":  # left out at its default: earlier results keep their config hash
            del d["source"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(**d)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_steps(steps: int, every: int) -> list[int]:
    out = list(range(0, steps, every))
    out.append(steps)
    return out


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    title: str
    runs: list[RunSpec]
    conditions: dict
    sweep_keys: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    experiments: dict[str, ExperimentSpec]
    skipped: dict[str, str]
    deferred: dict[str, str] = field(default_factory=dict)

    def runs(self) -> list[RunSpec]:
        return [r for e in self.experiments.values() for r in e.runs]

    def run(self, experiment: str, run: str) -> RunSpec:
        for r in self.experiments[experiment].runs:
            if r.run == run:
                return r
        raise KeyError(f"no run {run!r} in experiment {experiment!r}")
