"""Datasets: real on-disk formats, verified by content hash, never silently replaced.

Every loader returns a :class:`Dataset` of tensors held in memory (the studies here fit). A missing
dataset is an error that says where we looked and how to get it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from landscope.config import check_component, import_factory


@dataclass
class Dataset:
    x: torch.Tensor
    y: torch.Tensor
    name: str
    f_i_star: torch.Tensor | None = None  # per-sample minima, when known exactly
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])


# ----------------------------------------------------------------------------------- half-space
def halfspace(n_per_class: int = 20, dim: int = 2, variance: float = 2.0, mean: float = 1.0,
              l2: float = 1e-5, data_seed: int = 0) -> Dataset:
    """The paper's half-space learning data: two Gaussian classes (labels -1/+1).

    Class +1 ~ N(mean*1, variance*I), class -1 ~ N(-mean*1, variance*I). ``f_i_star`` holds the
    exact per-sample minima of f_i(x) = sigmoid(-b_i x.a_i) + (l2/2)|x|^2 (a 1-D problem along a_i).
    """
    rng = np.random.default_rng(data_seed)
    sd = np.sqrt(variance)
    pos = rng.normal(mean, sd, size=(n_per_class, dim))
    neg = rng.normal(-mean, sd, size=(n_per_class, dim))
    a = np.concatenate([pos, neg])
    b = np.concatenate([np.ones(n_per_class), -np.ones(n_per_class)])
    fstar = np.array([halfspace_sample_min(float(np.linalg.norm(ai)), l2) for ai in a])
    return Dataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32),
                   "halfspace", torch.tensor(fstar, dtype=torch.float64),
                   {"source": f"generated (data_seed={data_seed})", "l2": l2})


def halfspace_sample_min(norm_a: float, l2: float) -> float:
    """min_x sigmoid(-b x.a) + (l2/2)|x|^2 = min_s sigmoid(-s|a|) + (l2/2) s^2 (exact, 1-D)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import expit

    if l2 <= 0:
        return 0.0

    def g(s):
        return expit(-s * norm_a) + 0.5 * l2 * s * s

    upper = max(10.0, 5.0 / max(norm_a, 1e-12) * np.log(1.0 / l2))
    res = minimize_scalar(g, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-10})
    return float(res.fun)


# ----------------------------------------------------------------------------------- digits
def digits(n_train: int | None = None) -> Dataset:
    """scikit-learn's 1,797 real 8x8 digits (ships with scikit-learn), pixels scaled to [0, 1].

    Read straight from the CSV inside the scikit-learn package (importing sklearn costs ~2 s per job).
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset digits needs scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    x = torch.tensor(table[:, :-1] / 16.0, dtype=torch.float32)
    y = torch.tensor(table[:, -1], dtype=torch.long)
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    return Dataset(x, y, "digits", meta={"source": "sklearn.datasets.load_digits"})


# ----------------------------------------------------------------------------------- Fashion-MNIST
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_HOWTO = ("install it with `apt-get update && apt-get install -y dataset-fashion-mnist` "
                 "(Debian/Ubuntu, root), or put the four IDX files (.gz or plain) in a directory "
                 "and set `data_dir` in the config or $LANDSCOPE_DATA")


def search_dirs(data_dir: str | None, subdir: str, system: str | None) -> list[Path]:
    out = []
    for base in (data_dir, os.environ.get("LANDSCOPE_DATA")):
        if base:
            out += [Path(base) / subdir, Path(base)]
    if system:
        out.append(Path(system))
    return out


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def locate_fashion(data_dir: str | None) -> Path | None:
    for d in search_dirs(data_dir, "fashion-mnist", FASHION_SYSTEM_DIR):
        if all(_find_idx(d, stem) for stem in FASHION_SHA256):
            return d
    return None


def read_idx(path: Path, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped); verify the SHA-256 of the decompressed bytes."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if expected_sha256 is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != expected_sha256:
            raise ValueError(f"{path}: SHA-256 of the decompressed content is {got}, expected "
                             f"{expected_sha256}; the file is corrupted or not the official one. "
                             "Delete it and fetch it again")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{dtype_code:02x} unsupported (only uint8)")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({body.size} bytes of data, header says {np.prod(dims)})")
    return body.reshape(dims)


def fashion_mnist(split: str = "train", n_train: int | None = None, data_dir: str | None = None,
                  verify: bool = True) -> Dataset:
    """Fashion-MNIST from the official IDX files; pixels scaled to [0, 1], flattened to 784."""
    where = locate_fashion(data_dir)
    if where is None:
        looked = ", ".join(str(p) for p in search_dirs(data_dir, "fashion-mnist", FASHION_SYSTEM_DIR))
        raise FileNotFoundError(f"Fashion-MNIST not found (looked in: {looked}); {FASHION_HOWTO}")
    prefix = "train" if split == "train" else "t10k"
    img_stem, lab_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = read_idx(_find_idx(where, img_stem), FASHION_SHA256[img_stem] if verify else None)
    labels = read_idx(_find_idx(where, lab_stem), FASHION_SHA256[lab_stem] if verify else None)
    x = torch.tensor(images.reshape(len(images), -1), dtype=torch.float32) / 255.0
    y = torch.tensor(labels, dtype=torch.long)
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    return Dataset(x, y, "fashion_mnist", meta={"source": str(where), "split": split})


# ----------------------------------------------------------------------------------- registry
def analytic(example: int = 1) -> Dataset:
    """The two 'samples' of the paper's analytic Example 1, 2 or 3 (see landscope.analytic)."""
    from landscope.analytic import analytic_dataset

    return analytic_dataset(example)


BUILTIN: dict[str, Callable[..., Dataset]] = {
    "analytic": analytic,
    "halfspace": halfspace,
    "digits": digits,
    "fashion_mnist": fashion_mnist,
}
NEEDS_DATA_DIR = {"fashion_mnist"}


def check_name(name: str, where: str) -> None:
    check_component(name, BUILTIN, "dataset", where)


def availability_problem(spec: dict, data_dir: str | None) -> str | None:
    """None when the dataset can be loaded here; otherwise why not and how to fix it."""
    name = spec["name"]
    if name == "fashion_mnist" and locate_fashion(spec.get("data_dir") or data_dir) is None:
        return f"dataset fashion_mnist is not installed; {FASHION_HOWTO}"
    return None


def load_dataset(spec: dict, data_dir: str | None = None) -> Dataset:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    if ":" in name:
        out = import_factory(name, "dataset.name")(**kwargs)
        if isinstance(out, tuple):
            out = Dataset(torch.as_tensor(out[0]), torch.as_tensor(out[1]), name)
        return out
    if name in NEEDS_DATA_DIR:
        kwargs.setdefault("data_dir", data_dir)
    return BUILTIN[name](**kwargs)
