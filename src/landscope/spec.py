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
    """Steps that get a checkpoint: 0, every, 2 * every, ..., and the last step."""
    out = list(range(0, steps, every))
    out.append(steps)
    return out


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment: its runs (the sweep times the seeds), its ``conditions:`` section, the swept keys in
    config order, and ``raw``, the validated config section it was expanded from (figure, scale note,
    curvature, surfaces: what planning reads)."""

    name: str
    title: str
    runs: list[RunSpec]
    conditions: dict
    sweep_keys: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What a job gets as ``params``: everything but ``raw``, whose slices travel to the rules that read
        them, so that a changed curvature or surfaces key does not re-run the conditions job."""
        return {"name": self.name, "title": self.title, "conditions": self.conditions,
                "sweep_keys": list(self.sweep_keys), "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentSpec":
        """The spec back from ``to_dict`` (``raw`` empty)."""
        return cls(name=d["name"], title=d["title"], conditions=d["conditions"], sweep_keys=list(d["sweep_keys"]),
                   runs=[RunSpec.from_dict(r) for r in d["runs"]])


@dataclass(frozen=True)
class Study:
    """The validated study: its experiments, and those left out (``skipped``: data missing, with why) or kept
    in the DAG to fail at train (``deferred``)."""

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
