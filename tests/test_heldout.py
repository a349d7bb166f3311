"""Held-out evaluation at every checkpoint (landscope.problem.heldout): the samples each dataset holds
out, and test loss / accuracy / generalization gap against a hand evaluation of the checkpoints."""

import dataclasses
import gzip
import struct
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_study

from landscope.problem import heldout
from landscope.problem.build import build_problem
from landscope.problem.data import digits
from landscope.spec import HELDOUT_SAMPLES
from landscope.trajectory import rundir, snapshot, train

DIGITS_MLP = {"model": {"name": "mlp", "depth": 2, "width": 16}, "dataset": {"name": "digits", "n_train": 200},
              "batch_size": 16, "steps": 12, "snapshot_every": 4, "seeds": [0, 1],
              "optimizer": {"name": "sgd", "lr": 0.5}}


def spec_of(exp: dict, seed_index: int = 0):
    return make_study(exp).experiments["t"].runs[seed_index]


def trained_snapshots(spec, ckpt, heldout_samples):
    spec = dataclasses.replace(spec, heldout_samples=heldout_samples)
    train.train_run(spec, ckpt)
    return pq.read_table(snapshot.snapshot_run(spec, ckpt)).to_pydict()


def mlp_by_hand(state: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (float64 sum of the float32 per-sample losses) and accuracy of the
    2-layer MLP with the weights of ``state``, written out with plain torch."""
    h = torch.relu(x @ state["net.0.weight"].T + state["net.0.bias"])
    logits = h @ state["net.2.weight"].T + state["net.2.bias"]
    per_sample = -torch.log_softmax(logits, dim=1)[torch.arange(len(y)), y]
    return per_sample.double().sum().item() / len(y), (logits.argmax(1) == y).double().mean().item()


def test_snapshot_test_columns_equal_a_hand_evaluation_of_every_checkpoint(tmp_path):
    spec = spec_of(DIGITS_MLP)
    snaps = trained_snapshots(spec, tmp_path / "ckpt", heldout_samples=None)  # all 1,597 rows after the 200
    every = digits()
    x_test, y_test = every.x[200:], every.y[200:]
    x_train, y_train = every.x[:200], every.y[:200]
    assert snaps["step"] == [0, 4, 8, 12]
    for i, step in enumerate(snaps["step"]):
        state = rundir.load_checkpoint(rundir.checkpoint_path(tmp_path / "ckpt", step))["model"]
        with torch.no_grad():
            test_loss, test_acc = mlp_by_hand(state, x_test, y_test)
            train_loss, _ = mlp_by_hand(state, x_train, y_train)
        assert snaps["test_loss"][i] == pytest.approx(test_loss, rel=1e-12)
        assert snaps["test_accuracy"][i] == pytest.approx(test_acc, rel=1e-12)
        assert snaps["full_loss"][i] == pytest.approx(train_loss, rel=1e-12)
        assert snaps["generalization_gap"][i] == pytest.approx(test_loss - train_loss, rel=1e-9, abs=1e-12)
    # training lowers the held-out loss of digits from its value at initialisation (~log 10)
    assert snaps["test_loss"][-1] < snaps["test_loss"][0]


def test_digits_holdout_is_disjoint_from_training_and_fixed(tmp_path):
    spec0, spec1 = spec_of(DIGITS_MLP, 0), spec_of(DIGITS_MLP, 1)  # two seeds of one experiment
    a = heldout.load_heldout(spec0, 300)
    b = heldout.load_heldout(spec0, 300)
    c = heldout.load_heldout(spec1, 300)
    rows = a.meta["rows"]
    assert len(rows) == len(set(rows)) == 300 and rows == sorted(rows)
    assert min(rows) >= 200 and max(rows) < 1797  # training takes rows 0..199
    assert b.meta["rows"] == rows and c.meta["rows"] == rows  # the same for every call and every run
    every = digits()
    assert torch.equal(a.x, every.x[rows]) and torch.equal(a.y, every.y[rows])
    assert len(heldout.load_heldout(spec0, None)) == 1597  # null: every row after the training rows
    assert heldout.load_heldout(spec0, 0) is None  # 0: no held-out evaluation


def test_digits_on_every_row_has_no_holdout_and_writes_nulls(tmp_path):
    spec = spec_of({**DIGITS_MLP, "dataset": {"name": "digits"}, "steps": 4})
    assert "1,797" in heldout.why_no_heldout(spec.dataset)
    assert heldout.load_heldout(spec) is None
    snaps = trained_snapshots(spec, tmp_path / "ckpt", HELDOUT_SAMPLES)
    assert len(snaps["step"]) == 2 and all(0 < a < 1 for a in snaps["accuracy"])
    for col in heldout.HELDOUT_COLUMNS:
        assert snaps[col] == [None, None]


def test_datasets_without_a_split_give_none_with_a_reason(tmp_path, monkeypatch):
    assert "no distribution" in heldout.why_no_heldout({"name": "analytic", "example": 1})
    assert heldout.load_heldout(SimpleNamespace(dataset={"name": "analytic", "example": 2}, data_dir=None)) is None
    assert "trains on its test split" in heldout.why_no_heldout({"name": "cifar10", "split": "test"})
    (tmp_path / "heldfac.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    no_split = SimpleNamespace(dataset={"name": "heldfac:no_split"}, data_dir=None)
    assert "takes no split" in heldout.why_no_heldout(no_split.dataset)
    assert heldout.load_heldout(no_split) is None
    assert heldout.heldout_metrics(None, None, 1.0) == dict.fromkeys(heldout.HELDOUT_COLUMNS)


FACTORIES = '''
import torch

def with_split(split="train", n=40):
    """x = the row number (train) or 1000 + the row number (test), one feature; y = row mod 2."""
    base = 0 if split == "train" else 1000
    x = torch.arange(base, base + n, dtype=torch.float32)[:, None]
    return x, torch.arange(n) % 2

def no_split(n=40):
    return torch.zeros(n, 1), torch.arange(n) % 2
'''


def test_factory_with_a_split_is_called_with_split_test(tmp_path, monkeypatch):
    (tmp_path / "heldfac.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = SimpleNamespace(dataset={"name": "heldfac:with_split", "n": 30}, data_dir=None)
    assert heldout.why_no_heldout(spec.dataset) is None
    all_ = heldout.load_heldout(spec, None)
    assert all_.x[:, 0].tolist() == list(range(1000, 1030))
    some = heldout.load_heldout(spec, 7)
    assert len(some) == 7 and some.x[:, 0].tolist() == [1000 + r for r in some.meta["rows"]]


def write_idx(path, array: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_holdout_is_t10k_not_cut_by_n_train(tmp_path):
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 30), ("t10k", 12)):
        arrays[prefix] = rng.integers(0, 256, size=(n, 28, 28)), rng.integers(0, 10, size=n)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", arrays[prefix][0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", arrays[prefix][1])
    imgs, labs = arrays["t10k"]
    section = {"name": "fashion_mnist", "n_train": 10, "verify": False}
    spec = SimpleNamespace(dataset=section, data_dir=str(tmp_path))
    whole = heldout.load_heldout(spec, None)
    assert len(whole) == 12  # all of t10k, although training keeps 10 images
    assert torch.equal(whole.x, torch.tensor(imgs.reshape(12, 784) / 255.0, dtype=torch.float32))
    assert whole.y.tolist() == labs.tolist()
    part = heldout.load_heldout(spec, 5)
    assert torch.equal(part.x, whole.x[part.meta["rows"]]) and len(set(part.meta["rows"])) == 5


def test_ptb_holdout_is_the_valid_text_in_the_train_vocabulary(tmp_path):
    (tmp_path / "ptb").mkdir()
    for split, text in (("train", "a b c\nb c d\n"), ("valid", "d a z\n"), ("test", "c c\n")):
        (tmp_path / "ptb" / f"ptb.{split}.txt").write_text(text)
    spec = SimpleNamespace(dataset={"name": "ptb", "bptt": 1, "n_windows": 2}, data_dir=str(tmp_path))
    held = heldout.load_heldout(spec, None)
    # vocabulary by first occurrence in train: a0 b1 c2 <eos>3 d4, then <unk>5; valid "d a z <eos>" = 4 0 5 3
    assert held.x[:, 0].tolist() == [4, 0, 5] and held.y[:, 0].tolist() == [0, 5, 3]


def test_halfspace_holdout_is_a_fresh_sample_and_metrics_follow_the_sign_rule():
    spec = spec_of({"model": {"name": "halfspace_logistic", "l2": 0.01},
                    "dataset": {"name": "halfspace", "n_per_class": 10, "l2": 0.01}, "batch_size": 1,
                    "steps": 4, "snapshot_every": 4, "seeds": [0], "optimizer": {"name": "sgd", "lr": 0.1}})
    problem = build_problem(spec)
    held = heldout.load_heldout(spec, 4000)
    assert len(held) == 4000 and sorted(set(held.y.tolist())) == [-1.0, 1.0]
    train_rows = {tuple(r) for r in problem.data.x.tolist()}
    assert not train_rows & {tuple(r) for r in held.x.tolist()}
    # same distribution: class means near +-(1, 1) (sd of a mean sqrt(2 / 2000) = 0.032)
    assert torch.allclose(held.x[held.y == 1].mean(0), torch.ones(2), atol=0.15)
    assert torch.allclose(held.x[held.y == -1].mean(0), -torch.ones(2), atol=0.15)
    w = torch.tensor([[0.7, -0.3]])
    with torch.no_grad():
        problem.model.linear.weight.copy_(w)
    got = heldout.heldout_metrics(problem, held, train_loss=0.25)
    score = held.x @ w[0]
    per_sample = torch.sigmoid(-held.y * score) + 0.5 * 0.01 * (w * w).sum()
    loss = per_sample.double().sum().item() / 4000
    acc = ((score > 0).double() * 2 - 1 == held.y).double().mean().item()
    assert got["test_loss"] == pytest.approx(loss, rel=1e-12)
    assert got["test_accuracy"] == pytest.approx(acc, rel=1e-12)
    assert got["generalization_gap"] == pytest.approx(loss - 0.25, rel=1e-12)
