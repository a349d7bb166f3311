"""What the paper claims along sweeps of width, channels, depth, batch size, optimizer and model, and what a
measured sequence of numbers does, in plain Python (no Altair, no Polars): Snakemake imports this module
while it plans the DAG (common.smk lists the Table 2 sequences), and planning stays light.

* ``sweep_sequences(exp)`` turns an ExperimentSpec into JSON-able sequences: one per swept key of
  ``TABLE2_KEYS`` and per combination of the experiment's other sweep values, points in config order;
* ``classify_direction`` / ``optimizer_ordering`` / ``ordering_agrees`` / ``agreement`` say what a sequence
  does (``rises``, ``falls``, ``rises then falls``, ...) and whether that matches the claim.

The page that shows them is landscope.report.table2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RTOL = 0.05  # changes within RTOL * max|value| of a sequence count as flat
RISES, FALLS, FLAT, MIXED, NA = "rises", "falls", "flat", "mixed", "n/a"
RISES_FALLS, FALLS_RISES = "rises then falls", "falls then rises"
OPTIMIZER_CLAIM = ("adam", "sgdm", "sgd")  # the paper: Adam < SGDM < SGD (smallest beta first)
FOLLOWS_LOSS = "follows the final loss"


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
    signs = [1 if b - a > tol else -1 for a, b in zip(v, v[1:]) if abs(b - a) > tol]
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
    for (a, _), (b, lab) in zip(pairs, pairs[1:]):
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
