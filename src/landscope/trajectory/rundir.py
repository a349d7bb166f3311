"""The training and run folders: every file they hold, how each is written (atomically, with a sidecar
that records its SHA-256) and how each is read back and checked.

Two kinds of folder. A trajectory is paid for once per **training key** (the hash of what decides
it: RunSpec.training_key in landscope.spec), whichever experiments and sweep points
share it, in the training folder ``results/checkpoints/train=KEY/`` (:func:`training_dir`):

- ``step=0000040.pt`` + ``.json``: a checkpoint (model, optimizer and RNG states) every
  ``snapshot_every`` steps, written by training or by your own loop's Recorder;
- ``train-segment=00000.parquet``: the train rows of each segment;
- ``diverged.json``: the first non-finite loss, when the run diverged;
- ``recording.pt`` + ``.json``: the batches, learning rates and losses of a recorded loop;
- ``manifest.json``: the trajectory's training spec, status and checkpoints (the train rule's output);
- ``snapshots.parquet``: full-batch measurements at every checkpoint (the snapshot rule's output);
- ``full-grad-step=0000040.pt`` + ``.json``: the full-batch loss and gradient (float64) at each checkpoint,
  written by the snapshot job beside its table and tied to the checkpoint's SHA-256, so that the evaluate
  jobs' full-batch rows at checkpoints read them instead of computing them again (as large as the model's
  parameters in float64, per checkpoint).

What is measured on it lives in the run folder ``results/checkpoints/experiment=E/run=R/``
(:func:`run_dir`), keyed by the whole run spec (its config hash):

- ``minimizer.pt`` + ``.json``: x_K (the select_minimizer rule's output);
- ``path-segment=00000.pt`` + ``.json``: the iterates between checkpoints that the run's loss
  surfaces need, kept by the evaluate job of each segment (empty when the segment has none).

Every writer and reader of a run folder calls this module; no other module names these files."""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from landscope import store
from landscope.problem.build import Problem
from landscope.spec import RunSpec

MANIFEST = "manifest.json"
SNAPSHOTS = "snapshots.parquet"
MINIMIZER = "minimizer.pt"
RECORDING = "recording.pt"
DIVERGED = "diverged.json"
# what a new recording replaces: a recorded loop's own files (checkpoints, rows, mark, recording)
RECORDED_FILES = ("recording.*", "step=*.pt", "step=*.json", "train-segment=*.parquet", "full-grad-step=*", DIVERGED)


class CheckpointError(RuntimeError):
    """A checkpoint (or x_K, a recording, path iterates) is missing, truncated, or does not match its
    recorded hash or configuration."""


class RecordingError(RuntimeError):
    """The loop being recorded does not match its experiment, or the recording is incomplete."""


# ----------------------------------------------------------------------------------- names
def training_dir(results: str | Path, spec: RunSpec) -> Path:
    """The training folder of ``spec``'s trajectory (checkpoints, recording, manifest, snapshots)."""
    return key_dir(results, spec.training_key())


def key_dir(results: str | Path, key: str) -> Path:
    """The training folder of training key ``key`` (the runs table names each run's)."""
    return Path(results) / "checkpoints" / f"train={key}"


def run_dir(results: str | Path, experiment: str, run: str) -> Path:
    """The run folder: what is measured on the trajectory for this run's spec (x_K, path iterates)."""
    return Path(results) / "checkpoints" / f"experiment={experiment}" / f"run={run}"


def snapshots_path(train_dir: str | Path) -> Path:
    return Path(train_dir) / SNAPSHOTS


def minimizer_path(folder: str | Path) -> Path:
    """x_K in a run folder (:func:`run_dir`)."""
    return Path(folder) / MINIMIZER


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step={step:07d}.pt"


def full_grad_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"full-grad-step={step:07d}.pt"


def segment_rows_path(ckpt_dir: Path, j: int) -> Path:
    return Path(ckpt_dir) / f"train-segment={j:05d}.parquet"


def path_iterates_path(ckpt_dir: Path, j: int) -> Path:
    """The path iterates kept by the evaluate job of segment ``j`` (a DAG output of every segment)."""
    return Path(ckpt_dir) / f"path-segment={j:05d}.pt"


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a written file: what it is, and its SHA-256."""
    return Path(path).with_suffix(".json")


# ----------------------------------------------------------------------------------- writing, reading
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_with_sidecar(path: Path, payload: dict, info: dict) -> Path:
    """Write ``payload`` with torch.save atomically (temporary file, fsync, rename), then its sidecar:
    ``info`` plus the file's SHA-256. A reader trusts the file only when the sidecar exists and the
    hash matches, so a writer killed at any point leaves nothing that would be read as valid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    store.atomic_write_bytes(sidecar_path(path), json.dumps({**info, "sha256": file_sha256(path)}, indent=1).encode())
    return path


def read_sidecar(path: Path) -> dict:
    return json.loads(sidecar_path(path).read_text())


def verify(path: Path, what: str = "file", redo: str = "write it again", config_hash: str | None = None,
           missing: str | None = None) -> dict:
    """The sidecar of a file written by :func:`write_with_sidecar`, after checking that both exist,
    that the SHA-256 matches, and (``config_hash`` given) that this configuration wrote it; else a
    CheckpointError that names ``what`` and ends with ``redo``, the way to make the file again
    (``missing``: a message of its own for a file that does not exist)."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise CheckpointError(missing or f"{what} {path} (or its sidecar {side.name}) is missing; {redo}")
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} {path}: its sidecar {side.name} is unreadable ({exc}); {redo}") from exc
    want, got = str(meta.get("sha256")), file_sha256(path)
    if got != want:
        raise CheckpointError(f"{what} {path} is corrupted: SHA-256 {got[:12]}... differs from the recorded "
                              f"{want[:12]}...; delete it and {redo}")
    if config_hash is not None and meta.get("config_hash") != config_hash:
        raise CheckpointError(f"{what} {path} was written by another configuration; {redo}")
    return meta


def read_verified(path: Path, what: str, redo: str, config_hash: str | None = None, map_location="cpu",
                  missing: str | None = None) -> tuple[dict, dict]:
    """(payload, sidecar) of a file written by :func:`write_with_sidecar`, after :func:`verify`. Loaded
    with ``weights_only``: a file that would run code is refused even with a matching hash."""
    meta = verify(path, what, redo, config_hash, missing)
    return torch.load(path, map_location=map_location, weights_only=True), meta


# ----------------------------------------------------------------------------------- checkpoints
def save_checkpoint(ckpt_dir: Path, step: int, problem: Problem, opt) -> Path:
    chash = problem.spec.training_key()
    state = {
        "step": step,
        "model": problem.model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if problem.device.type == "cuda" else [],
        "config_hash": chash,
    }
    return write_with_sidecar(checkpoint_path(ckpt_dir, step), state, {
        "step": step, "config_hash": chash, "provenance": store.provenance(chash, str(problem.device))})


def checkpoint_valid(path: Path, key: str) -> bool:
    """Whether the checkpoint can be resumed from (:func:`verify` passes), without loading it."""
    try:
        verify(path, config_hash=key)
    except CheckpointError:
        return False
    return True


def load_checkpoint(path: Path, key: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint after checking its SHA-256 (and, given, that trajectory ``key`` wrote it)."""
    return read_verified(path, "checkpoint", "re-run training", key, map_location)[0]


def checkpoint_sha256(ckpt_dir: Path, step: int) -> str:
    """The SHA-256 that checkpoint ``step``'s sidecar recorded (the manifest lists it)."""
    return read_sidecar(checkpoint_path(ckpt_dir, step))["sha256"]


def save_full_grad(ckpt_dir: Path, step: int, key: str, loss: float, grads: list[torch.Tensor]) -> Path:
    """The full-batch loss and gradient (one float64 tensor per trainable parameter) at checkpoint ``step``
    of trajectory ``key``, tied to that checkpoint by its SHA-256 (the snapshot job writes it)."""
    info = {"step": step, "config_hash": key, "checkpoint_sha256": checkpoint_sha256(ckpt_dir, step)}
    return write_with_sidecar(full_grad_path(ckpt_dir, step), {"full_loss": loss, "grads": [g.cpu() for g in grads]},
                              info)


def load_full_grad(ckpt_dir: Path, step: int, key: str,
                   map_location="cpu") -> tuple[float, list[torch.Tensor]] | None:
    """(f, gradient) saved by :func:`save_full_grad` for checkpoint ``step`` exactly as it is now; None when
    there is none, it is damaged, or it belongs to another checkpoint file (the caller then computes it)."""
    path = full_grad_path(ckpt_dir, step)
    if not path.is_file():
        return None
    try:
        payload, meta = read_verified(path, "full-batch gradient", "re-run the snapshot job", key, map_location)
        if meta.get("checkpoint_sha256") != checkpoint_sha256(ckpt_dir, step):
            return None
    except (CheckpointError, OSError, ValueError):
        return None
    return payload["full_loss"], payload["grads"]


def restore_state(problem: Problem, opt, state: dict) -> None:
    problem.model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and problem.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng_cuda"])


# ----------------------------------------------------------------------------------- x_K
def save_minimizer(out_pt: str | Path, payload: dict, info: dict) -> None:
    """Write x_K and its sidecar (``info`` plus the SHA-256), so that the replay can tell a truncated
    or corrupted x_K from a good one."""
    write_with_sidecar(Path(out_pt), payload, info)


def load_minimizer(path: str | Path, map_location="cpu") -> dict:
    """Load x_K after checking the SHA-256 its sidecar recorded (select_minimizer writes both)."""
    return read_verified(path, "minimizer", "re-run the train rule for this run", map_location=map_location)[0]


# ----------------------------------------------------------------------------------- train rows, divergence
def write_segment_rows(ckpt_dir: Path, j: int, spec: RunSpec, steps: list[int], epochs: list[int],
                       lrs: list[float], losses: list[float]) -> Path:
    """The train rows of segment ``j`` (kept until the run's ``train`` table is written)."""
    return store.write_table(segment_rows_path(ckpt_dir, j), "train", {
        "experiment": [spec.experiment] * len(steps), "run": [spec.run] * len(steps), "step": steps,
        "epoch": epochs, "lr": lrs, "batch_loss": losses})


def read_train_rows(ckpt_dir: Path, n_parts: int) -> dict:
    """The train rows of the first ``n_parts`` segments, in order, as columns."""
    return pa.concat_tables([pq.read_table(segment_rows_path(ckpt_dir, j)) for j in range(n_parts)]).to_pydict()


def mark_diverged(ckpt_dir: Path, step: int, segment: int, config_hash: str) -> dict:
    """Mark the run diverged at ``step`` (first non-finite loss) in ``segment``; returns the mark."""
    mark = {"step": step, "segment": segment, "config_hash": config_hash}
    store.atomic_write_bytes(Path(ckpt_dir) / DIVERGED, json.dumps(mark).encode())
    return mark


def clear_divergence(ckpt_dir: Path) -> None:
    (Path(ckpt_dir) / DIVERGED).unlink(missing_ok=True)


def read_divergence(ckpt_dir, config_hash: str) -> dict | None:
    """{'step': first non-finite loss, 'segment': j} when this configuration's run diverged."""
    path = Path(ckpt_dir) / DIVERGED
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("config_hash") == config_hash else None


# ----------------------------------------------------------------------------------- manifest
def write_manifest(ckpt_dir: Path, manifest: dict) -> None:
    store.atomic_write_bytes(Path(ckpt_dir) / MANIFEST, json.dumps(manifest, indent=1).encode())


def read_manifest(ckpt_dir: str | Path) -> dict:
    """The trajectory's manifest as written, with the run spec that trained it (refused when an older
    landscope wrote it)."""
    manifest = json.loads((Path(ckpt_dir) / MANIFEST).read_text())
    if "spec" not in manifest or "training_key" not in manifest:
        raise CheckpointError(f"{ckpt_dir}/{MANIFEST} was written by an older landscope (no training key); "
                              "re-run training")
    return manifest


def run_manifest(spec: RunSpec, ckpt_dir: str | Path, job: str) -> dict:
    """The trajectory's manifest (:func:`read_manifest`), refused (naming ``job`` and the run) when
    another trajectory wrote it: the checkpoints it lists are not this spec's."""
    manifest = read_manifest(ckpt_dir)
    if manifest["training_key"] != spec.training_key():
        raise ValueError(f"{job} {spec.experiment}/{spec.run}: the manifest in {ckpt_dir} was written by another "
                         "training configuration; re-run the train rule for this run")
    return manifest


def manifest_checkpoints(manifest: dict) -> list[int]:
    """The steps of the checkpoints a manifest lists (fewer than the spec's when the run diverged)."""
    return [c["step"] for c in manifest["checkpoints"]]


# ----------------------------------------------------------------------------------- recording
@dataclass(frozen=True)
class Recording:
    """A recorded trajectory: the samples and learning rate of every step (and its losses); the batch
    order of a Problem built from it (problem.build.BatchOrder)."""

    indices: torch.Tensor  # int64, every step's sample indices, concatenated
    offsets: list[int]  # step k used indices[offsets[k]:offsets[k + 1]]
    lrs: list[float]
    losses: list[float]
    wall_s: float = math.nan  # the recorded loop's wall time

    def batch(self, step: int) -> torch.Tensor:
        return self.indices[self.offsets[step]:self.offsets[step + 1]]

    def lr(self, step: int) -> float:
        """The learning rate of ``step``; at the end of the run (a last checkpoint), the last one."""
        return self.lrs[min(step, len(self.lrs) - 1)]


def save_recording(ckpt_dir: Path, indices: list[torch.Tensor], lrs: list[float], losses: list[float],
                   info: dict) -> Path:
    """Write the recording of a loop's steps (``info`` goes into the sidecar); returns its path."""
    offsets = [0]
    for idx in indices:
        offsets.append(offsets[-1] + len(idx))
    payload = {"indices": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64),
               "offsets": torch.tensor(offsets, dtype=torch.int64),
               "lr": torch.tensor(lrs, dtype=torch.float64),
               "loss": torch.tensor(losses, dtype=torch.float64)}
    return write_with_sidecar(Path(ckpt_dir) / RECORDING, payload, info)


def load_recording(ckpt_dir: str | Path, spec: RunSpec) -> Recording:
    """Read the recording after checking its SHA-256 and that this experiment's config wrote it."""
    path = Path(ckpt_dir) / RECORDING
    state, meta = read_verified(
        path, "recording", "record the run again with the current config", spec.training_key(),
        missing=(f"run {spec.experiment}/{spec.run} has source: recorded, but {path} (or its sidecar) is missing: "
                 "run your training loop with landscope.Recorder first (README: 'Your own training loop')"))
    return Recording(state["indices"], state["offsets"].tolist(), state["lr"].tolist(), state["loss"].tolist(),
                     meta.get("wall_s", math.nan))


def clear_recorded_files(ckpt_dir: Path) -> None:
    """Delete what an earlier recording of the run left (a new one is starting)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return
    for pattern in RECORDED_FILES:
        for f in d.glob(pattern):
            f.unlink()


# ----------------------------------------------------------------------------------- path iterates
def save_path_iterates(ckpt_dir: Path, segment: int, spec: RunSpec, states: dict[int, dict],
                       drift: float | None) -> Path:
    """Segment ``segment``'s iterates that the loss surfaces need ({step: model state}, possibly
    none), with the drift of the replay that produced them (None: nothing was replayed)."""
    payload = {"steps": sorted(states), "states": [states[s] for s in sorted(states)]}
    return write_with_sidecar(path_iterates_path(ckpt_dir, segment), payload, {
        "segment": segment, "steps": sorted(states), "config_hash": spec.config_hash(), "replay_drift": drift})


def load_path_states(spec: RunSpec, ckpt_dir: str | Path, kept_dir: str | Path, steps: list[int],
                     map_location="cpu") -> tuple[dict[int, dict], float]:
    """({step: model state dict} for ``steps``, the largest drift of the replays that kept them).

    A checkpoint step comes from its checkpoint (in the training folder ``ckpt_dir``); any other from
    the path iterates that the evaluate job of its segment kept in the run folder ``kept_dir`` (0.0
    when every step is a checkpoint: nothing was replayed)."""
    ckpt_dir, kept_dir = Path(ckpt_dir), Path(kept_dir)
    chash, key = spec.config_hash(), spec.training_key()
    marks = spec.checkpoint_steps
    out, worst, kept = {}, 0.0, {}
    for s in sorted(set(steps)):
        if s in marks:
            out[s] = load_checkpoint(checkpoint_path(ckpt_dir, s), key, map_location)["model"]
            continue
        j = bisect.bisect(marks, s) - 1
        if j not in kept:
            payload, meta = read_verified(path_iterates_path(kept_dir, j), "path iterates",
                                          "re-run the evaluate rule for this run", chash, map_location)
            kept[j] = dict(zip(payload["steps"], payload["states"]))
            worst = max(worst, meta["replay_drift"] or 0.0)
        if s not in kept[j]:
            raise CheckpointError(f"path iterates {path_iterates_path(kept_dir, j)} hold steps {sorted(kept[j])}, "
                                  f"not step {s}: they were kept for other surfaces settings (path_points); "
                                  "re-run the evaluate rule for this run")
        out[s] = kept[j][s]
    return out, worst
