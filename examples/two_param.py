"""Bring your own analytic problem: two parameters, two per-sample losses, an exact set of minimizers.

`examples/two_param.yaml` uses these factories; from the repository root:

    snakemake --cores all --configfile examples/two_param.yaml

The problem: w = (x, y), u = x + y, and two "samples" with losses

    f_1(w) = u^2 / 2,    f_2(w) = (u - 2)^2 / 2,    f = (f_1 + f_2) / 2,

so f_1* = f_2* = 0, the minimizers of f are the line S = {x + y = 1} (f* = 1/2: no interpolation),
and the projection onto S is exact: Proj(w, S) = w - (x + y - 1) / 2 (1, 1).

Three things make it run through landscope like the built-in analytic examples:
- the model's output for a batch of sample indices is f_i(w) itself, and the config says
  ``loss: identity`` (the per-sample loss is the model's output);
- the model has ``project(params) -> params``, the exact projection onto S, used by
  ``minimizer: projection`` (x_K = Proj(x_k, S) at every step instead of a stand-in);
- the dataset factory returns a ``Dataset`` with ``f_i_star``, used by ``f_i_star: exact``.

Ground truth (worked out in tests/test_byo.py): with e = u - 1, each f_i satisfies the
alpha-beta-condition at every w exactly when 0 < alpha - beta < 2 and
beta >= (alpha - beta - 1)^2 / (2 - (alpha - beta)); with alpha - beta >= margin the smallest alpha is
1 / (2 - margin) (0.526 at margin 0.1). A trajectory visits part of the plane, so its measured smallest
alpha can only be at most that.
"""

import torch
from torch import nn

from landscope.problem.dataset import Dataset

CENTRES = (0.0, 2.0)  # f_i = (u - c_i)^2 / 2


class ShiftedQuadratics(nn.Module):
    """w = (x, y); the output for sample i is f_i(w) = (x + y - c_i)^2 / 2."""

    def __init__(self, init_scale: float = 2.0, in_features: int = 1, n_classes: int = 1):
        super().__init__()
        self.w = nn.Parameter((torch.rand(2) * 2 - 1) * init_scale)  # landscope seeds torch before this

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(CENTRES, dtype=self.w.dtype, device=self.w.device)[idx.reshape(len(idx), -1)[:, 0].long()]
        return (self.w.sum() - c) ** 2 / 2

    def project(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Proj(w, S) onto S = {x + y = 1}, exactly: the replay's x_K under ``minimizer: projection``."""
        w = params[0].detach()
        return [w - (w.sum() - 1) / 2]


def shifted_quadratics(init_scale: float = 2.0, in_features: int = 1, n_classes: int = 1) -> nn.Module:
    return ShiftedQuadratics(init_scale, in_features, n_classes)


def two_samples() -> Dataset:
    """The two 'samples' are their indices 0 and 1; both per-sample minima are 0, exactly."""
    return Dataset(torch.tensor([[0.0], [1.0]]), torch.zeros(2, dtype=torch.long), "two_samples",
                   torch.zeros(2, dtype=torch.float64), {"source": "examples/two_param.py"})
