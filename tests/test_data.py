"""Dataset loaders on files written in the exact on-disk formats."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from landscope.problem import data, sources


def write_idx(path, array: np.ndarray, gz: bool):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return hashlib.sha256(raw).hexdigest()


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    hashes = {}
    for prefix, n in (("train", 50), ("t10k", 20)):
        imgs = rng.integers(0, 256, size=(n, 28, 28))
        labs = rng.integers(0, 10, size=n)
        hashes[f"{prefix}-images-idx3-ubyte"] = write_idx(root / f"{prefix}-images-idx3-ubyte.gz", imgs, True)
        hashes[f"{prefix}-labels-idx1-ubyte"] = write_idx(root / f"{prefix}-labels-idx1-ubyte", labs, False)
        if prefix == "train":
            expected = (imgs, labs)
    monkeypatch.setattr(sources, "FASHION_SHA256", hashes)
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", str(tmp_path / "nowhere"))
    return tmp_path, expected


def test_fashion_idx_loader_reads_gz_and_plain(fake_fashion, monkeypatch):
    base, (imgs, labs) = fake_fashion
    monkeypatch.setenv("LANDSCOPE_DATA", str(base))
    ds = data.fashion_mnist(n_train=30)
    assert ds.x.shape == (30, 784) and ds.y.dtype == torch.long
    np.testing.assert_allclose(ds.x.numpy(), imgs[:30].reshape(30, -1) / 255.0, rtol=1e-6)
    assert ds.y.tolist() == labs[:30].tolist()
    assert sources.availability_problem({"name": "fashion_mnist"}, None) is None


def test_fashion_hash_mismatch_and_truncation_are_reported(fake_fashion, monkeypatch):
    base, _ = fake_fashion
    monkeypatch.setenv("LANDSCOPE_DATA", str(base))
    bad = dict(sources.FASHION_SHA256)
    bad["train-labels-idx1-ubyte"] = "0" * 64
    monkeypatch.setattr(sources, "FASHION_SHA256", bad)
    with pytest.raises(ValueError, match="SHA-256 .* expected 0000"):
        data.fashion_mnist()
    path = base / "fashion-mnist" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(path)


def test_missing_fashion_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", str(tmp_path / "sys"))
    monkeypatch.delenv("LANDSCOPE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"looked in: .*sys.*apt-get install -y dataset-fashion-mnist.*"
                                                 r"`landscope data fetch fashion_mnist` downloads it \(30.9 MB"):
        data.fashion_mnist(data_dir=str(tmp_path / "mine"))


def test_real_fashion_hashes_when_installed():
    where = sources.locate_fashion(None)
    if where is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    ds = data.fashion_mnist()
    assert ds.x.shape == (60000, 784)
    assert float(ds.x.mean()) == pytest.approx(0.2860, abs=1e-4)


def test_digits_are_the_real_ones():
    ds = data.digits()
    assert ds.x.shape == (1797, 64) and ds.y.bincount().tolist()[0] == 178
    assert float(ds.x.max()) == 1.0


def test_factory_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import torch\ndef load(n=10):\n    return torch.ones(n, 3), torch.zeros(n, dtype=torch.long)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = data.load_dataset({"name": "mydata:load", "n": 7})
    assert ds.x.shape == (7, 3) and len(ds) == 7
