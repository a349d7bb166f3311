"""The paper's analytic examples: two-term finite sums f = (f_1 + f_2)/2 over two parameters (x, y).

They are ground truth for the measurements: the paper proves for which (alpha, beta) the
alpha-beta-condition holds with x_p = Proj(x, S), and these models know S, so the replay can use the
exact projection of every iterate (``minimizer: projection``).

- Example 1 (unbounded S): f_1 = u^2/(u^2+1), f_2 = (u+1)^2/((u+1)^2+1), u = x + y; S = {x + y = -1/2};
  holds for alpha >= 5/2 with beta in [4 alpha/5, alpha).
- Example 2 (saddle): f_1 = 1 - exp(-x^2-y^2), f_2 = 1 - exp(-(x-2)^2-(y-2)^2); two minimizers.
- Example 3 (local minimum): f_1 = (1+x^2+y^2)/(4+x^2+y^2),
  f_2 = ((x-2.5)^2+(y-2.5)^2)/(4+(x-2.5)^2+(y-2.5)^2). The paper quotes f* ~ 0.408 at (2.471, 2.471);
  for this formula the global minimizer is (2.3762, 2.3762), f* = 0.405716, and (0.2589, 0.2589)
  is a local minimum with f = 0.4948 (checked by a grid scan; see tests/test_analytic.py).

As a dataset, a sample is the index i in {0, 1}; the model's output for sample i is f_i(x, y) itself.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from landscope.problem.dataset import Dataset


def terms(example: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = w[..., 0], w[..., 1]
    if example == 1:
        u = x + y
        return u**2 / (u**2 + 1), (u + 1) ** 2 / ((u + 1) ** 2 + 1)
    if example == 2:
        return 1 - torch.exp(-x**2 - y**2), 1 - torch.exp(-(x - 2) ** 2 - (y - 2) ** 2)
    if example == 3:
        r1 = x**2 + y**2
        r2 = (x - 2.5) ** 2 + (y - 2.5) ** 2
        return (1 + r1) / (4 + r1), r2 / (4 + r2)
    raise ValueError(f"analytic example must be 1, 2 or 3, got {example}")


# exact per-term minima f_i* (min over (x, y) of each term)
TERM_MINIMA = {1: (0.0, 0.0), 2: (0.0, 0.0), 3: (0.25, 0.0)}


def f_value(example: int, w) -> float:
    f1, f2 = terms(example, torch.as_tensor(w, dtype=torch.float64))
    return float((f1 + f2) / 2)


@lru_cache(maxsize=None)
def minimizers(example: int) -> np.ndarray:
    """The isolated minimizers of f (examples 2 and 3), found by local minimization from symmetric starts."""
    from scipy.optimize import minimize  # ~0.3 s: only examples 2 and 3 need it

    starts = {2: [(0.1, 0.1), (1.9, 1.9)], 3: [(2.4, 2.4)]}[example]
    found = []
    for s in starts:
        res = minimize(lambda v: f_value(example, v), np.array(s, float), method="BFGS",
                       options={"gtol": 1e-12})
        found.append(res.x)
    return np.array(found)


def project(example: int, w: torch.Tensor) -> torch.Tensor:
    """Proj(w, S): the closest minimizer of f (exact for example 1, numerical for 2 and 3)."""
    if example == 1:
        shift = (w[0] + w[1] + 0.5) / 2
        return w - shift
    mins = torch.as_tensor(minimizers(example), dtype=w.dtype, device=w.device)
    return mins[torch.argmin(((mins - w) ** 2).sum(1))]


class AnalyticExample(nn.Module):
    """Parameters w = (x, y); output for sample i is f_i(w). Use with loss ``identity``."""

    default_loss = "identity"

    def __init__(self, example: int = 1, init: tuple[float, float] | None = None, init_scale: float = 2.0, **_):
        super().__init__()
        self.example = int(example)
        if init is None:
            start = (torch.rand(2, dtype=torch.float32) * 2 - 1) * init_scale
        else:
            start = torch.tensor(init, dtype=torch.float32)
        self.w = nn.Parameter(start)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        f1, f2 = terms(self.example, self.w)
        i = idx.reshape(len(idx), -1)[:, 0].long()
        return torch.where(i == 0, f1, f2)

    def project(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project(self.example, params[0].detach())]


def analytic_dataset(example: int = 1, **_) -> Dataset:
    """The two 'samples' of an analytic example, with their exact minima f_i*."""
    m = TERM_MINIMA[int(example)]
    return Dataset(torch.tensor([[0.0], [1.0]]), torch.zeros(2, dtype=torch.long), f"analytic{example}",
                   torch.tensor(m, dtype=torch.float64), {"source": f"the paper's Example {example}"})


def identity_loss(model, out, y):
    """The model's output already is the per-sample loss."""
    return out
