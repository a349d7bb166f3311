"""Per-block curvature: the diagonal blocks of the Hessian, one per group of parameters.

Peers' users ask most for per-layer curvature: which layer is sharp, and does one layer cross the
stability threshold while the whole model does not. The Hessian's diagonal block H_BB of a block B
(a set of coordinates of the flat parameter vector) is reached through the same Hessian-vector
primitive as the whole-model measurements (landscope.measures.hvp): H_BB u is the product H v with
v = u on B and zero elsewhere, read back on B (:func:`block_operator`). Its largest eigenvalue
comes from a Lanczos run and its trace from Hutchinson's estimator, both on that restricted
operator (:func:`measure_blocks`).

Blocks (:func:`parameter_blocks`): by default the parameters of one module (``layers.0.weight`` and
``layers.0.bias`` form the block ``layers.0``; parameters registered on the model itself form
``(root)``); or, with a list of name patterns (shell-style, :mod:`fnmatch`), one block per pattern
holding the parameters whose names match it (each parameter in the first pattern it matches; the
others are not measured).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from landscope.measures.hvp import HVP, hutchinson, lanczos, seeded_generator

F64 = torch.float64

ROOT_BLOCK = "(root)"  # the block of parameters registered on the model itself (no owning submodule)


@dataclass
class Block:
    """One parameter block: its name, the names of its parameters and its flat coordinates."""
    name: str
    params: list[str]
    index: torch.Tensor  # int64 positions in the flat vector of the trainable parameters

    @property
    def n_params(self) -> int:
        return int(self.index.numel())


def parameter_blocks(model: nn.Module, blocks: str | list[str] = "modules") -> list[Block]:
    """The blocks of the model's trainable parameters, in the order of their first parameter.

    ``blocks`` is ``"modules"`` (group by owning module path), ``"none"`` (no block) or a list of
    fnmatch patterns over parameter names (one block per pattern, named by it; a parameter goes to
    the first pattern it matches). A pattern that matches no trainable parameter is an error (a typo
    would otherwise silently measure nothing).
    """
    named = [(name, p.numel()) for name, p in model.named_parameters() if p.requires_grad]
    offsets = [0]
    for _, size in named:
        offsets.append(offsets[-1] + size)
    if blocks == "none":
        return []
    groups: dict[str, list[int]] = {}
    if blocks == "modules":
        for i, (name, _) in enumerate(named):
            groups.setdefault(name.rpartition(".")[0] or ROOT_BLOCK, []).append(i)
    elif isinstance(blocks, (list, tuple)) and all(isinstance(b, str) for b in blocks):
        groups = {pattern: [] for pattern in blocks}
        for i, (name, _) in enumerate(named):
            first = next((pattern for pattern in blocks if fnmatchcase(name, pattern)), None)
            if first is not None:
                groups[first].append(i)
        empty = [pattern for pattern, members in groups.items() if not members]
        if empty:
            raise ValueError(f"curvature.blocks: pattern(s) {empty} match no trainable parameter (or only "
                             f"ones an earlier pattern took); the parameters are {[n for n, _ in named]}")
    else:
        raise ValueError(f"curvature.blocks must be modules, none or a list of name patterns, got {blocks!r}")
    out = []
    for name, members in groups.items():
        index = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in members])
        out.append(Block(name, [named[i][0] for i in members], index))
    return sorted(out, key=lambda b: int(b.index[0]))


def block_operator(hvp: HVP, n: int, index: torch.Tensor) -> HVP:
    """``u -> H_BB u``: the product with v = u on the block's coordinates ``index`` and zero outside,
    read back on the block (the Hessian's diagonal block, symmetric as H is)."""

    def op(u: torch.Tensor) -> torch.Tensor:
        v = torch.zeros(n, dtype=F64, device=u.device)
        v[index.to(u.device)] = u.to(F64)
        return hvp(v).to(F64)[index.to(u.device)]

    return op


def measure_blocks(op, n: int, blocks: list[Block], settings: dict, device="cpu") -> list[dict]:
    """One row per block: lambda_max and lambda_min of H_BB (the largest and smallest Ritz values of
    one Lanczos run of ``lanczos_iters`` products from a seeded Gaussian start: a lower bound of
    lambda_max, exact once the run spans the block or its Krylov space closes), its trace and the
    trace's standard error (Hutchinson, ``hutchinson_probes`` Rademacher probes), n_params, the
    products spent (n_hvp) and wall seconds.

    ``op`` is a Hessian-vector product on flat vectors of length ``n``. Seeds: Lanczos seed + 6,
    Hutchinson seed + 7 (the whole-model estimators use seed .. seed + 5), the same for every block.
    """
    s = settings
    rows = []
    calls = 0

    def counted(v: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return op(v)

    for b in blocks:
        t0, before = time.perf_counter(), calls
        bop = block_operator(counted, n, b.index)
        v0 = torch.randn(b.n_params, dtype=F64, generator=seeded_generator(s["seed"] + 6, device), device=device)
        run = lanczos(bop, v0, s["lanczos_iters"])
        trace, trace_se, _ = hutchinson(bop, b.n_params, s["hutchinson_probes"], s["seed"] + 7, device)
        rows.append({"block": b.name, "n_params": b.n_params, "lambda_max": float(run.ritz[-1]),
                     "lambda_min": float(run.ritz[0]), "trace": trace,
                     "trace_se": trace_se, "n_hvp": calls - before,
                     "wall_s": time.perf_counter() - t0})
    return rows
