"""Which measures predict generalization: rank correlation with the generalization gap across runs.

The method of Jiang et al. (2019, ICLR 2020, "Fantastic generalization measures and where to find them"):
over many trained models, the rank correlation between a measure taken at the final iterate x_K (sharpness,
volume, norm, ...) and the generalization gap (test loss minus train loss at x_K).

- :func:`kendall_tau`: Kendall's tau-b, the rank correlation with ties handled.
- :func:`granulated_kendall`: Jiang et al.'s granulated form. For each hyperparameter axis i, the runs that
  share every other hyperparameter form a group; tau is taken inside each group where axis i varies and
  averaged (psi_i); Psi is the mean of psi_i over the axes. A measure that merely tracks one strong
  hyperparameter scores well on tau but not on every psi_i.
- :func:`bootstrap_tau`: a percentile interval for tau, resampling runs with replacement.
- :func:`generalization_table`: one row per measure and scope (the whole study, then each experiment) of a
  one-row-per-run table: n_runs, tau with its interval, granulated Psi.
- :func:`study_generalization` (rule generalization): a results folder's runs with the gap and every measure at x_K
  (:func:`collect_runs`) and their table (:func:`study_table`: granulated within each experiment, with the
  flat-minima claim's :func:`verdict`); :func:`write_generalization_tables` stores both.

Everything works on plain arrays and a Polars DataFrame whose columns the caller names: the measures are
whatever columns landscope has at x_K (lambda_max, trace, log-volume proxy, sublevel radius, LLC, parameter
norm, distance travelled, alpha-beta constants, non-vanishing term). Runs where a measure or the gap is
missing or not finite are left out of that measure's numbers, and ``n_runs`` says how many remained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from landscope import store


# ----------------------------------------------------------------------------------- Kendall's tau
def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau: {x.size} values of x and {y.size} of y; need one of each per run")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _signs(v: np.ndarray) -> np.ndarray:
    """The n x n matrix sign(v_j - v_i) (zero on the diagonal and on ties)."""
    return np.sign(v[None, :] - v[:, None])


def kendall_tau(x, y) -> float:
    """Kendall's tau-b between x and y (one value per run), ties handled.

    With n0 = n(n-1)/2 pairs, C - D = sum over pairs of sign(x_j - x_i) sign(y_j - y_i) (concordant minus
    discordant), n1 the pairs tied in x and n2 the pairs tied in y,

        tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)),

    which is +1 for the same order, -1 for the reversed order and equals tau-a = (C - D) / n0 without ties.
    Pairs where x or y is not finite are dropped first. NaN when fewer than 2 pairs remain or when x or y
    is constant (the correlation is undefined, not zero). O(n^2) memory: meant for runs, not samples.
    """
    x, y = _finite_pairs(x, y)
    n = x.size
    if n < 2:
        return math.nan
    sx, sy = _signs(x), _signs(y)
    n0 = n * (n - 1) / 2
    n1 = (np.count_nonzero(sx == 0) - n) / 2  # the diagonal is zero too
    n2 = (np.count_nonzero(sy == 0) - n) / 2
    if n1 == n0 or n2 == n0:
        return math.nan
    return float((sx * sy).sum() / 2 / math.sqrt((n0 - n1) * (n0 - n2)))


@dataclass(frozen=True)
class TauInterval:
    """Kendall's tau-b of n runs and its bootstrap percentile interval [lo, hi] at ``level``; ``n_boot`` the
    resamples drawn and ``n_defined`` those where tau was defined (a resample can be constant on one side)."""

    tau: float
    lo: float
    hi: float
    n: int
    level: float
    n_boot: int
    n_defined: int


def bootstrap_tau(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.9) -> TauInterval:
    """Kendall's tau-b of (x, y) with a bootstrap percentile interval over runs.

    Each resample draws n runs with replacement (numpy's default generator seeded with ``seed``) and takes
    tau-b of the resample (a run drawn twice makes a tied pair, which tau-b handles); the interval is the
    (1 - level)/2 and (1 + level)/2 quantiles of the defined resample values. Runs with a non-finite x or y
    are dropped first. All NaN when tau itself is undefined.

    A resample is a vector of counts c (c_i = times run i was drawn); with P_ij = sign(x_j - x_i) sign(y_j -
    y_i), C - D = c^T P c / 2, and the ties in x are (c^T T c - m) / 2 with T_ij = [x_i == x_j], so all
    resamples cost one pair of matrix products instead of re-sorting.
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap_tau: need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    x, y = _finite_pairs(x, y)
    n = x.size
    tau = kendall_tau(x, y)
    if math.isnan(tau):
        return TauInterval(math.nan, math.nan, math.nan, n, level, n_boot, 0)
    sx, sy = _signs(x), _signs(y)
    concord, tie_x, tie_y = sx * sy, (sx == 0).astype(np.float64), (sy == 0).astype(np.float64)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(np.float64)

    def quad(m: np.ndarray) -> np.ndarray:
        return ((counts @ m) * counts).sum(1)

    n0 = n * (n - 1) / 2
    n1, n2 = (quad(tie_x) - n) / 2, (quad(tie_y) - n) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        taus = quad(concord) / 2 / np.sqrt((n0 - n1) * (n0 - n2))
    taus = taus[(n1 < n0) & (n2 < n0)]
    lo, hi = np.quantile(taus, [(1 - level) / 2, (1 + level) / 2]) if taus.size else (math.nan, math.nan)
    return TauInterval(tau, float(lo), float(hi), n, level, n_boot, int(taus.size))


# ----------------------------------------------------------------------------------- granulated form
@dataclass(frozen=True)
class GranulatedTau:
    """Jiang et al.'s granulated Kendall tau: ``psi[axis]`` the mean tau over the groups where that axis
    varies and everything else is fixed, ``n_groups[axis]`` how many groups it rests on (0: the axis never
    varies alone, psi NaN), ``n_undefined[axis]`` the groups skipped because tau was undefined there (measure
    or gap constant), and ``psi_mean`` (Psi) the mean of the defined psi over the axes (NaN: none)."""

    psi: dict[str, float]
    n_groups: dict[str, int]
    n_undefined: dict[str, int]
    psi_mean: float

    @property
    def n_axes(self) -> int:
        """The axes Psi averages over."""
        return sum(1 for v in self.psi.values() if not math.isnan(v))

    @property
    def n_groups_used(self) -> int:
        """The groups under the axes Psi averages over (an axis with no group has psi NaN)."""
        return sum(self.n_groups.values())


def granulated_kendall(measure, gap, hparams: Mapping[str, Sequence]) -> GranulatedTau:
    """Granulated Kendall tau (Jiang et al. 2019, section 2) of ``measure`` against ``gap`` (one value per run).

    ``hparams`` maps each hyperparameter axis to its value per run (numbers, strings, or None; compared
    exactly, None a value of its own). For axis i the runs are grouped by the values of all the other axes;
    a group with fewer than 2 distinct values of axis i is skipped; inside each remaining group tau-b of
    (measure, gap) is taken over its runs (replicates such as seeds, which are not axes, stay in the group),
    and psi_i is the mean over the groups where tau is defined. Psi is the mean of psi_i over the axes where
    it is defined. Runs with a non-finite measure or gap are dropped first.
    """
    m = np.asarray(measure, dtype=np.float64).reshape(-1)
    g = np.asarray(gap, dtype=np.float64).reshape(-1)
    axes = list(hparams)
    cols = {a: list(hparams[a]) for a in axes}
    if m.shape != g.shape or any(len(c) != m.size for c in cols.values()):
        raise ValueError(f"granulated_kendall: {m.size} measures, {g.size} gaps, hyperparameter columns of "
                         f"{ {a: len(c) for a, c in cols.items()} } values; need one of each per run")
    keep = [i for i in range(m.size) if math.isfinite(m[i]) and math.isfinite(g[i])]
    psi, n_groups, n_undefined = {}, {}, {}
    for a in axes:
        others = [b for b in axes if b != a]
        groups: dict[tuple, list[int]] = {}
        for i in keep:
            groups.setdefault(tuple(cols[b][i] for b in others), []).append(i)
        taus, undefined = [], 0
        for idx in groups.values():
            if len({cols[a][i] for i in idx}) < 2:
                continue
            t = kendall_tau(m[idx], g[idx])
            if math.isnan(t):
                undefined += 1
            else:
                taus.append(t)
        psi[a] = float(np.mean(taus)) if taus else math.nan
        n_groups[a], n_undefined[a] = len(taus), undefined
    defined = [v for v in psi.values() if not math.isnan(v)]
    return GranulatedTau(psi, n_groups, n_undefined, float(np.mean(defined)) if defined else math.nan)


# ----------------------------------------------------------------------------------- the table
TABLE_SCHEMA = {"measure": pl.String, "scope": pl.String, "n_runs": pl.Int64, "tau": pl.Float64,
                "tau_lo": pl.Float64, "tau_hi": pl.Float64, "granulated_psi": pl.Float64,
                "granulated_axes": pl.Int64, "granulated_groups": pl.Int64}


def _or_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def generalization_table(runs: pl.DataFrame, measures: Sequence[str], gap: str = "generalization_gap",
                         hparams: Sequence[str] = (), by: str | None = "experiment", n_boot: int = 1000,
                         seed: int = 0, level: float = 0.9) -> pl.DataFrame:
    """One row per measure and scope of ``runs`` (one row per run: the gap at x_K and each measure at x_K).

    Scopes: ``"study"`` (all runs), then ``"<by>=<value>"`` for each value of the column ``by`` in sorted
    order, null last as ``"<by>=None"`` (each experiment or sweep; no per-group scopes when ``by`` is None).
    Columns (``TABLE_SCHEMA``):

    - measure, scope; n_runs: the runs with a finite measure and gap;
    - tau (Kendall tau-b), tau_lo, tau_hi: :func:`bootstrap_tau` at ``level`` with ``n_boot`` resamples;
    - granulated_psi: Psi of :func:`granulated_kendall` over the ``hparams`` columns; granulated_axes and
      granulated_groups: the axes Psi averages over and the groups under them.

    Undefined numbers are null: tau with fewer than 2 runs or a constant side, Psi where no hyperparameter
    varies on its own.
    """
    missing = [c for c in [gap, *measures, *hparams, *([by] if by else [])] if c not in runs.columns]
    if missing:
        raise ValueError(f"generalization_table: columns {missing} not in the run table ({runs.columns})")
    scopes = [("study", runs)]
    if by is not None:
        for value in runs[by].unique().sort(nulls_last=True).to_list():
            scopes.append((f"{by}={value}", runs.filter(pl.col(by).eq_missing(value))))
    rows = []
    for measure in measures:
        for scope, part in scopes:
            m = part[measure].cast(pl.Float64).fill_null(math.nan).to_numpy()
            g = part[gap].cast(pl.Float64).fill_null(math.nan).to_numpy()
            ci = bootstrap_tau(m, g, n_boot=n_boot, seed=seed, level=level)
            gran = granulated_kendall(m, g, {h: part[h].to_list() for h in hparams})
            rows.append({"measure": measure, "scope": scope, "n_runs": ci.n, "tau": _or_none(ci.tau),
                         "tau_lo": _or_none(ci.lo), "tau_hi": _or_none(ci.hi),
                         "granulated_psi": _or_none(gran.psi_mean), "granulated_axes": gran.n_axes,
                         "granulated_groups": gran.n_groups_used})
    return pl.DataFrame(rows, schema=TABLE_SCHEMA)


# ----------------------------------------------------------------------------------- a study's runs
# The measures landscope has at x_K, as columns of the generalization_runs table: label, and the sign the
# flat-minima claim gives tau (+1: a sharper minimum, larger value, should generalize worse, a larger gap; -1: a
# larger value means flatter, a smaller gap; None: the claim says nothing).
MEASURES: dict[str, tuple[str, int | None]] = {
    "lambda_max": ("λ_max (top Hessian eigenvalue)", 1),
    "trace": ("Hessian trace (Hutchinson)", 1),
    "trace_hutchpp": ("Hessian trace (Hutch++)", 1),
    "llc_mean": ("local learning coefficient", 1),
    "log_volume_proxy": ("log-volume proxy", -1),
    "radius_median": ("ε-sublevel radius (median)", -1),
    "param_norm": ("‖x_K‖", None),
    "dist_from_init": ("‖x_K − x_0‖", None),
    "path_length": ("path length (checkpoints)", None),
    "alpha_min": ("smallest α", None),
    "beta_at_alpha_min": ("β at smallest α", None),
    "nonvanishing_term": ("min 2βσ²/(α−β)", None),
}
MIN_RUNS_FOR_VERDICT = 5  # fewer: most bootstrap resamples repeat runs and the interval collapses onto tau
AVERAGED_MINIMIZERS = ("tail_average", "projection")  # x_K is not a checkpoint's parameters
SWEEP_PREFIX = "sweep."  # the runs frame's hyperparameter columns: sweep.<key>, the value's JSON text

RUNS_SQL = """
WITH xk AS (SELECT experiment, run, any_value(method) AS minimizer, max(step) AS xk_step
            FROM minimizers GROUP BY experiment, run),
snap AS (SELECT s.*, row_number() OVER (PARTITION BY s.experiment, s.run ORDER BY
                    CASE WHEN xk.xk_step IS NULL THEN 0 ELSE abs(s.step - xk.xk_step) END, s.step DESC) AS k
         FROM snapshots s LEFT JOIN xk USING (experiment, run)),
curv AS (SELECT *, row_number() OVER (PARTITION BY experiment, run
                    ORDER BY is_minimizer DESC NULLS LAST, step DESC) AS k FROM curvature),
flat AS (SELECT *, row_number() OVER (PARTITION BY experiment, run ORDER BY step DESC) AS k FROM flatness),
d0 AS (SELECT experiment, run, any_value(dist_to_min) AS dist FROM directions WHERE step = 0 GROUP BY ALL),
st AS (SELECT experiment, run, any_value(dist_xk_x0) AS dist, any_value(path_length) AS path_length
       FROM stationarity GROUP BY ALL),
sc AS (SELECT experiment, run, any_value(alpha_min) AS alpha_min, any_value(beta_at_alpha_min) AS beta,
              any_value(nonvanishing_term) AS term FROM seed_conditions GROUP BY ALL),
cs AS (SELECT experiment, point, any_value(alpha_min) AS alpha_min, any_value(beta_at_alpha_min) AS beta,
              any_value(nonvanishing_term) AS term FROM condition_summary GROUP BY ALL)
SELECT r.experiment, r.run, r.point, r.seed, r.dataset, r.sweep_json, r.status, xk.minimizer, xk.xk_step,
       snap.step AS gap_step, snap.full_loss AS train_loss, snap.test_loss, snap.test_accuracy, snap.generalization_gap,
       curv.step AS curvature_step, curv.lambda_max, curv.trace, curv.trace_hutchpp,
       flat.log_volume_proxy, flat.radius_median, flat.llc_mean, snap.param_norm,
       coalesce(st.dist, d0.dist) AS dist_from_init, st.path_length,
       CASE WHEN sc.run IS NOT NULL THEN sc.alpha_min ELSE cs.alpha_min END AS alpha_min,
       CASE WHEN sc.run IS NOT NULL THEN sc.beta ELSE cs.beta END AS beta_at_alpha_min,
       CASE WHEN sc.run IS NOT NULL THEN sc.term ELSE cs.term END AS nonvanishing_term,
       CASE WHEN sc.run IS NOT NULL THEN 'run' WHEN cs.point IS NOT NULL THEN 'point' END AS constants_from
FROM runs r
LEFT JOIN xk USING (experiment, run)
LEFT JOIN snap ON snap.experiment = r.experiment AND snap.run = r.run AND snap.k = 1
LEFT JOIN curv ON curv.experiment = r.experiment AND curv.run = r.run AND curv.k = 1
LEFT JOIN flat ON flat.experiment = r.experiment AND flat.run = r.run AND flat.k = 1
LEFT JOIN d0 ON d0.experiment = r.experiment AND d0.run = r.run
LEFT JOIN st ON st.experiment = r.experiment AND st.run = r.run
LEFT JOIN sc ON sc.experiment = r.experiment AND sc.run = r.run
LEFT JOIN cs ON cs.experiment = r.experiment AND cs.point = r.point
WHERE list_contains($experiments, r.experiment)
ORDER BY r.experiment, r.run
"""


def _run_note(row: dict) -> str | None:
    """Why a run's gap is missing or not quite at x_K (None: the gap is at x_K itself)."""
    notes = []
    if row["status"] not in (None, "completed"):
        notes.append(f"status {row['status']}")
    if row["gap_step"] is None:
        notes.append("no snapshot row")
    elif row["test_loss"] is None:
        notes.append(f"no held-out loss (dataset {row['dataset']})")
    if row["gap_step"] is not None and not row["gap_at_xk"]:
        if row["minimizer"] in AVERAGED_MINIMIZERS:
            notes.append(f"x_K is the {row['minimizer']} point, not a checkpoint: gap and ‖x_K‖ at the step "
                         f"{row['gap_step']} checkpoint")
        elif row["xk_step"] is None:
            notes.append(f"no minimizers row: gap at the last checkpoint (step {row['gap_step']})")
        else:
            notes.append(f"x_K (step {row['xk_step']}) is not a checkpoint: gap at step {row['gap_step']}")
    return "; ".join(notes) or None


def _sweep_values(sweep_json: str | None) -> dict[str, str]:
    """A run's swept keys, each value as its JSON text (exact, hashable, comparable across types)."""
    sweep = json.loads(sweep_json) if sweep_json else {}
    return {k: json.dumps(v, sort_keys=True) for k, v in sweep.items()}


def collect_runs(results: str | Path, experiments: Sequence[str],
                 runs: Mapping[str, Sequence[str]] | None = None) -> pl.DataFrame:
    """One row per run of ``experiments``: the generalization_runs columns (store.SCHEMAS), then one
    ``sweep.<key>`` column per swept key (the value's JSON text; null where a run's sweep lacks the key).

    The gap is the snapshots row at the minimizers table's step (the nearest checkpoint, later on a tie, when
    that step is none; the last checkpoint without a minimizers row); ``gap_at_xk`` says whether that row is
    x_K itself (never for tail_average or projection, whose x_K is no checkpoint) and ``note`` says why not
    or why the gap is missing. Curvature: the row flagged is_minimizer, else the last step; flatness: the last
    row; ``dist_from_init``: stationarity's dist_xk_x0 (||x_K - x_0||, by the curvature job), else directions'
    dist_to_min at step 0 (the same distance, except under ``minimizer: projection``); the alpha-beta
    constants: the run's own (seed_conditions; constants_from 'run'), else its sweep point's
    (condition_summary; 'point'). A table or column that is not there (curvature disabled, older results)
    reads as null. ``runs`` ({experiment: run names}) keeps only those runs (an earlier configuration's
    leftovers are ignored)."""
    con = store.connect(results, experiments=list(experiments))
    try:
        df = con.sql(RUNS_SQL, params={"experiments": list(experiments)}).pl()
    finally:
        con.close()
    if runs is not None:
        keep = pl.Series([r in runs.get(e, ()) for e, r in zip(df["experiment"], df["run"])], dtype=pl.Boolean)
        df = df.filter(keep)
    at_xk = (pl.col("gap_step") == pl.col("xk_step")) & ~pl.col("minimizer").is_in(AVERAGED_MINIMIZERS)
    df = df.with_columns(gap_at_xk=at_xk.fill_null(False))
    notes = [_run_note(row) for row in df.iter_rows(named=True)]
    df = df.with_columns(note=pl.Series(notes, dtype=pl.String)).select(list(store.SCHEMAS["generalization_runs"]))
    sweeps = [_sweep_values(s) for s in df["sweep_json"].to_list()]
    keys = sorted({k for s in sweeps for k in s})
    return df.with_columns([pl.Series(SWEEP_PREFIX + k, [s.get(k) for s in sweeps], dtype=pl.String) for k in keys])


def granulated_within(measure, gap, hparams: Mapping[str, Sequence], within: Sequence) -> GranulatedTau:
    """:func:`granulated_kendall` with the groups also split by ``within`` (one label per run, the experiment):
    an axis counts as varying only between runs with the same label, so runs of different experiments that
    happen to share the other hyperparameters are never ranked against each other. ``within`` is not an axis."""
    inner = "\x00within"
    got = granulated_kendall(measure, gap, {**hparams, inner: list(within)})
    psi = {a: v for a, v in got.psi.items() if a != inner}
    defined = [v for v in psi.values() if not math.isnan(v)]
    return GranulatedTau(psi, {a: n for a, n in got.n_groups.items() if a != inner},
                         {a: n for a, n in got.n_undefined.items() if a != inner},
                         float(np.mean(defined)) if defined else math.nan)


def verdict(tau: float | None, lo: float | None, hi: float | None, n_runs: int, sign: int | None) -> str | None:
    """What a tau interval says about the flat-minima claim, whose expected sign is ``sign``: 'supports' (the
    interval lies on the claimed side of 0), 'contradicts' (on the other side), 'unresolved' (it holds 0),
    'too few runs' (under MIN_RUNS_FOR_VERDICT), None without a claim or a tau."""
    if sign is None or tau is None:
        return None
    if n_runs < MIN_RUNS_FOR_VERDICT or lo is None or hi is None:
        return "too few runs"
    if sign * lo > 0 and sign * hi > 0:
        return "supports"
    if sign * lo < 0 and sign * hi < 0:
        return "contradicts"
    return "unresolved"


STUDY_SCHEMA = {**TABLE_SCHEMA, "experiment": pl.String, "level": pl.Float64, "n_boot": pl.Int64,
                "claim_sign": pl.Int64, "verdict": pl.String}  # generalization_measures, in Polars types


def study_table(frame: pl.DataFrame, measures: Sequence[str] = tuple(MEASURES), n_boot: int = 1000,
                seed: int = 0, level: float = 0.9) -> pl.DataFrame:
    """The generalization_measures rows of a :func:`collect_runs` frame: :func:`generalization_table` by
    experiment over ``measures``, its granulated Psi replaced by :func:`granulated_within` (the swept keys,
    grouped within each experiment), with the experiment, the bootstrap settings, the claim's sign and
    :func:`verdict` beside each row."""
    hparams = [c for c in frame.columns if c.startswith(SWEEP_PREFIX)]
    table = generalization_table(frame, measures, hparams=(), by="experiment", n_boot=n_boot, seed=seed, level=level)
    rows = []
    for row in table.iter_rows(named=True):
        exp = None if row["scope"] == "study" else row["scope"].removeprefix("experiment=")
        part = frame if exp is None else frame.filter(pl.col("experiment") == exp)
        m = part[row["measure"]].cast(pl.Float64).fill_null(math.nan).to_numpy()
        g = part["generalization_gap"].cast(pl.Float64).fill_null(math.nan).to_numpy()
        gran = granulated_within(m, g, {h: part[h].to_list() for h in hparams}, part["experiment"].to_list())
        sign = MEASURES.get(row["measure"], ("", None))[1]
        rows.append({**row, "experiment": exp, "level": level, "n_boot": n_boot,
                     "granulated_psi": _or_none(gran.psi_mean), "granulated_axes": gran.n_axes,
                     "granulated_groups": gran.n_groups_used, "claim_sign": sign,
                     "verdict": verdict(row["tau"], row["tau_lo"], row["tau_hi"], row["n_runs"], sign)})
    return pl.DataFrame(rows, schema=STUDY_SCHEMA).select(list(store.SCHEMAS["generalization_measures"]))



def study_generalization(results: str | Path, experiments: Sequence[str],
                         runs: Mapping[str, Sequence[str]] | None = None, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.9) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(one row per run: :func:`collect_runs`, one row per measure and scope: :func:`study_table`) of a study's
    results folder. Runs without a finite gap (no held-out split, diverged) are kept in the first frame, with
    a note, and left out of every tau (n_runs counts the rest)."""
    frame = collect_runs(results, experiments, runs)
    return frame, study_table(frame, n_boot=n_boot, seed=seed, level=level)


def study_part_path(results: str | Path, table: str) -> Path:
    """The one part of a study-level table: ``<results>/tables/<table>/study/part-00000.parquet`` (read by the
    table's DuckDB view like any partition)."""
    return Path(results) / "tables" / table / "study" / "part-00000.parquet"


def write_generalization_tables(results: str | Path, experiments: Sequence[str],
                                runs: Mapping[str, Sequence[str]] | None = None, n_boot: int = 1000,
                                seed: int = 0, level: float = 0.9) -> tuple[Path, Path]:
    """Compute :func:`study_generalization` and write generalization_runs and generalization_measures
    (provenance: the experiments and bootstrap settings). Returns the two part paths."""
    frame, table = study_generalization(results, experiments, runs, n_boot=n_boot, seed=seed, level=level)
    meta = {**store.provenance(), "experiments": list(experiments), "n_boot": n_boot, "seed": seed, "level": level}
    out = []
    for name, df in (("generalization_runs", frame), ("generalization_measures", table)):
        columns = {c: df[c].to_list() for c in store.SCHEMAS[name]}
        out.append(store.write_table(study_part_path(results, name), name, columns, meta))
    return out[0], out[1]
