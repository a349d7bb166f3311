"""What the paper claims along sweeps of width, channels, depth, batch size, optimizer and model, and what a
measured sequence of numbers does, in plain Python (no Altair, no Polars): Snakemake imports this module
while it plans the DAG (common.smk lists the Table 2 sequences), and planning stays light.

* ``sweep_sequences(exp)`` turns an ExperimentSpec into JSON-able sequences: one per swept key of
  ``TABLE2_KEYS`` and per combination of the experiment's other sweep values, points in config order;
* ``classify_direction`` / ``optimizer_ordering`` / ``ordering_agrees`` / ``agreement`` say what a sequence
  does (``rises``, ``falls``, ``rises then falls``, ...) and whether that matches the claim;
* ``spread_direction`` calls a direction only where it exceeds the seed spread, and ``constrained_points``
  finds the points whose value the constraints, not the data, set (their verdict is ``UNDETERMINED``): the
  corner for the smallest pair, the margin line or the corner for the non-vanishing term.

The page that shows them is landscope.report.table2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

RTOL = 0.05  # changes within RTOL * max|value| of a sequence count as flat
RISES, FALLS, FLAT, MIXED, NA = "rises", "falls", "flat", "mixed", "n/a"
RISES_FALLS, FALLS_RISES = "rises then falls", "falls then rises"
OPTIMIZER_CLAIM = ("adam", "sgdm", "sgd")  # the paper: Adam < SGDM < SGD (smallest beta first)
FOLLOWS_LOSS = "follows the final loss"
UNDETERMINED = "undetermined at this scale"
# A spread needs at least two runs: with one seed there is nothing to tell a difference from seed noise by,
# so no direction is called from a single seed.
MIN_SEEDS = 2


@dataclass(frozen=True)
class Claim:
    """What the paper says happens along one kind of sweep."""

    beta: str  # claimed direction of the smallest feasible beta (or OPTIMIZER_CLAIM / FOLLOWS_LOSS)
    term: str  # claimed direction of the non-vanishing term 2 beta sigma_int^2 / (alpha - beta)
    text: str  # the claim in words, with where it comes from


_WIDTH = Claim(RISES_FALLS, FALLS, "Minimal feasible α, β rise from small to medium width, then fall as "
               "the model grows (Figs. 4, 5, 11-14); Table 2: βσ²_int decreases with width.")
TABLE2_KEYS: dict[str, Claim] = {
    "model.width": _WIDTH,
    "model.channels": _WIDTH,
    "model.depth": Claim(FALLS, FALLS, "α, β fall with depth; Table 2: βσ²_int decreases with depth."),
    "batch_size": Claim(FALLS, FALLS, "α, β fall with batch size (Figs. 6, 15); Table 2: βσ²_int decreases "
                        "with batch size."),
    "optimizer": Claim("Adam < SGDM < SGD", NA, "Smallest feasible β: Adam < SGDM < SGD (Fig. 16); "
                       "the paper states no ordering of the non-vanishing term."),
    "model.name": Claim(FOLLOWS_LOSS, FALLS, "Larger models with higher final loss need larger α, β "
                        "(Fig. 17); Table 2: βσ²_int decreases with depth (ResNet18 → ResNet34)."),
}


# ----------------------------------------------------------------------------------- directions
def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def classify_direction(values, rtol: float = RTOL) -> str:
    """What a sequence does along the sweep: rises, falls, rises then falls, falls then rises,
    flat or mixed. Missing and non-finite entries are dropped; a step smaller than
    ``rtol * max|value|`` counts as no change; fewer than two values give ``n/a``."""
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}; pass a relative tolerance such as 0.05")
    v = _finite(values)
    if len(v) < 2:
        return NA
    tol = rtol * max(abs(x) for x in v)
    signs = [1 if b - a > tol else -1 for a, b in pairwise(v) if abs(b - a) > tol]
    runs = [s for i, s in enumerate(signs) if i == 0 or s != signs[i - 1]]
    return {(): FLAT, (1,): RISES, (-1,): FALLS, (1, -1): RISES_FALLS,
            (-1, 1): FALLS_RISES}.get(tuple(runs), MIXED)


def optimizer_kind(section: dict) -> str:
    """adam (Adam, AdamW, NAdamW), sgdm (SGD with momentum, normalized SGD-M) or the optimizer's name."""
    name = str(section.get("name", ""))
    if name in ("adam", "adamw", "nadamw"):
        return "adam"
    if name == "nsgdm" or (name == "sgd" and float(section.get("momentum") or 0) > 0):
        return "sgdm"
    return name


def optimizer_ordering(labels: list[str], values, rtol: float = RTOL) -> str:
    """The labels sorted by value, smallest first: 'adam < sgdm < sgd' ('≈' within tolerance)."""
    pairs = sorted(((float(v), str(lab)) for lab, v in zip(labels, values)
                    if v is not None and math.isfinite(float(v))))
    if len(pairs) < 2:
        return NA
    tol = rtol * max(abs(v) for v, _ in pairs)
    text = pairs[0][1]
    for (a, _), (b, lab) in pairwise(pairs):
        text += (" ≈ " if b - a <= tol else " < ") + lab
    return text


def ordering_agrees(kinds: list[str], values, claim: tuple[str, ...] = OPTIMIZER_CLAIM) -> str | None:
    """'yes' when every pair of kinds ranked by ``claim`` is ordered that way by value, 'no' when
    some pair is reversed, None when fewer than two claimed kinds were measured."""
    ranked = [(claim.index(k), float(v)) for k, v in zip(kinds, values)
              if k in claim and v is not None and math.isfinite(float(v))]
    if len({r for r, _ in ranked}) < 2:
        return None
    ok = all(va < vb for ra, va in ranked for rb, vb in ranked if ra < rb)
    return "yes" if ok else "no"


def agreement(measured: str, claimed: str) -> str | None:
    """'yes' (same), 'partly' (one side of a claimed rise-then-fall), 'no', or None (nothing to compare)."""
    if NA in (measured, claimed):
        return None
    if measured == claimed:
        return "yes"
    if claimed == RISES_FALLS and measured in (RISES, FALLS):
        return "partly"
    return "no"


def not_resolved(n_seeds) -> str:
    """The verdict of a direction that does not exceed the seed spread: 'not resolved with N seeds'."""
    n = int(n_seeds or 0)
    return f"not resolved with {n} seed{'' if n == 1 else 's'}"


def _interval(lo, hi) -> tuple[float, float] | None:
    v = _finite([lo, hi])
    return (min(v), max(v)) if len(v) == 2 else None


def interval_order(a, b) -> int | None:
    """+1 when seed interval ``b`` = (lo, hi) lies wholly above ``a``, -1 wholly below, None when the two
    overlap (touching counts as overlap) or either is missing."""
    a, b = _interval(*a), _interval(*b)
    if a is None or b is None:
        return None
    return 1 if b[0] > a[1] else -1 if b[1] < a[0] else None


def spread_direction(intervals, n_seeds) -> str:
    """What a sequence does when each value comes with its seed interval [lo, hi] (min and max over the
    point's runs): the step between two consecutive values is a rise (fall) only when the later interval lies
    wholly above (below) the earlier one, i.e. the two intervals do not overlap; the steps are then joined
    as in ``classify_direction``. When some step's intervals overlap, or fewer than ``MIN_SEEDS`` seeds
    were run, the direction is ``not_resolved(n_seeds)``. Missing intervals are dropped; fewer than two
    values give ``n/a``."""
    v = [iv for iv in ((_interval(lo, hi)) for lo, hi in intervals) if iv is not None]
    if len(v) < 2:
        return NA
    if int(n_seeds or 0) < MIN_SEEDS:
        return not_resolved(n_seeds)
    signs = [interval_order(a, b) for a, b in pairwise(v)]
    if None in signs:
        return not_resolved(n_seeds)
    runs = [s for i, s in enumerate(signs) if i == 0 or s != signs[i - 1]]
    return {(1,): RISES, (-1,): FALLS, (1, -1): RISES_FALLS, (-1, 1): FALLS_RISES}.get(tuple(runs), MIXED)


def ordering_resolved(kinds: list[str], intervals, n_seeds, claim: tuple[str, ...] = OPTIMIZER_CLAIM) -> str | None:
    """``ordering_agrees`` with the seed spread: every pair of claimed kinds is compared by its seed intervals
    (as ``interval_order``); 'yes' / 'no' when every such pair's intervals are apart, else
    ``not_resolved(n_seeds)`` (also with fewer than ``MIN_SEEDS`` seeds); None with fewer than two claimed
    kinds measured."""
    ranked = [(claim.index(k), iv) for k, iv in zip(kinds, intervals) if k in claim and _interval(*iv) is not None]
    if len({r for r, _ in ranked}) < 2:
        return None
    if int(n_seeds or 0) < MIN_SEEDS:
        return not_resolved(n_seeds)
    orders = [interval_order(ia, ib) for ra, ia in ranked for rb, ib in ranked if ra < rb]
    if None in orders:
        return not_resolved(n_seeds)
    return "yes" if all(o == 1 for o in orders) else "no"


# Which bindings make a quantity a convention rather than a measurement. The smallest pair: only the corner
# (alpha = margin, beta = 0) is chosen by the constraints alone; on the margin line (binding "margin") a step
# row meets the line, so beta there, and alpha = beta + margin, follow the data at the configured margin. The
# non-vanishing term: wherever the margin line holds its pair (margin or corner) it moves with the margin
# (the margin_sensitivity table shows by how much), so its trend is the margin's, not the landscape's.
PAIR_CONVENTION = ("corner",)
TERM_CONVENTION = ("margin", "corner")


def constrained_points(points: list[str], bindings, convention: tuple[str, ...] = PAIR_CONVENTION) -> list[str]:
    """The points whose value the constraints set, not the data (their binding is in ``convention``): a trend
    through them says nothing about the landscape. Missing and empty bindings (not recorded; infeasible)
    are not counted."""
    return [p for p, b in zip(points, bindings) if b in convention]


# ----------------------------------------------------------------------------------- sequences
def _label(value) -> str:
    """A sweep value as it appears in points: the label of a mapping, else the value itself."""
    return value["label"] if isinstance(value, dict) else str(value)


def sweep_sequences(exp) -> list[dict]:
    """JSON-able sequences of one ExperimentSpec: for each swept key of TABLE2_KEYS and each
    combination of the other sweep values, the points in the order the config lists the values."""
    out = []
    for key in (k for k in exp.sweep_keys if k in TABLE2_KEYS):
        values = exp.raw["sweep"][key]
        labels = [_label(v) for v in values]
        kinds = {_label(v): optimizer_kind(v) for v in values if isinstance(v, dict)} if key == "optimizer" else {}
        groups: dict[tuple, dict[str, str]] = {}
        for r in exp.runs:
            fixed = tuple((k, str(v)) for k, v in r.sweep.items() if k != key)
            groups.setdefault(fixed, {})[str(r.sweep[key])] = r.point
        for fixed, by_value in groups.items():
            order = [lab for lab in labels if str(lab) in by_value]
            out.append({"experiment": exp.name, "title": exp.title, "figure": exp.raw.get("figure"),
                        "key": key, "fixed": ", ".join(f"{k.split('.')[-1]}={v}" for k, v in fixed),
                        "values": [str(lab) for lab in order], "points": [by_value[str(lab)] for lab in order],
                        "kinds": [kinds.get(str(lab), str(lab)) for lab in order]})
    return out
