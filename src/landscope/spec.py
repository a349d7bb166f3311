"""The plain data that crosses the Snakemake boundary: one run, one experiment, one study.

``RunSpec`` and ``ExperimentSpec`` travel to jobs as ``params`` (``to_dict``) and back (``from_dict``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

# Raise when a change to landscope's training code changes trajectories: every training key changes
# with it, so no checkpoint of the old code is resumed or measured as if it were the new code's.
TRAINING_CODE_VERSION = 1
# What decides a trajectory. eval_batch_size and heldout_samples are here because the snapshots, kept
# beside the checkpoints, are computed in eval_batch_size's chunks on that many held-out samples.
# Everything else of a RunSpec (names, sweep, minimizer, drift_tolerance, directions_every, f_i_star
# unless the optimizer reads it) only changes what is measured on the trajectory.
TRAINING_FIELDS = ("model", "dataset", "loss", "optimizer", "schedule", "batch_size", "steps", "snapshot_every",
                   "seed", "device", "data_dir", "torch_threads", "source", "eval_batch_size", "heldout_samples")
# The built-in optimizers whose steps read f_i* (Polyak-type step sizes: problem.optim's set_batch_info;
# tests/test_optim.py checks this against the classes); a factory 'pkg.mod:fn' might as well.
READS_F_STAR = frozenset({"sps_max", "decsps", "ngn"})
HELDOUT_SAMPLES = 2000  # the schema's default of heldout_samples (tests/test_config.py checks it)


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
    heldout_samples: int | None = HELDOUT_SAMPLES

    @property
    def checkpoint_steps(self) -> list[int]:
        return checkpoint_steps(self.steps, self.snapshot_every)

    @property
    def n_segments(self) -> int:
        return len(self.checkpoint_steps) - 1

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, default in (("source", "train"), ("heldout_samples", HELDOUT_SAMPLES)):
            if d[key] == default:  # left out at its default: earlier results keep their config hash
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(**d)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def training_spec(self) -> dict:
        """The part of the spec that decides its trajectory (TRAINING_FIELDS, f_i_star when the
        optimizer reads it). A recorded run's trajectory is whatever your loop did: it is never
        shared, so its experiment and run names are part of it."""
        out = {k: getattr(self, k) for k in TRAINING_FIELDS}
        name = self.optimizer["name"]
        if ":" in name or name in READS_F_STAR:
            out["f_i_star"] = self.f_i_star
        if self.source == "recorded":
            out.update(experiment=self.experiment, run=self.run)
        return {**out, "training_code": TRAINING_CODE_VERSION}

    def for_training(self) -> "RunSpec":
        """The spec a train or snapshot job gets: this run's training fields, every measurement-only
        field at a neutral value, so that every run of one training key hands the job the same spec
        (and changing a measurement-only setting does not re-run it). Same training key."""
        if self.source == "recorded":  # never shared: names are part of the key
            named = {"experiment": self.experiment, "run": self.run}
        else:
            named = {"experiment": "train", "run": self.training_key()}
        f_star = self.f_i_star if "f_i_star" in self.training_spec() else 0.0
        return replace(self, **named, point="", sweep={}, minimizer="last", drift_tolerance="auto",
                       directions_every=None, f_i_star=f_star)

    def training_key(self) -> str:
        """16 hex digits naming the trajectory: runs with the same key share one train job and one
        training folder (landscope.trajectory.rundir.training_dir)."""
        return hashlib.sha256(json.dumps(self.training_spec(), sort_keys=True).encode()).hexdigest()[:16]


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
