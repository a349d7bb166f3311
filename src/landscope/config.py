"""Study configuration: validation with clear messages, defaults, and expansion into runs.

A study config (YAML) is validated against ``schemas/config.schema.yaml``; defaults from the schema
are filled in; every experiment expands into :class:`RunSpec` objects (sweep values x seeds).
``RunSpec`` is plain data: it travels to Snakemake jobs as ``params`` and back with ``from_dict``.
Torch-free: built-in names and options come from :mod:`landscope.problem.registry`, data availability
from :mod:`landscope.problem.sources`, so planning the DAG imports neither torch nor the loaders.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from landscope.factories import ConfigError, check_keywords
from landscope.problem import registry
from landscope.problem.sources import availability_problem
from landscope.settings import check_surfaces, load_schema
from landscope.spec import ExperimentSpec, RunSpec, Study

SAFE_VALUE = re.compile(r"^[A-Za-z0-9.+_-]{1,64}$")
# Exponent notation that YAML 1.1 (PyYAML) reads as a string: `1e-4`, `2E+3`, `5.e-2` (it needs a dot and a signed
# exponent to see a float). Where the schema wants a number such a string is taken as the number it spells.
EXPONENT_STRING = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$")


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        node = root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def fill_defaults(instance: Any, schema: dict, root: dict) -> Any:
    """Fill schema defaults into ``instance`` (recursively, objects only); returns a new object."""
    schema = _resolve(schema, root)
    if not isinstance(instance, dict):
        return instance
    out = dict(instance)
    props = schema.get("properties", {})
    for key, sub in props.items():
        sub_r = _resolve(sub, root)
        if key not in out and "default" in sub_r:
            out[key] = copy.deepcopy(sub_r["default"])
        if key in out:
            out[key] = fill_defaults(out[key], sub_r, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in out:
            if key not in props:
                out[key] = fill_defaults(out[key], extra, root)
    return out


def _types(schema: dict) -> list:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def as_number(value: Any, schema: dict) -> Any:
    """``value``, or the number it spells when it is a string in exponent notation (``1e-4``, a string to
    YAML 1.1) and ``schema`` wants a number (an integer: only when the number is whole). Not where a
    mapping may stand (a sweep value): what it replaces is known only there, and read then."""
    types = _types(schema)
    if not (isinstance(value, str) and EXPONENT_STRING.match(value)) or "object" in types:
        return value
    if "number" in types:
        return float(value)
    if "integer" in types and float(value).is_integer():
        return int(float(value))
    return value


def read_numbers(instance: Any, schema: dict | None, root: dict) -> Any:
    """``instance`` with :func:`as_number` applied wherever its schema wants a number (objects and arrays,
    recursively); keys without a schema (a model's or dataset's options) are left as written."""
    if schema is None:
        return instance
    schema = _resolve(schema, root)
    instance = as_number(instance, schema)
    if isinstance(instance, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: read_numbers(v, props.get(k, extra if isinstance(extra, dict) else None), root)
                for k, v in instance.items()}
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [read_numbers(v, schema["items"], root) for v in instance]
    return instance


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _explain(err: jsonschema.ValidationError) -> str:
    where = _where(err.absolute_path)
    got = json.dumps(err.instance, default=str)
    if len(got) > 80:
        got = got[:77] + "..."
    v, s = err.validator, err.validator_value
    if v == "enum":
        allowed = ", ".join(json.dumps(x) for x in s)
        return f"config key '{where}': got {got}; allowed values: {allowed}"
    if v == "additionalProperties" and isinstance(err.instance, dict):
        known = sorted(err.schema.get("properties", {}))
        unknown = sorted(k for k in err.instance if k not in known)
        return (f"config key '{where}': unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed keys: {', '.join(known)}")
    if v == "required":
        return f"config key '{where}': {err.message}"
    if v == "type":
        return f"config key '{where}': got {got}; expected type {s}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return f"config key '{where}': got {got}; must be {op} {s}"
    if v == "pattern":
        return f"config key '{where}': got {got}; must match {s}"
    if v == "propertyNames":
        return f"config key '{where}': name {err.message}"
    return f"config key '{where}': got {got}; {err.message}"


def _non_finite(node, path):
    """(path, value) of every NaN or infinite number in a parsed config (YAML .nan, .inf)."""
    if isinstance(node, float) and not math.isfinite(node):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _non_finite(v, (*path, i))


def validate(config: dict, schema: dict | None = None) -> dict:
    """Validate a raw study config and return it with defaults filled in.

    Raises ConfigError listing every problem found (key, bad value, what is allowed).
    """
    schema = schema or load_schema()
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping, got {type(config).__name__}")
    config = read_numbers(config, schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    bad_numbers = list(_non_finite(config, ()))
    if bad_numbers:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(
            f"config key '{_where(path)}': got {value}; numbers must be finite" for path, value in bad_numbers))
    if errors:
        # propertyNames errors report the parent; add the offending name itself
        lines = [_explain(e) for e in errors]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines))
    full = fill_defaults(config, schema, schema)
    exp_schema = _resolve(schema["properties"]["experiments"]["additionalProperties"], schema)
    for name, exp in full["experiments"].items():
        for key, values in exp["sweep"].items():
            axis = _axis_schema(name, exp, key, exp_schema, schema)
            exp["sweep"][key] = _section_values(name, exp, key, values, exp_schema, schema, axis)
        _check_semantics(name, exp)
    return full


def _closest(word: str, valid, prefix: str) -> str:
    """'; closest valid keys: ...' (difflib), or every valid key when none is close."""
    valid = sorted(valid)
    close = difflib.get_close_matches(word, valid, n=3, cutoff=0.6)
    if close:
        return "; closest valid keys: " + ", ".join(prefix + c for c in close)
    return "; valid keys: " + (", ".join(prefix + c for c in valid) or "(none)")


def _axis_schema(name: str, exp: dict, key: str, exp_schema: dict, root: dict) -> dict | None:
    """The schema of the key a sweep axis names, checked like that key outside ``sweep``: every part of
    the dotted path must be a key of the experiment (a model's or dataset's option: of its built-in
    factory), else a ConfigError naming the axis and the closest valid keys. None for an option, which
    has no schema (so is not checked, for a bring-your-own factory or a swept component name)."""
    where, parts = f"experiments.{name}.sweep.{key}", key.split(".")
    if parts[0] in ("sweep", "seeds"):
        raise ConfigError(f"config key '{where}': cannot sweep over '{parts[0]}'; list seeds under 'seeds'")
    schema = exp_schema
    for i, part in enumerate(parts):
        done, last = ".".join(parts[:i]), i == len(parts) - 1
        prefix = done + "." if done else ""
        props = schema.get("properties", {})
        if i == 1 and parts[0] in ("model", "dataset") and part != "name":
            kind, section = parts[0], exp[parts[0]]
            if f"{kind}.name" in exp["sweep"] or kind in exp["sweep"] or ":" in section["name"]:
                return None
            builtin = registry.MODELS if kind == "model" else registry.DATASETS
            implicit = registry.MODEL_IMPLICIT if kind == "model" else ()
            options = set(builtin[section["name"]].text().options) - set(implicit)
            if part in options and last:
                return None
            if part in options:
                raise ConfigError(f"config key '{where}': sweep axis '{key}' names no key of the experiment: "
                                  f"'{prefix}{part}' is an option of {kind} {section['name']!r}, not a section")
            raise ConfigError(f"config key '{where}': sweep axis '{key}' names no key of the experiment: '{part}' "
                              f"is not an option of {kind} {section['name']!r}" + _closest(part, options | {"name"}, prefix))
        if part not in props:
            what = (f"'{part}' is not a key of '{done}'" if done else f"'{part}' is not a key of the experiment")
            if not props:
                what = f"'{done}' is not a section of the experiment"
            valid = set(props) - {"sweep", "seeds"}
            raise ConfigError(f"config key '{where}': sweep axis '{key}' names no key of the experiment: {what}"
                              + (_closest(part, valid, prefix) if valid else ""))
        schema = _resolve(props[part], root)
    return schema


def _section_values(name: str, exp: dict, key: str, values: list, exp_schema: dict, root: dict,
                    axis: dict | None) -> list:
    """Sweep values checked as the key they replace: a plain value against that key's schema
    ``axis`` (exponent strings read as numbers there); a mapping replaces a whole section: validate each one as
    that section of the experiment, fill its defaults, and keep its point label under ``label``."""
    where = f"experiments.{name}.sweep.{key}"
    if not any(isinstance(v, dict) for v in values):
        if axis is None:
            return values
        values = [as_number(v, axis) for v in values]
        validator = jsonschema.Draft202012Validator({**axis, "$defs": root.get("$defs", {})})
        for i, value in enumerate(values):
            errors = [_explain(e).replace("config key '<top level>'", f"config key '{where}[{i}]'")
                      for e in validator.iter_errors(value)]
            if errors:
                raise ConfigError("invalid sweep value:\n  - " + "\n  - ".join(errors))
        return values
    if not all(isinstance(v, dict) for v in values):
        raise ConfigError(f"config key '{where}': mix of mappings and plain values; use one kind per axis")
    parent, leaf = _walk(exp, key, f"experiments.{name}.sweep")
    if not isinstance(parent.get(leaf), dict):
        raise ConfigError(f"config key '{where}': mapping values replace a section, but '{key}' is not a "
                          "section of the experiment (sweep plain values for single keys)")
    validator = jsonschema.Draft202012Validator({**exp_schema, "$defs": root.get("$defs", {})})
    out, labels = [], []
    for i, value in enumerate(values):
        section = {k: v for k, v in value.items() if k != "label"}
        label = value.get("label", section.get("name"))
        if not isinstance(label, str) or not label:
            raise ConfigError(f"config key '{where}[{i}]': a mapping value needs a 'label' (or a 'name') "
                              "to name its sweep point")
        trial = copy.deepcopy(exp)
        del trial["sweep"]
        parent_t, _ = _walk(trial, key, where)
        parent_t[leaf] = section
        trial = read_numbers(trial, exp_schema, root)
        errors = sorted(validator.iter_errors(trial), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            raise ConfigError(f"invalid sweep value {where}[{i}] (label {label!r}):\n  - " +
                              "\n  - ".join(_explain(e) for e in errors))
        filled, _ = _walk(fill_defaults(trial, exp_schema, root), key, where)
        out.append({"label": label, **filled[leaf]})
        labels.append(label)
    if len(set(labels)) != len(labels):
        raise ConfigError(f"config key '{where}': labels {labels} are not unique; give each mapping a distinct 'label'")
    return out


def _check_semantics(name: str, exp: dict) -> None:
    where = f"experiments.{name}"
    model, dataset = exp["model"]["name"], exp["dataset"]["name"]
    registry.check_model_name(model, f"{where}.model.name")
    registry.check_dataset_name(dataset, f"{where}.dataset.name")
    if ":" not in dataset:
        check_keywords(exp["dataset"], registry.DATASETS[dataset].text().options, "dataset", f"{where}.dataset")
    if ":" not in model and "model.name" not in exp["sweep"]:
        check_keywords(exp["model"], registry.MODELS[model].text().options, "model", f"{where}.model",
                       implicit=registry.MODEL_IMPLICIT)
    fstar = exp["f_i_star"]
    if isinstance(fstar, str) and fstar != "exact":
        raise ConfigError(f"config key '{where}.f_i_star': got {fstar!r}; allowed: a number or 'exact'")
    dt = exp["drift_tolerance"]
    if isinstance(dt, str) and dt != "auto":
        raise ConfigError(f"config key '{where}.drift_tolerance': got {dt!r}; allowed: 'auto' or a number >= 0")
    if not isinstance(dt, str) and dt < 0:
        raise ConfigError(f"config key '{where}.drift_tolerance': got {dt}; must be >= 0")
    am = exp["conditions"]["alpha_max"]
    if isinstance(am, str) and am != "auto":
        raise ConfigError(f"config key '{where}.conditions.alpha_max': got {am!r}; allowed: 'auto' or a number > 0")
    if exp["snapshot_every"] > exp["steps"]:
        raise ConfigError(
            f"config key '{where}.snapshot_every': got {exp['snapshot_every']}, more than "
            f"steps={exp['steps']}; use a value <= steps")

    check_surfaces(name, exp)
    for key, values in exp["sweep"].items():
        parent, leaf = _walk(exp, key, f"{where}.sweep")
        for v in values:
            if isinstance(v, dict) and key in ("model", "dataset"):
                check_name = registry.check_model_name if key == "model" else registry.check_dataset_name
                check_name(v["name"], f"{where}.sweep.{key}.name")
        for v in map(_point_value, values):
            if not SAFE_VALUE.match(_fmt(v)):
                raise ConfigError(
                    f"config key '{where}.sweep.{key}': value {v!r} cannot name a run directory; "
                    "use letters, digits, '.', '+', '_', '-' only")


def _walk(exp: dict, dotted: str, where: str):
    parts = dotted.split(".")
    node = exp
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"config key '{where}.{dotted}': '{p}' is not a section of the experiment")
        node = node[p]
    if parts[0] in ("sweep", "seeds"):
        raise ConfigError(f"config key '{where}.{dotted}': cannot sweep over '{parts[0]}'; list seeds under 'seeds'")
    return node, parts[-1]


def _point_value(v):
    """What names a sweep value in points and run directories: the label of a mapping, else itself."""
    return v["label"] if isinstance(v, dict) else v


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return repr(v)
    return str(v)


def expand_experiment(name: str, exp: dict, top: dict) -> ExperimentSpec:
    keys = list(exp["sweep"])
    combos = list(itertools.product(*[exp["sweep"][k] for k in keys])) or [()]
    runs = []
    for combo in combos:
        concrete = copy.deepcopy(exp)
        shown = [_point_value(v) for v in combo]
        for k, v in zip(keys, combo):
            parent, leaf = _walk(concrete, k, f"experiments.{name}.sweep")
            parent[leaf] = {a: b for a, b in v.items() if a != "label"} if isinstance(v, dict) else v
        point = ",".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in zip(keys, shown)) or "all"
        # momentum_follows_lr is left out at its default (false), as RunSpec.to_dict leaves out source: runs
        # from before the key existed keep their config hash (and their checkpoints)
        optimizer = {k: v for k, v in concrete["optimizer"].items() if not (k == "momentum_follows_lr" and v is False)}
        for seed in exp["seeds"]:
            label = "_".join(f"{k.split('.')[-1]}-{_fmt(v)}" for k, v in zip(keys, shown))
            run = f"{label}_seed-{seed}" if label else f"seed-{seed}"
            runs.append(RunSpec(
                experiment=name, run=run, point=point,
                sweep={k: v for k, v in zip(keys, shown)}, seed=seed,
                model=concrete["model"], dataset=concrete["dataset"], loss=concrete["loss"],
                optimizer=optimizer, schedule=concrete["schedule"],
                batch_size=concrete["batch_size"], steps=concrete["steps"],
                snapshot_every=concrete["snapshot_every"], f_i_star=concrete["f_i_star"],
                minimizer=concrete["minimizer"], drift_tolerance=concrete["drift_tolerance"],
                eval_batch_size=concrete["eval_batch_size"],
                directions_every=concrete["directions_every"], device=top["device"],
                data_dir=top["data_dir"], torch_threads=top["torch_threads"], source=concrete["source"],
                heldout_samples=concrete["heldout_samples"]))
    names = [r.run for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"experiments.{name}.sweep: sweep values give the same run name twice ({', '.join(dup)}); "
                          "make the values (or labels) distinct")
    return ExperimentSpec(name=name, title=exp["title"] or name, runs=runs,
                          conditions=exp["conditions"], sweep_keys=keys, raw=exp)


def load_study(config: dict | str | Path) -> Study:
    """Validate a config (dict or YAML path) and expand it into a Study.

    Experiments with ``if_data_missing: skip`` whose dataset is not available are left out and
    listed in ``Study.skipped`` with the reason; with ``defer`` they stay, listed in ``Study.deferred``.
    """

    if isinstance(config, (str, Path)):
        with open(config) as fh:
            config = yaml.safe_load(fh)
    full = validate(config)
    experiments, skipped, deferred = {}, {}, {}
    for name, exp in full["experiments"].items():
        if not exp["enabled"]:
            skipped[name] = "enabled: false"
            continue
        problem = availability_problem(exp["dataset"], full["data_dir"], fetch=exp["if_data_missing"] == "fetch")
        if problem:
            if exp["if_data_missing"] == "skip":
                skipped[name] = problem
                continue
            if exp["if_data_missing"] == "defer":
                deferred[name] = problem
            else:
                raise ConfigError(f"experiment '{name}': {problem}")
        experiments[name] = expand_experiment(name, exp, full)
    if not experiments:
        raise ConfigError("no experiment left to run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return Study(experiments=experiments, skipped=skipped, deferred=deferred)


# ----------------------------------------------------------------------------------- reference
def _type_text(sub: dict) -> str:
    t = sub.get("type", "object" if "properties" in sub else "")
    text = " or ".join(t) if isinstance(t, list) else str(t)
    if "enum" in sub:
        text = " \\| ".join(f"`{v}`" if v is not None else "`null`" for v in sub["enum"])
    bounds = [f"{op} {sub[k]}" for k, op in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                              ("maximum", "≤"), ("exclusiveMaximum", "<")) if k in sub]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _cell_text(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _schema_rows(props: dict, prefix: str, root: dict) -> list[str]:
    rows, nested = [], []
    for key, sub in props.items():
        sub = _resolve(sub, root)
        default = json.dumps(sub["default"]) if "default" in sub else "required"
        rows.append(f"| `{prefix}{key}` | {_type_text(sub)} | `{default}` | {_cell_text(sub.get('description', ''))} |")
        if sub.get("properties") and key not in ("model", "dataset"):
            nested.append((f"{prefix}{key}.", sub["properties"]))
    for pre, sub_props in nested:
        rows += _schema_rows(sub_props, pre, root)
    return rows


def _factory_rows(builtin: dict) -> list[str]:
    rows = []
    for name in sorted(builtin):
        options, doc = builtin[name].text()
        opts = ", ".join(f"`{key}`" + (f"={default}" if default is not None else "")
                         for key, default in options.items() if key not in registry.MODEL_IMPLICIT)
        rows.append(f"| `{name}` | {_cell_text(doc.split(chr(10) * 2)[0])} | {opts or '—'} |")
    return rows


def config_reference() -> str:
    """The config reference in Markdown, generated from the schema and the built-in factories'
    signatures (docs/config.md is this text; a test keeps them equal)."""

    schema = load_schema()
    exp = _resolve(schema["$defs"]["experiment"], schema)
    head = "| key | type | default | meaning |\n|---|---|---|---|"
    parts = [
        "# Config reference",
        "",
        "Generated from `src/landscope/schemas/config.schema.yaml` and the built-in factories by",
        "`python -m landscope.config > docs/config.md`; do not edit by hand.",
        "",
        _cell_text(schema.get("description", "")),
        "",
        "## Study (top level)",
        "",
        head,
        *_schema_rows({k: v for k, v in schema["properties"].items() if k != "experiments"}, "", schema),
        "",
        "## Experiment (`experiments.<name>.…`)",
        "",
        head,
        *_schema_rows(exp["properties"], "", schema),
        "",
        "## Built-in models (`model: {name: …, options}`)",
        "",
        "Every model also receives `in_features` and `n_classes` from the data.",
        "",
        "| name | what | options (default) |\n|---|---|---|",
        *_factory_rows(registry.MODELS),
        "",
        "## Built-in datasets (`dataset: {name: …, options}`)",
        "",
        "| name | what | options (default) |\n|---|---|---|",
        *_factory_rows(registry.DATASETS),
        "",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    print(config_reference(), end="")
