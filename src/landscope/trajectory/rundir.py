"""The run folder: where a run's checkpoints, x_K, manifest, train rows, divergence mark and
recording live, how each file is hashed and written atomically, and how each is read back and checked.

Every writer and reader of a run folder calls this module."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from landscope import store
from landscope.problem.build import Problem
from landscope.spec import RunSpec


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, or does not match its recorded hash."""


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step={step:07d}.pt"


def file_sha256(path: Path) -> str:
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
    side = {"step": step, "sha256": file_sha256(path), "config_hash": problem.spec.config_hash(),
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
    return meta.get("config_hash") == config_hash and meta.get("sha256") == file_sha256(path)


def load_checkpoint(path: Path, config_hash: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint after checking its SHA-256 (and config hash when given)."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; re-run the train rule for this run")
    if not side.is_file():
        raise CheckpointError(f"checkpoint {path} has no sidecar {side.name}; it was not written to the end")
    meta = json.loads(side.read_text())
    got = file_sha256(path)
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
    got = file_sha256(path)
    if got != want:
        raise CheckpointError(f"minimizer {path} is corrupted: SHA-256 {got[:12]}... differs from the "
                              f"recorded {str(want)[:12]}...; delete it and re-run the train rule")
    return torch.load(path, map_location=map_location, weights_only=True)


def restore_state(problem: Problem, opt, state: dict) -> None:
    problem.model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and problem.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def segment_rows_path(ckpt_dir: Path, j: int) -> Path:
    return Path(ckpt_dir) / f"train-segment={j:05d}.parquet"


def diverged_path(ckpt_dir) -> Path:
    return Path(ckpt_dir) / "diverged.json"


def read_divergence(ckpt_dir, config_hash: str) -> dict | None:
    """{'step': first non-finite loss, 'segment': j} when this configuration's run diverged."""
    path = diverged_path(ckpt_dir)
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("config_hash") == config_hash else None


def run_manifest(spec: RunSpec, ckpt_dir: str | Path, job: str) -> dict:
    """The run's ``manifest.json``, refused (naming ``job`` and the run) when another configuration
    wrote it: the checkpoints it lists are not this spec's."""
    manifest = json.loads((Path(ckpt_dir) / "manifest.json").read_text())
    if manifest.get("config_hash") != spec.config_hash():
        raise ValueError(f"{job} {spec.experiment}/{spec.run}: the manifest was written by another "
                         "configuration; re-run the train rule for this run")
    return manifest


def save_minimizer(out_pt: str | Path, payload: dict, info: dict) -> None:
    """Write x_K atomically, then its sidecar (``info`` plus the file's SHA-256), so that the
    replay can tell a truncated or corrupted x_K from a good one."""

    out_pt = Path(out_pt)
    out_pt.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_pt.with_suffix(".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(out_pt)
    side = {**info, "sha256": file_sha256(out_pt)}
    store.atomic_write_bytes(out_pt.with_suffix(".json"), json.dumps(side).encode())


RECORDING = "recording.pt"


def checkpoint_dir(results: str | Path, experiment: str, run: str) -> Path:
    """Where the pipeline expects the run's checkpoints (the train rule's folder)."""
    return Path(results) / "checkpoints" / f"experiment={experiment}" / f"run={run}"


@dataclass(frozen=True)
class Recording:
    """A recorded trajectory: the samples and learning rate of every step (and its losses)."""

    indices: torch.Tensor  # int64, every step's sample indices, concatenated
    offsets: list[int]  # step k used indices[offsets[k]:offsets[k + 1]]
    lrs: list[float]
    losses: list[float]

    def batch(self, step: int) -> torch.Tensor:
        return self.indices[self.offsets[step]:self.offsets[step + 1]]

    def lr(self, step: int) -> float:
        """The learning rate of ``step``; at the end of the run (a last checkpoint), the last one."""
        return self.lrs[min(step, len(self.lrs) - 1)]


def load_recording(ckpt_dir: str | Path, spec: RunSpec) -> Recording:
    """Read ``recording.pt`` after checking its SHA-256 and that this experiment's config wrote it."""

    path = Path(ckpt_dir) / RECORDING
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        raise CheckpointError(
            f"run {spec.experiment}/{spec.run} has source: recorded, but {path} (or its sidecar) is missing: "
            "run your training loop with landscope.Recorder first (README: 'Your own training loop')")
    meta = json.loads(side.read_text())
    if meta.get("sha256") != file_sha256(path):
        raise CheckpointError(f"recording {path} is corrupted (SHA-256 differs from {side.name}); record the run again")
    if meta.get("config_hash") != spec.config_hash():
        raise CheckpointError(f"recording {path} was made with another configuration of experiment "
                              f"{spec.experiment!r}; record the run again with the current config")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return Recording(state["indices"], state["offsets"].tolist(), state["lr"].tolist(), state["loss"].tolist())
