"""Held-out data: the dataset's own test split, evaluated at every checkpoint beside the training loss.

Where each dataset's held-out samples come from:

* ``digits``: training takes the first ``n_train`` rows of the 1,797; the held-out samples are drawn
  from the rows after them (none when training uses every row);
* ``fashion_mnist``, ``cifar10``, ``cifar100``, ``mnist1d``: their ``test`` split (Fashion-MNIST's t10k,
  CIFAR's test batch, MNIST-1D's generated test set);
* ``ptb``, ``wikitext2``, ``shakespeare``: the ``valid`` text, cut into windows like the training text;
* ``halfspace``: a fresh sample of the same two Gaussians (another ``data_seed``);
* ``analytic``: none (two fixed 'samples', drawn from no distribution);
* a factory ``'package.module:function'``: the factory called with ``split='test'`` when it takes a
  ``split`` argument, else none.

At most ``n_eval`` samples are evaluated: a subset drawn with the fixed seed :data:`HELDOUT_SEED`, so
every run of a study (and every call) sees the same samples. ``meta['rows']`` lists them (row numbers of
the split; for digits, of the whole file).
"""

from __future__ import annotations

import inspect

import torch

from landscope.factories import import_factory
from landscope.problem.data import digits, halfspace, load_dataset
from landscope.problem.dataset import Dataset
from landscope.problem.evaluate import loss_and_accuracy
from landscope.spec import HELDOUT_SAMPLES

HELDOUT_SEED = 1  # draws the evaluated subset: the same for every run and every call
HALFSPACE_SEED_OFFSET = 2**32  # the held-out half-space sample uses data_seed + this: never a training seed
HELDOUT_COLUMNS = ("test_loss", "test_accuracy", "generalization_gap")

# built-in datasets with a split of their own, and the split evaluated
SPLIT_OF = {"fashion_mnist": "test", "cifar10": "test", "cifar100": "test", "mnist1d": "test",
            "ptb": "valid", "wikitext2": "valid", "shakespeare": "valid"}
# options that cut a training subset: the held-out split is cut by n_eval instead
SUBSET_OPTIONS = ("n_train", "n_windows")


def why_no_heldout(section: dict) -> str | None:
    """None when the dataset of a config's ``dataset:`` section has held-out samples; else why not."""
    name = section["name"]
    if section.get("split", "train") != "train":
        return f"{name} trains on its {section['split']} split"
    if ":" in name:
        if "split" not in inspect.signature(import_factory(name, "dataset.name")).parameters:
            return f"dataset factory {name} takes no split argument"
        return None
    if name == "analytic":
        return "the analytic examples' two samples are fixed functions, drawn from no distribution"
    if name == "digits" and section.get("n_train") is None:
        return "digits trains on every one of its 1,797 rows; set dataset.n_train to hold out the rest"
    if name not in SPLIT_OF and name not in HELDOUT_LOADERS:
        return f"no held-out rule for dataset {name}"
    return None


def subsample(data: Dataset, n_eval: int | None, seed: int = HELDOUT_SEED) -> Dataset:
    """At most ``n_eval`` samples of ``data`` (None: all), drawn with ``seed``, in their order in
    ``data``; ``meta['rows']`` holds their row numbers."""
    n = len(data)
    if n_eval is None or n <= n_eval:
        rows = torch.arange(n)
    else:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_eval].sort().values
    fstar = data.f_i_star[rows] if data.f_i_star is not None else None
    return Dataset(data.x[rows], data.y[rows], data.name, fstar, {**data.meta, "rows": rows.tolist()})


def digits_heldout(section: dict, n_eval: int | None, data_dir: str | None = None) -> Dataset | None:
    """A seeded subset of the digits rows after the first ``n_train`` (the training rows); None when
    training takes every row."""
    every = digits()
    n_train = section["n_train"]
    if n_train >= len(every):
        return None
    rest = Dataset(every.x[n_train:], every.y[n_train:], "digits", meta={**every.meta, "split": "heldout"})
    out = subsample(rest, n_eval)
    return Dataset(out.x, out.y, out.name, None, {**out.meta, "rows": [n_train + r for r in out.meta["rows"]]})


def halfspace_heldout(section: dict, n_eval: int | None, data_dir: str | None = None) -> Dataset:
    """A fresh sample of the training distribution: n_eval // 2 per class (None: as many as training)."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    seed = kwargs.get("data_seed", 0) + HALFSPACE_SEED_OFFSET
    n_per_class = kwargs.get("n_per_class", 20) if n_eval is None else max(1, n_eval // 2)
    out = halfspace(**{**kwargs, "n_per_class": n_per_class, "data_seed": seed})
    return Dataset(out.x, out.y, out.name, out.f_i_star, {**out.meta, "split": "heldout",
                                                          "rows": list(range(len(out)))})


def split_heldout(section: dict, n_eval: int | None, data_dir: str | None) -> Dataset:
    """The dataset's own held-out split (built-ins: SPLIT_OF, without the training-subset options;
    a factory: its options with split='test'), subsampled to ``n_eval``."""
    name = section["name"]
    if ":" in name:
        return subsample(load_dataset({**section, "split": "test"}, data_dir), n_eval)
    kept = {k: v for k, v in section.items() if k not in SUBSET_OPTIONS}
    return subsample(load_dataset({**kept, "split": SPLIT_OF[name]}, data_dir), n_eval)


# datasets whose held-out samples are not a split of their own (the rest: split_heldout)
HELDOUT_LOADERS = {"digits": digits_heldout, "halfspace": halfspace_heldout}


def load_heldout(spec, n_eval: int | None = HELDOUT_SAMPLES, device=None) -> Dataset | None:
    """The held-out samples of a RunSpec's dataset (at most ``n_eval``; None: the whole split), on
    ``device``; None when the dataset has none (:func:`why_no_heldout`) or ``n_eval`` is 0."""
    section = spec.dataset
    if n_eval == 0 or why_no_heldout(section) is not None:
        return None
    data = HELDOUT_LOADERS.get(section["name"], split_heldout)(section, n_eval, spec.data_dir)
    if data is None or len(data) == 0:
        return None
    fstar = data.f_i_star.to(device) if data.f_i_star is not None else None
    return Dataset(data.x.to(device), data.y.to(device), data.name, fstar, data.meta)


def heldout_metrics(problem, heldout: Dataset | None, train_loss: float) -> dict[str, float | None]:
    """test_loss and test_accuracy on ``heldout`` at the model's current parameters (evaluation mode,
    as the full-batch training loss), and generalization_gap = test_loss - ``train_loss``. Accuracy
    follows the training accuracy's rule (NaN where it does not apply: regression); every value is
    None (null in the tables) without held-out samples."""
    if heldout is None:
        return dict.fromkeys(HELDOUT_COLUMNS)
    loss, acc = loss_and_accuracy(problem.model, problem.loss_fn, heldout.x, heldout.y,
                                  problem.spec.eval_batch_size)
    return {"test_loss": loss, "test_accuracy": acc, "generalization_gap": loss - train_loss}
