"""Config validation: every mistake names the key, the bad value and what is allowed."""

import re
import subprocess

import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, make_study

from landscope.config import load_study
from landscope.factories import ConfigError
from landscope.settings import load_schema
from landscope.spec import RunSpec

BASE = {"model": {"name": "mlp"}, "dataset": {"name": "digits"}}


def bad(exp_update=None, top=None):
    exp = {**BASE, **(exp_update or {})}
    with pytest.raises(ConfigError) as info:
        make_study(exp, **(top or {}))
    return str(info.value)


def test_shipped_configs_validate():
    for name in ("config.yaml", "smoke.yaml"):
        study = load_study(ROOT / "config" / name)
        assert study.experiments
    default = load_study(ROOT / "config" / "config.yaml")
    assert {"halfspace", "digits_mlp"} <= set(default.experiments)
    widths = sorted({r.model["width"] for r in default.experiments["digits_mlp"].runs})
    assert widths == [16, 64, 256]
    assert len(default.experiments["digits_mlp"].runs) == 6


def test_defaults_are_filled_and_runs_expanded():
    study = make_study({**BASE, "seeds": [0, 1], "sweep": {"model.width": [8, 32], "optimizer.lr": [0.1, 0.05]}})
    runs = study.experiments["t"].runs
    assert len(runs) == 8
    r = runs[0]
    assert r.run == "width-8_lr-0.1_seed-0" and r.point == "width=8,lr=0.1"
    assert r.model["width"] == 8 and r.optimizer["lr"] == 0.1 and r.optimizer["name"] == "sgd"
    assert r.batch_size == 64 and r.minimizer == "last" and r.checkpoint_steps == [0, 250, 500, 750, 1000]
    assert RunSpec.from_dict(r.to_dict()) == r
    assert len({x.run for x in runs}) == 8


def test_mapping_sweep_values_replace_a_whole_section():
    opts = [{"label": "sgdm", "name": "sgd", "lr": 0.01, "momentum": 0.9}, {"name": "adam", "lr": 1e-4}]
    study = make_study({**BASE, "sweep": {"optimizer": opts, "batch_size": [32, 64]}})
    runs = {r.run: r for r in study.experiments["t"].runs}
    assert sorted(runs) == ["optimizer-adam_batch_size-32_seed-0", "optimizer-adam_batch_size-64_seed-0",
                            "optimizer-sgdm_batch_size-32_seed-0", "optimizer-sgdm_batch_size-64_seed-0"]
    sgdm = runs["optimizer-sgdm_batch_size-32_seed-0"]
    assert sgdm.point == "optimizer=sgdm,batch_size=32" and sgdm.sweep == {"optimizer": "sgdm", "batch_size": 32}
    assert sgdm.optimizer["name"] == "sgd" and sgdm.optimizer["momentum"] == 0.9 and "label" not in sgdm.optimizer
    adam = runs["optimizer-adam_batch_size-64_seed-0"].optimizer
    assert adam["name"] == "adam" and adam["lr"] == 1e-4 and adam["betas"] == [0.9, 0.999]  # schema defaults filled
    assert runs["optimizer-adam_batch_size-64_seed-0"].batch_size == 64


@pytest.mark.parametrize("sweep, needles", [
    ({"optimizer": [{"name": "sgd"}, {"name": "sgd", "lr": 0.5}]}, ["not unique", "'label'"]),
    ({"optimizer": [{"name": "sgdd"}]}, ["sweep.optimizer[0]", "sgdd", "allowed values"]),
    ({"optimizer": [{"lr": 0.1}]}, ["sweep.optimizer[0]", "needs a 'label'"]),
    ({"optimizer": [{"name": "sgd"}, 0.1]}, ["mix of mappings"]),
    ({"model.width": [{"name": "x"}]}, ["'model.width' is not a section"]),
    ({"model": [{"name": "resnet999"}]}, ["sweep.model.name", "resnet999", "mlp"]),
    ({"optimizer": [{"label": "../x", "name": "sgd"}]}, ["cannot name a run directory"]),
])
def test_bad_mapping_sweeps_are_named(sweep, needles):
    msg = bad({"sweep": sweep})
    for n in needles:
        assert n in msg, (n, msg)


def test_schema_defaults_reach_the_run_spec():
    """Every experiment-level default of the schema is a RunSpec field (or a known non-run key)."""
    schema = load_schema()
    exp_props = schema["$defs"]["experiment"]["properties"]
    fields = set(RunSpec.__dataclass_fields__)
    not_per_run = {"title", "figure", "scale_note", "enabled", "if_data_missing", "seeds", "sweep",
                   "conditions", "curvature", "surfaces", "diffusion"}
    assert set(exp_props) - not_per_run <= fields
    for key in ("device", "data_dir", "torch_threads"):
        assert key in schema["properties"] and key in fields


@pytest.mark.parametrize("update, top, needles", [
    ({"optimizer": {"lr": -1}}, None, ["experiments.t.optimizer.lr", "-1", "> 0"]),
    ({"optimizer": {"name": "sgdd"}}, None, ["experiments.t.optimizer.name", '"sgdd"', '"sgd", "adam", "adamw"']),
    ({"model": {"name": "resnet999"}}, None, ["experiments.t.model.name", "resnet999", "mlp", "halfspace_logistic"]),
    ({"dataset": {"name": "digits", "n_trian": 5}}, None, ["experiments.t.dataset", "'n_trian'", "options: n_train"]),
    ({"model": {"name": "mlp", "widht": 5}}, None, ["experiments.t.model", "'widht'", "depth, width"]),
    ({"model": {"name": "resnet18", "depth": 5}}, None, ["'depth'", "resnet18", "width"]),
    ({"dataset": {"name": "cifar"}}, None, ["experiments.t.dataset.name", "cifar", "digits", "fashion_mnist"]),
    ({"batch_sise": 3}, None, ["experiments.t", "'batch_sise'", "batch_size"]),
    ({"steps": "many"}, None, ["experiments.t.steps", '"many"', "integer"]),
    ({"seeds": []}, None, ["experiments.t.seeds"]),
    ({"snapshot_every": 500, "steps": 100}, None, ["snapshot_every", "500", "steps=100"]),
    ({"sweep": {"model.width": ["../../etc"]}}, None, ["sweep.model.width", "../../etc", "cannot name a run directory"]),
    ({"sweep": {"nosuch.width": [1]}}, None, ["sweep.nosuch.width", "'nosuch' is not a key of the experiment"]),
    ({"sweep": {"steps.x": [1]}}, None, ["sweep.steps.x", "'steps' is not a section"]),
    ({"sweep": {"model.width.x": [1]}}, None, ["sweep.model.width.x", "'model.width' is an option of model 'mlp'"]),
    ({"f_i_star": "guess"}, None, ["f_i_star", "guess", "'exact'"]),
    ({"minimizer": "middle"}, None, ["minimizer", "middle", '"last", "best"']),
    ({"conditions": {"pl_delta": 3}}, None, ["conditions.pl_delta", "3", "<= 2"]),
    ({}, {"device": "tpu"}, ["device", "tpu", '"auto", "cpu"']),
    ({"model": {"name": "no_such_module_xyz:make"}}, None, ["model.name", "cannot import module", "no_such_module_xyz"]),
])
def test_bad_values_are_explained(update, top, needles):
    msg = bad(update, top)
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("axis, closest", [
    ("model.widht", "model.width"),
    ("stpes", "steps"),
    ("optimizer.lrr", "optimizer.lr"),
    ("dataset.n_trian", "dataset.n_train"),
    ("curvature.enabeld", "curvature.enabled"),
])
def test_a_misspelled_sweep_axis_is_an_error_naming_the_closest_keys(axis, closest):
    """The issue's five axes: each validated (and swept nothing) before; now refused with the key meant."""
    msg = bad({"sweep": {axis: [8, 200]}})
    assert f"config key 'experiments.t.sweep.{axis}'" in msg and f"closest valid keys: {closest}" in msg, msg


def test_sweep_axes_that_name_real_keys_still_expand():
    study = make_study({**BASE, "sweep": {"model.width": [8, 16], "dataset.n_train": [100], "curvature.enabled":
                                          [False], "conditions.margin": [0.1]}})
    runs = study.experiments["t"].runs
    assert [r.model["width"] for r in runs] == [8, 16] and {r.dataset["n_train"] for r in runs} == {100}
    # an option axis of a swept or bring-your-own component is left to the factory (no schema to check it by)
    make_study({**BASE, "sweep": {"model.name": ["mlp", "logistic_regression"], "model.whatever": [1]}})


@pytest.mark.parametrize("value, needles", [
    (-1, ["sweep.optimizer.lr[1]", "got -1", "must be > 0"]),
    ("fast", ["sweep.optimizer.lr[1]", '"fast"', "expected type number"]),
    ("1e-4x", ["sweep.optimizer.lr[1]", '"1e-4x"', "expected type number"]),
])
def test_sweep_values_are_checked_like_the_key(value, needles):
    msg = bad({"sweep": {"optimizer.lr": [0.1, value]}})
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_exponent_notation_is_read_as_the_number_where_a_number_is_wanted():
    """YAML 1.1 (PyYAML) reads `1e-4` as a string; landscope takes it as 1e-4 where the schema wants a number,
    in a key, a sweep value and a mapping sweep value, and as a whole number where it wants an integer."""
    text = """
experiments:
  t:
    model: {name: mlp}
    dataset: {name: digits}
    optimizer: {name: adam, lr: 1e-3, eps: 1E-8}
    steps: 2e1
    snapshot_every: 1e1
    f_i_star: 5e-4
    sweep:
      schedule.min_lr: [1e-5, 2.5e-6]
      optimizer: [{name: sgd, lr: 5e-2}, {name: adam, lr: 1e-4}]
"""
    config = yaml.safe_load(text)
    assert config["experiments"]["t"]["steps"] == "2e1" and config["experiments"]["t"]["f_i_star"] == "5e-4"
    runs = load_study(config).experiments["t"].runs
    assert [r.optimizer["lr"] for r in runs] == [0.05, 1e-4, 0.05, 1e-4]
    assert [r.schedule["min_lr"] for r in runs] == [1e-5, 1e-5, 2.5e-6, 2.5e-6]
    assert type(runs[0].steps) is int and runs[0].steps == 20 and runs[0].snapshot_every == 10
    assert runs[0].f_i_star == 5e-4 and type(runs[0].f_i_star) is float
    with pytest.raises(ConfigError, match="experiments.t.steps': got \"1.5e0\"; expected type integer"):
        make_study({**BASE, "steps": "1.5e0"})
    with pytest.raises(ConfigError, match="got \"1e-4\"; allowed values"):
        make_study({**BASE, "loss": "1e-4"})                   # a string key keeps the string


def test_momentum_follows_lr_off_keeps_the_config_hash():
    """The new optimizer key is left out of a run's spec at its default, so runs from before it keep their
    config hash (and checkpoints); set, it is kept and changes the hash. 'e3c9484d69d708ad' is the smoke
    study's digits_mlp/width-8_seed-0 hash before the key existed (results/tables/runs)."""
    smoke = load_study(ROOT / "config" / "smoke.yaml").experiments["digits_mlp"]
    run = next(r for r in smoke.runs if r.run == "width-8_seed-0")
    assert "momentum_follows_lr" not in run.optimizer and run.config_hash() == "e3c9484d69d708ad"
    on = make_study({**BASE, "optimizer": {"name": "nsgdm", "momentum": 0.9, "momentum_follows_lr": True}})
    off = make_study({**BASE, "optimizer": {"name": "nsgdm", "momentum": 0.9}})
    assert on.experiments["t"].runs[0].optimizer["momentum_follows_lr"] is True
    assert on.experiments["t"].runs[0].config_hash() != off.experiments["t"].runs[0].config_hash()


def test_bad_experiment_name():
    with pytest.raises(ConfigError, match="must match"):
        load_study({"experiments": {"Bad Name": BASE}})
    with pytest.raises(ConfigError, match="must match"):
        load_study({"experiments": {"index": BASE}})


def test_missing_dataset_is_an_error_a_skip_or_deferred(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCOPE_DATA", str(tmp_path))
    monkeypatch.setattr("landscope.problem.sources.FASHION_SYSTEM_DIR", str(tmp_path / "none"))
    exp = {"model": {"name": "mlp"}, "dataset": {"name": "fashion_mnist"}}
    with pytest.raises(ConfigError, match="apt-get install -y dataset-fashion-mnist"):
        load_study({"experiments": {"f": exp, "d": BASE}})
    study = load_study({"experiments": {"f": {**exp, "if_data_missing": "skip"}, "d": BASE}})
    assert list(study.experiments) == ["d"] and "not installed" in study.skipped["f"]
    study = load_study({"experiments": {"f": {**exp, "if_data_missing": "defer"}, "d": BASE}})
    assert list(study.experiments) == ["f", "d"] and not study.skipped
    assert "apt-get install -y dataset-fashion-mnist" in study.deferred["f"]


def test_snakemake_stops_before_any_job_on_a_bad_config(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["experiments"]["digits_mlp"]["optimizer"]["lr"] = -0.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "experiments.digits_mlp.optimizer.lr" in text and "-0.5" in text and "> 0" in text
    assert "Job stats" not in text and "rule train" not in text


def test_paper_config_builds_the_whole_dag_without_its_data(tmp_path):
    """`snakemake -n --configfile config/paper.yaml` plans every run and segment, data or not."""
    study = load_study(ROOT / "config" / "paper.yaml")
    figures = {e.raw["figure"] for e in study.experiments.values()}
    for fig in ("2, 9", "4, 11, 12", "5, 13, 14", "6, 15", "16", "17", "7a-d, 18", "19"):
        assert any(fig in f for f in figures), fig
    out = subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(ROOT / "config" / "paper.yaml"),
                          "-d", str(tmp_path), "-s", str(ROOT / "Snakefile")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, flags=re.M))
    assert int(jobs["train"]) == int(jobs["snapshot"]) == len({r.training_key() for r in study.runs()})
    assert int(jobs["select_minimizer"]) == len(study.runs()) > int(jobs["train"])  # the minimizer sweeps share
    assert int(jobs["evaluate"]) == sum(r.n_segments for r in study.runs())
    assert int(jobs["report"]) == len(study.experiments) == 14


def test_docs_config_reference_is_generated_from_the_schema():
    """docs/config.md must equal `python -m landscope.config` (regenerate it after a schema change)."""
    from landscope.config import config_reference

    text = config_reference()
    assert (ROOT / "docs" / "config.md").read_text() == text, "run: python -m landscope.config > docs/config.md"
    schema = load_schema()
    for key in schema["$defs"]["experiment"]["properties"]:
        assert f"| `{key}` |" in text
    assert "| `optimizer.momentum` |" in text and "| `conditions.margin` |" in text
    assert "`bptt`=35" in text and "| `resnet9` |" in text  # factory options from their signatures
    assert "|  |" not in text, "every key needs a description in the schema"
