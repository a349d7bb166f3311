"""Parquet tables with fixed schemas and provenance; DuckDB views over them.

Layout: ``<results>/tables/<table>/experiment=E/run=R/part-*.parquet`` (run-level tables) and
``<results>/tables/<table>/experiment=E/part-0.parquet`` (experiment-level tables). ``experiment``
and ``run`` are stored in the files too, so the hive path is a convenience, not the source.
Writes are atomic (temporary file + rename): a killed job never leaves a partial part visible.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from landscope import __version__

I64, F64, STR, BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()

SCHEMAS: dict[str, dict[str, pa.DataType]] = {
    "runs": {
        "experiment": STR, "run": STR, "point": STR, "seed": I64, "sweep_json": STR,
        "model": STR, "dataset": STR, "optimizer": STR, "lr": F64, "batch_size": I64,
        "steps": I64, "snapshot_every": I64, "n_params": I64, "n_train": I64, "status": STR,
        "diverged_step": I64, "train_wall_s": F64, "device": STR, "config_hash": STR, "training_key": STR,
    },
    "train": {
        "experiment": STR, "run": STR, "step": I64, "epoch": I64, "lr": F64, "batch_loss": F64,
    },
    "snapshots": {
        "experiment": STR, "run": STR, "step": I64, "full_loss": F64, "full_grad_norm": F64,
        "param_norm": F64, "accuracy": F64,
        # on the dataset's held-out samples (landscope.problem.heldout; null without any), and test_loss - full_loss
        "test_loss": F64, "test_accuracy": F64, "generalization_gap": F64,
    },
    "minimizers": {
        "experiment": STR, "run": STR, "method": STR, "step": I64, "full_loss": F64,
    },
    "steps": {
        "experiment": STR, "run": STR, "step": I64, "lr": F64, "batch_loss": F64,
        "batch_loss_at_min": F64, "batch_loss_star": F64, "grad_dot_dir": F64,
        "grad_norm": F64, "dist_to_min": F64,
    },
    "directions": {
        "experiment": STR, "run": STR, "step": I64, "full_loss": F64, "full_loss_at_min": F64,
        "full_grad_norm": F64, "full_grad_dot_dir": F64, "dist_to_min": F64,
        "cos_angle": F64, "aiming_coef": F64,
    },
    "drift": {
        "experiment": STR, "run": STR, "segment": I64, "step": I64, "max_abs_drift": F64,
        "tolerance": F64, "replay_wall_s": F64,
    },
    "pl": {
        "experiment": STR, "run": STR, "point": STR, "step": I64, "pl_delta": F64,
        "pl_log10_mu": F64,
    },
    "ab_region": {
        "experiment": STR, "point": STR, "vertex": I64, "alpha": F64, "beta": F64,
        "on_box_edge": BOOL,
    },
    "ab_frontier": {
        "experiment": STR, "point": STR, "alpha": F64, "beta_min": F64, "beta_max": F64,
    },
    "ab_grid": {
        "experiment": STR, "point": STR, "alpha": F64, "beta": F64, "min_t": F64,
        "feasible": BOOL,
    },
    "condition_summary": {
        "experiment": STR, "point": STR, "sweep_json": STR, "n_runs": I64, "n_steps": I64,
        "feasible": BOOL, "alpha_min": F64, "beta_at_alpha_min": F64, "beta_min": F64,
        "alpha_at_beta_min": F64, "margin": F64, "alpha_box": F64, "beta_box": F64,
        "hull_points": I64, "f_star_est": F64, "f_i_star_mean": F64, "sigma_int_sq": F64,
        "sigma_int_sq_method": STR,
        # the non-vanishing term 2 beta sigma_int^2 / (alpha - beta): its minimum over the feasible region,
        # and the pair that attains it
        "nonvanishing_term": F64, "nonvanishing_alpha": F64, "nonvanishing_beta": F64,
        # which constraint sets the smallest pair: data, margin, beta_nonneg or corner (margin and beta >= 0);
        # nonvanishing_binding: the same for the pair that attains the term (margin or corner: the term moves
        # with the margin; data or beta_nonneg: it does not)
        "binding": STR, "nonvanishing_binding": STR,
        # the spread over seeds of the per-run constants (seed_conditions): min and max over the point's runs
        "n_seeds": I64, "alpha_min_seed_lo": F64, "alpha_min_seed_hi": F64,
        "nonvanishing_term_seed_lo": F64, "nonvanishing_term_seed_hi": F64,
        "pl_delta": F64, "pl_log10_mu_min": F64, "aiming_min": F64, "aiming_min_step": I64,
        "qcvx_theta_min": F64, "cos_angle_min": F64, "cos_angle_mean": F64,
        # how densely the full-batch verdicts (PL, Aiming, angle, QCvx) were sampled: rows per run (the
        # fewest over the point's runs) and the steps between consecutive rows (the largest gap)
        "directions_points": I64, "directions_spacing": I64,
        "final_full_loss_mean": F64, "final_batch_loss_mean": F64, "max_abs_drift": F64,
    },
    # the alpha-beta constants of each run on its own (one row per run): what the seed spread is made of
    "seed_conditions": {
        "experiment": STR, "point": STR, "run": STR, "seed": I64, "n_steps": I64, "feasible": BOOL,
        "alpha_min": F64, "beta_at_alpha_min": F64, "beta_min": F64, "nonvanishing_term": F64,
        "nonvanishing_alpha": F64, "nonvanishing_beta": F64, "binding": STR,
    },
    # how the smallest pair and the non-vanishing term move with the margin (alpha >= beta + margin), per point
    "margin_sensitivity": {
        "experiment": STR, "point": STR, "margin": F64, "is_configured": BOOL, "feasible": BOOL,
        "alpha_min": F64, "beta_at_alpha_min": F64, "nonvanishing_term": F64, "binding": STR,
        "nonvanishing_binding": STR,
    },
    # every classical condition's best constant (the largest mu / theta that holds at every row) per point, run
    # (or "all") and scope (full_batch: directions rows; mini_batch: steps rows); docs/conditions.md
    "condition_constants": {
        "experiment": STR, "point": STR, "run": STR, "condition": STR, "scope": STR, "f_star": STR,
        "constant": F64, "constant_step": I64, "holds": BOOL, "first_fail_step": I64, "fraction_positive": F64,
        "n_rows": I64, "spacing": I64, "note": STR,
    },
    # what each condition's standard theorem promises with the measured constants, beside what the run achieved
    # (landscope.measures.bounds; docs/conditions.md): per point, run (or "all": the worst case over the point's
    # runs) and condition. applicable false: why_not says which assumption fails, and bound is NULL
    "condition_bounds": {
        "experiment": STR, "point": STR, "run": STR, "condition": STR, "scope": STR, "constant": F64,
        "pair_alpha": F64, "pair_beta": F64, "theorem": STR, "formula": STR, "applicable": BOOL, "why_not": STR,
        "lr": F64, "smoothness": F64, "smoothness_source": STR, "noise": F64, "noise_source": STR, "d0": F64,
        "gap0": F64, "steps": I64, "bound": F64, "achieved": F64, "achieved_what": STR, "violated_steps": I64,
    },
    # the same bound and achieved value along training (at most ~200 steps per run and condition)
    "condition_bound_curve": {
        "experiment": STR, "point": STR, "run": STR, "condition": STR, "step": I64, "bound": F64,
        "achieved": F64,
    },
}

RUN_TABLES = {"runs", "train", "snapshots", "minimizers", "steps", "directions", "drift"}


def table_dir(results: str | Path, table: str, experiment: str, run: str | None = None) -> Path:
    p = Path(results) / "tables" / table / f"experiment={experiment}"
    return p / f"run={run}" if run is not None else p


def part_path(results, table, experiment, run=None, part: int = 0) -> Path:
    return table_dir(results, table, experiment, run) / f"part-{part:05d}.parquet"


@lru_cache(maxsize=1)
def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _torch_version() -> str:
    """torch's version without importing torch (a 1-2 s, ~290 MB import for jobs that need none)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(config_hash: str = "", device: str = "") -> dict[str, str]:
    """What every Parquet file and sidecar carries: versions, git sha, config hash, device, host."""
    return {"landscope_version": __version__, "git_sha": _git_sha(),
            "config_hash": config_hash, "torch_version": _torch_version(),
            "python_version": platform.python_version(), "device": device,
            "host": platform.node()}


def to_arrow(table: str, columns: dict[str, list], meta: dict | None = None) -> pa.Table:
    schema = SCHEMAS[table]
    missing = set(schema) - set(columns)
    extra = set(columns) - set(schema)
    if missing or extra:
        raise ValueError(f"table {table}: missing columns {sorted(missing)}, unexpected {sorted(extra)}")
    arrays = [pa.array(columns[c], type=t) for c, t in schema.items()]
    fields = [pa.field(c, t) for c, t in schema.items()]
    md = {b"landscope": json.dumps(meta or {}, sort_keys=True).encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=md))


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; make it like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: str | Path, table: str, columns: dict[str, list], meta: dict | None = None) -> Path:
    """Write one part of ``table`` atomically, typed by SCHEMAS, with provenance metadata."""
    path = Path(path)
    tbl = to_arrow(table, columns, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(tbl, tmp, compression="zstd")
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_meta(path: str | Path) -> dict:
    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(b"landscope", b"{}"))


# ----------------------------------------------------------------------------------- DuckDB
def duck_type(t: pa.DataType) -> str:
    return {I64: "BIGINT", F64: "DOUBLE", STR: "VARCHAR", BOOL: "BOOLEAN"}[t]


def view_sql(results: str | Path, table: str, where: str = "", con=None, experiments: list[str] | None = None) -> str:
    """A typed view: reads every part file of the table (with ``experiments``: of those experiments
    only), or is empty (typed) when there is none.

    Columns that no file has yet (results written by an older landscope) read as typed NULLs; the
    present columns are looked up with ``con`` (a DuckDB connection) when one is given.
    """
    root = Path(results).resolve() / "tables" / table
    cols = SCHEMAS[table]
    dirs = [root] if experiments is None else [root / f"experiment={e}" for e in experiments]
    globs = [str(d / "**" / "part-*.parquet").replace("'", "''") for d in dirs if any(d.rglob("part-*.parquet"))]
    if globs:
        files = "[" + ", ".join(f"'{g}'" for g in globs) + "]"
        src = f"read_parquet({files}, union_by_name = true, hive_partitioning = false)"
        present = set(cols)
        if con is not None:
            present = {r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        select = ", ".join(f"CAST({c if c in present else 'NULL'} AS {duck_type(t)}) AS {c}"
                           for c, t in cols.items())
        return f"CREATE OR REPLACE VIEW {table} AS SELECT {select} FROM {src}" + (f" WHERE {where}" if where else "")
    empty = ", ".join(f"CAST(NULL AS {duck_type(t)}) AS {c}" for c, t in cols.items())
    return f"CREATE OR REPLACE VIEW {table} AS SELECT {empty} WHERE false"


# Views computed from the tables (no files of their own). condition_steps: every classical condition's per-row
# ratio (the value whose minimum over the rows is condition_constants.constant) at every replayed step
# (scope mini_batch, table steps) and every full-batch row (scope full_batch, table directions); the SQL twin of
# landscope.measures.classical.ratios (tests/test_classical.py checks that they agree). value is NULL at x_K
# (distance 0) and outside a condition's domain; holds: value > 0 (star-convexity: >= 0). alpha_beta (mini_batch
# only): the slack T_k = a - alpha u + beta v at the point's smallest pair (condition_summary).
CONDITION_STEPS_SQL = """
CREATE OR REPLACE VIEW condition_steps AS
WITH rows AS (
    SELECT experiment, run, step, 'mini_batch' AS scope, batch_loss AS f, batch_loss_at_min AS f_ref,
           batch_loss_star AS f_low, grad_norm AS g, grad_dot_dir AS a, dist_to_min AS d FROM steps
    UNION ALL
    SELECT experiment, run, step, 'full_batch', full_loss, full_loss_at_min, full_loss_at_min, full_grad_norm,
           full_grad_dot_dir, dist_to_min FROM directions
), labelled AS (
    SELECT rows.*, r.point, c.pl_delta, c.alpha_min, c.beta_at_alpha_min, f - f_ref AS gap, f - f_low AS gap_low
    FROM rows LEFT JOIN runs r USING (experiment, run)
    LEFT JOIN condition_summary c ON c.experiment = rows.experiment AND c.point = r.point
), ratios AS (
    SELECT experiment, point, run, scope, step, x.condition, CASE WHEN d <> 0 THEN x.value END AS value,
           1e-9 * (abs(a) + abs(alpha_min * gap) + abs(beta_at_alpha_min * gap_low)) AS tol
    FROM labelled, LATERAL (VALUES
        ('alpha_beta', CASE WHEN scope = 'mini_batch' THEN a - alpha_min * gap + beta_at_alpha_min * gap_low END),
        ('pl', CASE WHEN gap_low > 0 THEN 0.5 * g * g / power(gap_low, 2.0 / pl_delta) END),
        ('aiming', CASE WHEN f > 0 THEN a / f END),
        ('qcvx', CASE WHEN gap > 0 THEN a / gap END),
        ('star_convexity', CASE WHEN gap > 0 THEN a / gap - 1.0 END),
        ('rsi', a / (d * d)),
        ('eb', g / d),
        ('qg', 2.0 * gap / (d * d))) AS x(condition, value)
)
SELECT experiment, point, run, scope, step, condition, value,
       CASE WHEN value IS NULL OR isnan(value) THEN NULL
            WHEN condition = 'alpha_beta' THEN value >= -tol  -- the LPs' rounding: a vertex's slack is 0 +- 1e-16
            WHEN condition = 'star_convexity' THEN value >= 0 ELSE value > 0 END AS holds
FROM ratios
"""
DERIVED_VIEWS = {"condition_steps": CONDITION_STEPS_SQL}


def connect(results: str | Path = "results", confine: bool = True, runs: list[str] | None = None,
            experiments: list[str] | None = None):
    """An in-memory DuckDB connection with one view per table.

    With ``confine`` the connection can read only below ``results`` and cannot write files
    (COPY/ATTACH outside it fail) and the settings are locked. With ``runs``, the ``runs`` view holds
    only those runs, so that queries joining it ignore runs an earlier configuration left behind.
    With ``experiments``, every view reads only those experiments' files: a report page of one
    experiment never opens a file that a job of another experiment is rewriting (Snakemake deletes a
    job's old outputs before it runs it again)."""
    import duckdb  # only readers need it: train and replay jobs write Parquet without this import

    con = duckdb.connect(":memory:")
    for table in SCHEMAS:
        where = ""
        if table == "runs" and runs is not None:
            where = "run IN (" + ", ".join("'" + r.replace("'", "''") + "'" for r in runs) + ")" if runs else "false"
        con.execute(view_sql(results, table, where, con, experiments))
    for sql in DERIVED_VIEWS.values():
        con.execute(sql)
    if confine:
        root = str(Path(results).resolve()) + os.sep
        con.execute(f"SET allowed_directories = ['{root}']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def write_database(results: str | Path = "results", path: str | Path | None = None) -> Path:
    """(Re)write ``results/landscope.duckdb`` holding the same views, for any DuckDB client.

    The views use absolute paths: re-run ``landscope db`` after moving the results folder. The file
    is written in DuckDB's v1.0.0 storage format, which every DuckDB client since 1.0 opens (the
    default of DuckDB 2.0, version 999, makes the `duckdb-cli` 1.5 on PyPI refuse the file); the
    views are SQL text, so the older format loses nothing.
    """
    import duckdb  # only readers need it: train and replay jobs write Parquet without this import

    path = Path(path or Path(results) / "landscope.duckdb")
    tmp = path.with_suffix(".duckdb.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp), config={"storage_compatibility_version": "v1.0.0"})
    try:
        for table in SCHEMAS:
            con.execute(view_sql(results, table, con=con))
        for sql in DERIVED_VIEWS.values():
            con.execute(sql)
    finally:
        con.close()
    os.replace(tmp, path)
    return path


# Curvature (landscope.measures.curvature): per checkpoint of a run, and the SLQ nodes behind it.
# neg_fraction: SLQ mass below -3 density_sigma; near_zero_fraction: SLQ weight of the Ritz nodes with
# |ritz| < density_sigma (NULL in files written before it; docs/conditions.md); eos_sharpness is
# precond_lambda_max for Adam types, else lambda_max, compared with eos_threshold (rule eos_rule).
SCHEMAS["curvature"] = {
    "experiment": STR, "run": STR, "step": I64, "is_minimizer": BOOL, "lambda_max": F64,
    "lambda_2": F64, "lambda_3": F64, "lambda_min": F64, "neg_fraction": F64,
    "neg_fraction_se": F64, "near_zero_fraction": F64, "near_zero_fraction_se": F64, "density_sigma": F64,
    "trace": F64, "trace_se": F64,
    "trace_hutchpp": F64, "trace_hutchpp_se": F64, "precond_lambda_max": F64, "lr": F64,
    "two_over_lr": F64, "eos_threshold": F64, "eos_rule": STR, "eos_sharpness": F64,
    "above_eos": BOOL, "eval_samples": I64, "n_hvp": I64, "wall_s": F64, "slq_wall_s": F64,
    "hutchinson_wall_s": F64, "hutchpp_wall_s": F64, "precond_wall_s": F64,
}
SCHEMAS["spectrum"] = {
    "experiment": STR, "run": STR, "step": I64, "probe": I64, "node": I64, "ritz": F64, "weight": F64,
}
# Per-block curvature (landscope.measures.blocks, written by the curvature job): one row per measured
# checkpoint and parameter block (a module's parameters, or a name pattern's), with the diagonal Hessian
# block's extreme Ritz values and Hutchinson trace, and the step's lr and stability threshold (as in
# curvature; for Adam types it bounds the preconditioned sharpness, which a block's lambda_max is not).
SCHEMAS["block_curvature"] = {
    "experiment": STR, "run": STR, "step": I64, "is_minimizer": BOOL, "block": STR, "n_params": I64,
    "lambda_max": F64, "lambda_min": F64, "trace": F64, "trace_se": F64, "lr": F64, "eos_threshold": F64,
    "eos_rule": STR, "eval_samples": I64, "n_hvp": I64, "wall_s": F64,
}
RUN_TABLES |= {"curvature", "spectrum", "block_curvature"}

# Stationarity and flatness (landscope.measures.flatness, written by the curvature job). stationarity: one
# row per consecutive checkpoint pair (step -> next_step); the run-level numbers (tail_spread,
# tail_checkpoints, dist_xk_x0, path_length) are repeated on every row of the run. flatness: one
# row per run, at x_K (step).
SCHEMAS["stationarity"] = {
    "experiment": STR, "run": STR, "step": I64, "next_step": I64, "distance": F64,
    "mean_step_length": F64, "tail_spread": F64, "tail_checkpoints": I64, "dist_xk_x0": F64,
    "path_length": F64,
}
SCHEMAS["flatness"] = {
    "experiment": STR, "run": STR, "step": I64, "eval_samples": I64, "loss_at_xk": F64, "eps": F64,
    "t_max": F64, "directions": I64, "radius_q25": F64, "radius_median": F64, "radius_q75": F64,
    "capped_fraction": F64, "log_volume_proxy": F64, "n_positive_eigs": I64, "llc_mean": F64,
    "llc_std": F64, "llc_chains": I64, "llc_steps": I64, "llc_step_size": F64, "llc_gamma": F64,
    "llc_max_steps": I64, "llc_burnin_steps": I64, "llc_lambda_max": F64, "llc_relax_steps": F64,
    "llc_equilibrated": BOOL, "llc_rhat": F64, "llc_drift": F64, "llc_per_chain_json": STR, "llc_note": STR,
    "flatness_wall_s": F64, "llc_wall_s": F64, "stationarity_wall_s": F64,
}
RUN_TABLES |= {"stationarity", "flatness"}

# Plateau-escape events (landscope.measures.plateaus.plateau_events, rule plateaus): one row per plateau of
# a run's replayed mini-batch loss, per experiment.
SCHEMAS["plateaus"] = {
    "experiment": STR, "run": STR, "start_step": I64, "end_step": I64, "n_windows": I64,
    "window_steps": I64, "plateau_loss": F64, "plateau_grad_norm": F64, "grad_norm_max": F64,
    "escaped": BOOL, "escape_step": I64, "loss_after": F64, "relative_drop": F64, "at_end": BOOL,
}

# Loss surfaces (landscope.measures.surfaces, rule surfaces): 1-D lines x_a + t (x_K - x_a) from x_0 and later
# iterates (start_step), 2-D grids x_K + a d1 + b d2 per plane ('random' filter-normalised, 'pca'),
# and the iterates projected on each plane (captured_fraction repeated on every row of the plane).
SCHEMAS["surface_1d"] = {
    "experiment": STR, "run": STR, "seed": I64, "start_step": I64, "end_step": I64, "t": F64,
    "loss": F64, "accuracy": F64, "distance": F64, "eval_samples": I64,
}
SCHEMAS["surface_2d"] = {
    "experiment": STR, "run": STR, "seed": I64, "plane": STR, "a": F64, "b": F64, "loss": F64,
}
SCHEMAS["surface_path"] = {
    "experiment": STR, "run": STR, "seed": I64, "plane": STR, "step": I64, "a": F64, "b": F64,
    "loss": F64, "loss_on_plane": F64, "off_plane": F64, "captured_fraction": F64,
}
RUN_TABLES |= {"surface_1d", "surface_2d", "surface_path"}

# Diffusion along the minimum (landscope.measures.diffusion.diffusion_run, rule diffusion): one row per run over
# the window of checkpoints after the loss plateau (start_step..end_step, every thin_stride-th): the MSD exponent
# and, per series, the straight-line drift over the window (mean, slope per step and the fitted change relative
# to the mean, their standard errors widened for the residuals' lag-1 autocorrelation) and its trend
# (exponent_long: the exponent on the fitted lags' upper two octaves, lag_max / 4 .. lag_max); NULL
# numbers and a note when the run has no window. diffusion_msd: the MSD per lag (msd_fit: the fitted power law
# on the lags it was fitted on).
DIFFUSION_SERIES = ("loss", "grad_norm", "param_norm", "test_loss", "lambda_max", "trace", "log_volume")
SCHEMAS["diffusion"] = {
    "experiment": STR, "run": STR, "steps": I64, "plateau_step": I64, "start_step": I64, "end_step": I64,
    "n_checkpoints": I64, "thin_stride": I64, "n_params": I64, "exponent": F64, "exponent_se": F64, "n_lags": I64,
    "lag_max": F64, "exponent_long": F64, "exponent_long_se": F64, "n_lags_long": I64, "displacement": F64,
    "motion": STR, "diffusion_claim": STR, "flattening_claim": STR, "note": STR,
    **{f"{s}_{c}": t for s in DIFFUSION_SERIES for c, t in (
        ("mean", F64), ("slope", F64), ("slope_se", F64), ("rel_change", F64), ("rel_change_se", F64),
        ("trend", STR))},
}
SCHEMAS["diffusion_msd"] = {
    "experiment": STR, "run": STR, "lag": I64, "msd": F64, "n_pairs": I64, "in_fit": BOOL, "msd_fit": F64,
}
RUN_TABLES |= {"diffusion", "diffusion_msd"}

# Which measures predict generalization (landscope.measures.generalization, rule generalization): one study-level
# part each (tables/<table>/study/part-00000.parquet). generalization_runs: one row per run, the gap at x_K (the
# snapshots row at the minimizer's step, else the nearest checkpoint: gap_at_xk false, note says so) and every
# measure at x_K, null where not measured. generalization_measures: per measure and scope (study, experiment=E)
# Kendall tau with its bootstrap interval, granulated Psi (within experiments), and the flat-minima claim's sign
# (+1: a larger value should mean a larger gap) with the verdict of the interval.
SCHEMAS["generalization_runs"] = {
    "experiment": STR, "run": STR, "point": STR, "seed": I64, "dataset": STR, "sweep_json": STR, "minimizer": STR,
    "xk_step": I64, "gap_step": I64, "gap_at_xk": BOOL, "train_loss": F64, "test_loss": F64, "test_accuracy": F64,
    "generalization_gap": F64, "curvature_step": I64, "lambda_max": F64, "trace": F64, "trace_hutchpp": F64,
    "log_volume_proxy": F64, "radius_median": F64, "llc_mean": F64, "param_norm": F64, "dist_from_init": F64,
    "path_length": F64, "alpha_min": F64, "beta_at_alpha_min": F64, "nonvanishing_term": F64,
    "constants_from": STR, "note": STR,
}
SCHEMAS["generalization_measures"] = {
    "measure": STR, "scope": STR, "experiment": STR, "n_runs": I64, "tau": F64, "tau_lo": F64, "tau_hi": F64,
    "level": F64, "n_boot": I64, "granulated_psi": F64, "granulated_axes": I64, "granulated_groups": I64,
    "claim_sign": I64, "verdict": STR,
}
