"""Per-block curvature against closed-form and dense block Hessians; the near-zero share on known spectra."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscope.measures import blocks as bl
from landscope.measures import curvature as cv
from landscope.measures import hvp
from landscope.problem.evaluate import flatten, trainable_parameters

F64 = torch.float64
SETTINGS = {"lanczos_iters": 40, "hutchinson_probes": 16, "seed": 3}


def mse(model, out, y):
    return (out.squeeze(-1) - y) ** 2


class TwoHeads(nn.Module):
    """out = a(x[:, :2]) + b(x[:, 2:]): with MSE, the (a, a) block of the Hessian is
    (2/n) sum_i [x_a; 1][x_a; 1]^T, the (b, b) block likewise, and the (a, b) block is not zero."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 1)
        self.b = nn.Linear(3, 1)

    def forward(self, x):
        return self.a(x[:, :2]) + self.b(x[:, 2:])


def dense_hessian(model, loss_fn, x, y) -> torch.Tensor:
    """The exact Hessian of the mean loss over the flat trainable parameters (autograd, float64)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in trainable_parameters(model)]
    sizes = [s.numel() for s in shapes]

    def f(w):
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(w, sizes), shapes)}
        return loss_fn(model, functional_call(model, params, (x,)), y).mean()

    return torch.autograd.functional.hessian(f, flatten(trainable_parameters(model)))


def two_heads_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=F64).repeat(n // 4, 1)
    x_a = signs * torch.tensor([1.0, 3.0], dtype=F64)  # orthogonal, centred columns: the (a, a) block is diagonal
    x_b = torch.randn(n, 3, dtype=F64, generator=g) + 0.5
    return torch.cat([x_a, x_b], 1), torch.randn(n, dtype=F64, generator=g)


def test_blocks_of_two_linear_heads_match_the_closed_form():
    torch.manual_seed(0)
    model = TwoHeads().double()
    x, y = two_heads_data()
    blocks = bl.parameter_blocks(model)
    assert [(b.name, b.params, b.n_params) for b in blocks] == [("a", ["a.weight", "a.bias"], 3),
                                                                ("b", ["b.weight", "b.bias"], 4)]
    op = hvp.hessian_operator(model, mse, x, y)
    rows = bl.measure_blocks(op, op.n, blocks, SETTINGS)
    n = len(y)
    xa1 = torch.cat([x[:, :2], torch.ones(n, 1, dtype=F64)], 1)
    xb1 = torch.cat([x[:, 2:], torch.ones(n, 1, dtype=F64)], 1)
    h_aa, h_bb = 2 * xa1.T @ xa1 / n, 2 * xb1.T @ xb1 / n
    assert torch.allclose(h_aa, torch.diag(torch.tensor([2.0, 18.0, 2.0], dtype=F64)))
    ra, rb = rows
    # block a: diag(2, 18, 2), Hutchinson exact on a diagonal matrix
    assert ra["lambda_max"] == pytest.approx(18.0, abs=1e-6) and ra["lambda_min"] == pytest.approx(2.0, abs=1e-6)
    assert ra["trace"] == pytest.approx(22.0, abs=1e-6) and ra["trace_se"] == pytest.approx(0.0, abs=1e-9)
    ev = torch.linalg.eigvalsh(h_bb)
    assert rb["lambda_max"] == pytest.approx(float(ev[-1]), abs=1e-6)
    assert rb["lambda_min"] == pytest.approx(float(ev[0]), abs=1e-6)
    # Hutchinson on the restricted operator is Hutchinson on the dense block, probe for probe
    same = hvp.hutchinson(lambda v: h_bb @ v, 4, SETTINGS["hutchinson_probes"], SETTINGS["seed"] + 7)
    assert rb["trace"] == pytest.approx(same[0], abs=1e-9) and rb["trace_se"] == pytest.approx(same[1], abs=1e-9)
    assert abs(rb["trace"] - float(torch.trace(h_bb))) < 4 * rb["trace_se"]
    # the whole Hessian couples the heads: its lambda_max is none of the blocks'
    h = dense_hessian(model, mse, x, y)
    assert torch.allclose(h[:3, :3], h_aa) and torch.allclose(h[3:, 3:], h_bb)
    assert float(torch.linalg.matrix_norm(h[:3, 3:])) > 1.0
    assert float(torch.linalg.eigvalsh(h)[-1]) > 18.05
    # Lanczos stops once its Krylov space closes: 2 distinct eigenvalues in block a, 4 in block b
    assert [r["n_hvp"] for r in rows] == [2 + SETTINGS["hutchinson_probes"], 4 + SETTINGS["hutchinson_probes"]]


def tanh_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2), nn.Tanh(), nn.Linear(2, 1)).double()


def mlp_data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(40, 3, dtype=F64, generator=g), torch.randn(40, dtype=F64, generator=g)


@pytest.mark.parametrize("spec, names", [
    ("modules", ["0", "2", "4"]),
    (["*.bias", "2.*", "*"], ["*", "*.bias", "2.*"]),  # sorted by first coordinate; '*' takes 0.weight first
])
def test_blocks_of_a_tanh_mlp_match_its_dense_block_hessians(spec, names):
    """Non-convex: block lambda_max and lambda_min to 1e-6 of the dense block's, also for blocks of
    non-contiguous coordinates (every bias)."""
    model = tanh_mlp()
    x, y = mlp_data()
    h = dense_hessian(model, mse, x, y)
    blocks = bl.parameter_blocks(model, spec)
    assert [b.name for b in blocks] == names
    taken = torch.cat([b.index for b in blocks])
    assert len(set(taken.tolist())) == len(taken) == h.shape[0]  # a partition of the coordinates
    op = hvp.hessian_operator(model, mse, x, y)
    rows = bl.measure_blocks(op, op.n, blocks, SETTINGS)
    for b, r in zip(blocks, rows):
        hb = h[b.index][:, b.index]
        ev = torch.linalg.eigvalsh(hb)
        assert r["block"] == b.name and r["n_params"] == len(b.index)
        assert r["lambda_max"] == pytest.approx(float(ev[-1]), abs=1e-6)
        assert r["lambda_min"] == pytest.approx(float(ev[0]), abs=1e-6)
        same = hvp.hutchinson(lambda v, m=hb: m @ v, len(b.index), SETTINGS["hutchinson_probes"], SETTINGS["seed"] + 7)
        assert r["trace"] == pytest.approx(same[0], abs=1e-6)
        assert abs(r["trace"] - float(torch.trace(hb))) < 4 * r["trace_se"]
    if spec == "modules":
        (bias,) = bl.parameter_blocks(model, ["*.bias"])
        assert bias.params == ["0.bias", "2.bias", "4.bias"] and bias.n_params == 8


def test_block_specs_root_none_and_errors():
    model = nn.Linear(3, 2)
    assert [(b.name, b.n_params) for b in bl.parameter_blocks(model)] == [(bl.ROOT_BLOCK, 8)]
    assert bl.parameter_blocks(model, "none") == []
    with pytest.raises(ValueError, match=r"match no trainable parameter"):
        bl.parameter_blocks(model, ["weight", "layers.*"])
    with pytest.raises(ValueError, match="modules, none or a list"):
        bl.parameter_blocks(model, "layers")
    model.bias.requires_grad_(False)  # frozen parameters are not coordinates
    assert [(b.params, b.n_params) for b in bl.parameter_blocks(model)] == [(["weight"], 6)]


# ----------------------------------------------------------------------------------- near-zero share
def test_near_zero_share_of_a_quadratic_with_12_zero_eigenvalues_of_40():
    g = torch.Generator().manual_seed(0)
    d = torch.cat([torch.zeros(12, dtype=F64), torch.linspace(1.0, 4.0, 28, dtype=F64)])
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=F64, generator=g))
    a = q @ torch.diag(d) @ q.T
    dens = hvp.slq(lambda v: a @ v, 40, probes=12, iters=40, seed=5)
    assert dens.sigma == pytest.approx(4.0 / 40, rel=1e-6)
    share, se = dens.near_zero_fraction()
    assert 0 < se < 0.05 and abs(share - 12 / 40) < 2 * se
    # without the zeros there is nothing below sigma
    dens = hvp.slq(lambda v: a @ v + 2.0 * v, 40, probes=4, iters=40, seed=5)
    assert dens.near_zero_fraction()[0] == pytest.approx(0.0, abs=1e-12)


def test_near_zero_share_of_linear_regression_on_rank_deficient_features():
    """MSE without bias on 6 features of rank 3, X = sqrt(n/2) U diag(s) V^T: H = (2/n) X^T X = V diag(s^2) V^T
    has eigenvalues 1, 1.5, 2 and three zeros; the curvature row reports the share 1/2 within its
    standard error (sigma = 2/6 keeps the nonzero ones out)."""
    g = torch.Generator().manual_seed(4)
    n = 50
    u, _ = torch.linalg.qr(torch.randn(n, 3, dtype=F64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(6, 3, dtype=F64, generator=g))
    x = (n / 2) ** 0.5 * u @ torch.diag(torch.tensor([1.0, 1.5, 2.0], dtype=F64).sqrt()) @ v.T
    y = torch.randn(n, dtype=F64, generator=g)
    model = nn.Linear(6, 1, bias=False).double()
    evals = torch.linalg.eigvalsh(dense_hessian(model, mse, x, y))
    assert torch.allclose(evals, torch.tensor([0, 0, 0, 1.0, 1.5, 2.0], dtype=F64), atol=1e-9)
    op = hvp.hessian_operator(model, mse, x, y)
    s = {"slq_probes": 16, "lanczos_iters": 6, "top_k": 3, "hutchinson_probes": 2, "seed": 0}
    row, _ = cv.measure_operator(op, s)
    assert row["lambda_max"] == pytest.approx(2.0, rel=1e-9)
    assert row["density_sigma"] == pytest.approx(2.0 / 6, rel=1e-6)
    share, se = row["near_zero_fraction"], row["near_zero_fraction_se"]
    assert 0 < se < 0.1 and abs(share - 0.5) < 2 * se
