"""The study config's schema and the defaults of its sections; the per-experiment measurement sections
(``curvature:``, ``surfaces:``): checks, and which runs and iterates they cover. Torch-free: planning
the DAG reads them.

Every default lives in the schema (``schemas/config.schema.yaml``); the ``*_DEFAULTS`` dicts of this
module and of landscope.problem.optim are read from it (:func:`section_defaults`), not copied.
"""

from __future__ import annotations

import copy
import functools
import math
from importlib import resources

import yaml

from landscope.factories import ConfigError
from landscope.spec import checkpoint_steps

SCHEMA_RESOURCE = "schemas/config.schema.yaml"  # package data of landscope


def load_schema() -> dict:
    """The study config's JSON schema (``landscope/schemas/config.schema.yaml``), parsed afresh."""
    text = resources.files("landscope").joinpath(SCHEMA_RESOURCE).read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: ~4x faster, same result


@functools.cache
def _experiment_properties() -> dict:
    """The schema's experiment keys, parsed once per process (read only: section_defaults copies)."""
    return load_schema()["$defs"]["experiment"]["properties"]


def section_defaults(section: str) -> dict:
    """{key: default} of an experiment's ``section`` (an object of the schema whose every key has a
    default: optimizer, schedule, conditions, curvature, surfaces), in the schema's key order; a new
    dict with its own copies of list defaults on every call."""
    props = _experiment_properties()[section]["properties"]
    return {key: copy.deepcopy(sub["default"]) for key, sub in props.items()}


def _over_defaults(section: str, raw: dict | None, defaults: dict) -> dict:
    """The section's keys ``raw`` over its ``defaults``; unknown keys are named."""
    unknown = sorted(set(raw or {}) - set(defaults))
    if unknown:
        raise ValueError(f"{section}: unknown setting(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **(raw or {})}


# with the settings of flatness around x_K and the local learning coefficient (landscope.measures.flatness)
# and of the plateau-escape events from the steps table (landscope.measures.plateaus)
CURVATURE_DEFAULTS = section_defaults("curvature")


TOP_COLUMNS = ("lambda_max", "lambda_2", "lambda_3")


def curvature_settings(raw: dict | None) -> dict:
    """The experiment's ``curvature:`` section over CURVATURE_DEFAULTS; unknown keys are named."""
    out = _over_defaults("curvature", raw, CURVATURE_DEFAULTS)
    if not 1 <= out["top_k"] <= len(TOP_COLUMNS):
        raise ValueError(f"curvature.top_k must be 1..{len(TOP_COLUMNS)} (the columns "
                         f"{', '.join(TOP_COLUMNS)}), got {out['top_k']}")
    for key in ("eval_samples", "lanczos_iters", "slq_probes", "every"):
        if out[key] < 1:
            raise ValueError(f"curvature.{key} must be >= 1, got {out[key]}")
    for key in ("flatness_directions", "llc_chains"):
        if out[key] < 0:
            raise ValueError(f"curvature.{key} must be >= 0 (0 skips it), got {out[key]}")
    if out["llc_steps"] != "auto" and not (isinstance(out["llc_steps"], int) and out["llc_steps"] >= 1):
        raise ValueError(f"curvature.llc_steps must be auto or an integer >= 1, got {out['llc_steps']!r}")
    if out["llc_step_size"] != "auto" and not (isinstance(out["llc_step_size"], (int, float))
                                               and out["llc_step_size"] > 0):
        raise ValueError(f"curvature.llc_step_size must be auto or a number > 0, got {out['llc_step_size']!r}")
    if out["llc_max_steps"] < 1:
        raise ValueError(f"curvature.llc_max_steps must be >= 1, got {out['llc_max_steps']}")
    if out["llc_steps"] == "auto" and out["llc_gamma"] == 0 and out["llc_chains"] > 0:
        raise ValueError("curvature.llc_steps auto needs llc_gamma > 0 (its relaxation time is "
                         "1/(step size * gamma)); set llc_gamma > 0 or llc_steps to a number")
    for key in ("flatness_eps", "flatness_t_max"):
        if not out[key] > 0:
            raise ValueError(f"curvature.{key} must be > 0, got {out[key]}")
    if out["llc_gamma"] < 0:
        raise ValueError(f"curvature.llc_gamma must be >= 0, got {out['llc_gamma']}")
    if out["plateau_window"] < 1 or out["plateau_min_windows"] < 2:
        raise ValueError(f"curvature.plateau_window must be >= 1 and plateau_min_windows >= 2, got "
                         f"{out['plateau_window']}, {out['plateau_min_windows']}")
    if not (out["plateau_flat_tol"] >= 0 and 0 < out["plateau_grad_tol"] <= 1 and 0 < out["plateau_drop"] < 1):
        raise ValueError("curvature: need plateau_flat_tol >= 0, 0 < plateau_grad_tol <= 1 and "
                         f"0 < plateau_drop < 1, got {out['plateau_flat_tol']}, {out['plateau_grad_tol']}, "
                         f"{out['plateau_drop']}")
    blocks = out["blocks"]
    if not (blocks in ("modules", "none") or (isinstance(blocks, list) and blocks
                                              and all(isinstance(b, str) and b for b in blocks))):
        raise ValueError(f"curvature.blocks must be modules, none or a non-empty list of parameter name "
                         f"patterns, got {blocks!r}")
    if out["hutchinson_probes"] < 2:
        raise ValueError(f"curvature.hutchinson_probes must be >= 2 (for a standard error), got "
                         f"{out['hutchinson_probes']}")
    return out


PLATEAU_KEYS = ("plateau_window", "plateau_min_windows", "plateau_flat_tol", "plateau_grad_tol", "plateau_drop")


PLANES = ("random", "pca")


AUTO_MIN_CHECKPOINTS, AUTO_PATH_POINTS = 8, 20  # path_points: auto


SURFACES_DEFAULTS = section_defaults("surfaces")


def surfaces_settings(raw: dict | None) -> dict:
    """The experiment's ``surfaces:`` section over SURFACES_DEFAULTS; unknown keys and bad values are named."""
    s = _over_defaults("surfaces", raw, SURFACES_DEFAULTS)
    if s["seeds"] not in ("all", "first"):
        raise ValueError(f"surfaces.seeds must be 'all' or 'first', got {s['seeds']!r}")
    for key, low in (("eval_samples", 1), ("points_1d", 2), ("starts_1d", 0), ("grid", 2), ("path_points", 0),
                     ("seed", 0)):
        if key == "path_points" and s[key] == "auto":
            continue
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < low:
            also = " or 'auto'" if key == "path_points" else ""
            raise ValueError(f"surfaces.{key} must be an integer >= {low}{also}, got {s[key]!r}")
    if s["path_points"] == 1:
        raise ValueError("surfaces.path_points must be 'auto', 0 (the saved checkpoints only) or >= 2, got 1")
    for key in ("span_1d", "pca_margin"):
        if not (isinstance(s[key], (int, float)) and math.isfinite(s[key]) and s[key] >= 0):
            raise ValueError(f"surfaces.{key} must be a number >= 0, got {s[key]!r}")
    if not (isinstance(s["span_2d"], (int, float)) and math.isfinite(s["span_2d"]) and s["span_2d"] > 0):
        raise ValueError(f"surfaces.span_2d must be a number > 0, got {s['span_2d']!r}")
    planes = list(s["planes"])
    bad = [p for p in planes if p not in PLANES]
    if bad or len(set(planes)) != len(planes):
        raise ValueError(f"surfaces.planes must list distinct planes out of {list(PLANES)}, got {planes}")
    s["planes"] = planes
    return s


def path_steps(checkpoints: list[int], path_points: int | str) -> list[int]:
    """The steps of the iterates a run's path uses: the checkpoints, plus with ``path_points`` > 0
    ``path_points`` steps evenly spaced from the first to the last checkpoint (rounded). ``auto``:
    the checkpoints alone when there are at least AUTO_MIN_CHECKPOINTS of them (no replay), else
    AUTO_PATH_POINTS steps."""
    if path_points == "auto":
        path_points = 0 if len(checkpoints) >= AUTO_MIN_CHECKPOINTS else AUTO_PATH_POINTS
    steps = set(checkpoints)
    if path_points and checkpoints:
        lo, hi = checkpoints[0], checkpoints[-1]
        steps |= {lo + round(i * (hi - lo) / (path_points - 1)) for i in range(path_points)}
    return sorted(steps)


def check_surfaces(name: str, exp: dict) -> None:
    """Config-time checks of an experiment's ``surfaces:`` section (landscope.config calls this):
    the settings themselves, and that the PCA plane has at least three iterates to span it."""
    where = f"experiments.{name}.surfaces"
    try:
        s = surfaces_settings(exp.get("surfaces"))
    except ValueError as err:
        raise ConfigError(f"config key '{where}': {err}") from None
    if not s["enabled"] or "pca" not in s["planes"]:
        return
    marks = checkpoint_steps(exp["steps"], exp["snapshot_every"])
    n = len(path_steps(marks, s["path_points"]))
    if n < 3:
        raise ConfigError(
            f"config key '{where}.planes': the 'pca' plane needs at least 3 iterates, but with "
            f"path_points: {s['path_points']} and {len(marks)} checkpoints the path has {n}; set "
            "surfaces.path_points >= 3 (replays the run), a smaller snapshot_every, or planes: [random]")


def surface_runs(experiment) -> list:
    """The runs of an ExperimentSpec that get surfaces: none when disabled, the first seed of each
    sweep point with ``seeds: first``, else all."""
    s = surfaces_settings(experiment.raw.get("surfaces"))
    if not s["enabled"]:
        return []
    if s["seeds"] == "first":
        first = experiment.raw["seeds"][0]
        return [r for r in experiment.runs if r.seed == first]
    return list(experiment.runs)
