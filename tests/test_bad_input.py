"""Bad input: every mistake stops early with a message naming the key, the value and the fix.

(test_config.py covers unknown names and range errors; this file adds type errors, unsafe path
values, factories that fail to import, f_i* that nobody knows, and a malicious checkpoint.)
"""

import json
import math
import os
import pickle

import pytest
import torch
from conftest import make_study

from landscope.config import load_study
from landscope.factories import ConfigError
from landscope.problem import build
from landscope.problem.evaluate import cosine, norm_of
from landscope.trajectory import rundir

BASE = {"model": {"name": "mlp"}, "dataset": {"name": "digits", "n_train": 200}}


def config_error(exp_update=None, **top) -> str:
    with pytest.raises(ConfigError) as info:
        if "experiments" in top:
            load_study(top)
        else:
            make_study({**BASE, **(exp_update or {})}, **top)
    return str(info.value)


@pytest.mark.parametrize("update, needles", [
    ({"steps": True}, ["experiments.t.steps", "got true", "expected type integer"]),
    ({"batch_size": 1.5}, ["experiments.t.batch_size", "1.5", "integer"]),
    ({"optimizer": {"name": "sgd", "lr": "0.1"}}, ["experiments.t.optimizer.lr", '"0.1"', "number"]),
    ({"model": "mlp"}, ["experiments.t.model", '"mlp"', "object"]),
    ({"seeds": "0"}, ["experiments.t.seeds", '"0"', "array"]),
    ({"seeds": [0, 0]}, ["experiments.t.seeds", "non-unique"]),
    ({"sweep": {"model.width": 8}}, ["experiments.t.sweep.model.width", "got 8", "array"]),
])
def test_config_type_errors_name_key_value_and_type(update, needles):
    msg = config_error(update)
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("top, needles", [
    ({"experiments": []}, ["'experiments'", "got []", "object"]),
    ({"experiments": {"t": None}}, ["experiments.t", "null", "object"]),
    ({"experiments": {"t": BASE}, "bogus": 1}, ["'bogus'", "allowed keys: data_dir, device, experiments"]),
])
def test_top_level_type_errors(top, needles):
    msg = config_error(**top)
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("value", ["a/b", "", "x" * 65, "é", "w=1", "a b", "..\\x", "$(rm)"])
def test_sweep_values_that_would_make_unsafe_paths_are_refused(value):
    msg = config_error({"sweep": {"model.width": [8, value]}})
    assert "experiments.t.sweep.model.width" in msg and repr(value) in msg
    assert "cannot name a run directory; use letters, digits, '.', '+', '_', '-' only" in msg


def test_unsafe_label_of_a_mapping_sweep_is_refused():
    msg = config_error({"sweep": {"optimizer": [{"label": "a/../../b", "name": "sgd"}]}})
    assert "'a/../../b'" in msg and "cannot name a run directory" in msg


@pytest.mark.parametrize("lr", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(lr):
    msg = config_error({"optimizer": {"name": "sgd", "lr": lr}})
    assert "experiments.t.optimizer.lr" in msg and "numbers must be finite" in msg


# ----------------------------------------------------------------------------------- factories
BROKEN_MODULES = {
    "lsbroken_raises": "raise RuntimeError('boom at import')\n",
    "lsbroken_syntax": "def make(:\n",
    "lsbroken_noattr": "def other():\n    return 1\n",
    "lsbroken_notcallable": "make = 3\n",
}


@pytest.fixture
def broken_modules(tmp_path, monkeypatch):
    for name, text in BROKEN_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("section", ["model", "dataset"])
@pytest.mark.parametrize("factory, needles", [
    ("nosuch.module:fn", ["cannot import module 'nosuch.module'", "'nosuch.module:fn'",
                          "ModuleNotFoundError", "Is it installed / on PYTHONPATH?"]),
    ("lsbroken_raises:make", ["cannot import module 'lsbroken_raises'", "RuntimeError: boom at import"]),
    ("lsbroken_syntax:make", ["cannot import module 'lsbroken_syntax'", "SyntaxError"]),
    ("lsbroken_noattr:make", ["module 'lsbroken_noattr' has no callable 'make'"]),
    ("lsbroken_notcallable:make", ["module 'lsbroken_notcallable' has no callable 'make'"]),
])
def test_bring_your_own_factory_that_fails_to_import(broken_modules, section, factory, needles):
    msg = config_error({section: {"name": factory}})
    assert f"config key 'experiments.t.{section}.name'" in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


# ----------------------------------------------------------------------------------- f_i*
@pytest.mark.parametrize("optimizer", ["sps_max", "decsps", "ngn"])
def test_optimizer_needing_f_i_star_on_a_dataset_without_minima(optimizer):
    spec = make_study({**BASE, "optimizer": {"name": optimizer, "lr": 0.1}, "f_i_star": "exact"}).experiments["t"].runs[0]
    with pytest.raises(ValueError) as info:
        build.build_problem(spec)
    assert str(info.value) == (
        f"run t/seed-0: f_i_star: exact, but dataset 'digits' provides no per-sample minima "
        f"(optimizer {optimizer} computes its step size from f_i* and the beta term of T uses it); "
        "give a number instead, e.g. f_i_star: 0.0 for a non-negative loss such as cross-entropy")


def test_f_i_star_exact_with_a_dataset_that_has_minima_builds():
    spec = make_study({"model": {"name": "halfspace_logistic"}, "dataset": {"name": "halfspace", "n_per_class": 5},
                       "optimizer": {"name": "sps_max", "lr": 0.1}, "batch_size": 1, "f_i_star": "exact"}
                      ).experiments["t"].runs[0]
    problem = build.build_problem(spec)
    assert problem.fstar is not None and problem.fstar.shape == (10,) and bool((problem.fstar > 0).all())


# ----------------------------------------------------------------------------------- security
class _Payload:
    """Unpickling this runs os.system: what a poisoned checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """Even with a matching SHA-256 sidecar (an attacker can write both), weights_only=True refuses."""
    marker = tmp_path / "pwned"
    path = rundir.checkpoint_path(tmp_path, 0)
    torch.save({"model": {}, "evil": _Payload(marker)}, path, pickle_protocol=2)
    path.with_suffix(".json").write_text(json.dumps({"sha256": rundir.file_sha256(path), "config_hash": "x"}))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        rundir.load_checkpoint(path, "x")
    assert not marker.exists()
    torch.save({"model": {}, "evil": _Payload(marker)}, tmp_path / "minimizer.pt")
    (tmp_path / "minimizer.json").write_text(json.dumps({"sha256": rundir.file_sha256(tmp_path / "minimizer.pt")}))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        rundir.load_minimizer(tmp_path / "minimizer.pt")
    assert not marker.exists()


def test_cosine_of_opposite_vectors_is_clamped_to_minus_one():
    """direction_row's cos_angle: an exactly opposite pair whose float64 quotient rounds to
    -1.0000000000000002 (found by search), computed as direction_row does, is clamped to -1."""
    g = torch.tensor([0.6888437030500962, 0.515908805880605], dtype=torch.float64)
    d = -1.3196575844094505 * g
    dot, gnorm, dist = float((g * d).sum()), norm_of([g]), norm_of([d])
    assert dot / (gnorm * dist) == -1.0000000000000002
    assert cosine(dot, gnorm, dist) == -1.0
    assert cosine(-dot, gnorm, dist) == 1.0
    assert cosine(0.3, 1.0, 0.5) == 0.6
    assert math.isnan(cosine(0.0, 0.0, 1.0)) and math.isnan(cosine(0.0, 1.0, 0.0))
