"""landscope's whole-model curvature against curvlinops-for-pytorch and the dense Hessian.

The case: a small CNN with BatchNorm (conv 1->4 3x3, BatchNorm2d, ReLU, 2x2 max-pool, linear 36->10;
418 parameters) trained 30 SGD steps on sklearn's 8x8 digits, then measured on a fixed batch of 32
other digits with the mean cross-entropy. landscope's numbers are the curvature row and spectrum rows
of ``measure_operator`` on ``hessian_operator`` (what the curvature job writes); curvlinops' are
computed the way its documentation shows: ``HessianLinearOperator(model, CrossEntropyLoss(), params,
[(x, y)])``, ``scipy.sparse.linalg.eigsh`` on its ``.to_scipy()`` export for the top eigenvalue,
``hutchinson_trace`` / ``hutchpp_trace`` for the trace and ``LanczosApproximateSpectrumCached``
(Papyan 2020) for the density. The ground truth is the dense float64 Hessian of the same function.

BatchNorm. landscope's ``hessian_operator`` measures in evaluation mode: BatchNorm normalises with
its running statistics (here those left by the 30 training steps), so the loss is a sum of per-sample
terms and a fixed function of the parameters. It switches the model itself and gives the mode back,
so it is handed the model in train mode, as a training loop leaves it. curvlinops evaluates
``model_func`` in whatever mode the module is in; a train-mode BatchNorm is not even differentiable
for it (3.0.1: its running-statistics update mutates a buffer inside torch.func, a RuntimeError, after
the deterministic check's forward passes have already moved the running statistics). So curvlinops
is given the model after ``model.eval()``: the same function as landscope's. That the mode matters
here is itself checked: the Hessian with batch statistics has a clearly different top eigenvalue.

Tolerances. The operators agree to float32 rounding (HVPs ~1e-7 relative, asserted 1e-5); Lanczos
with full reorthogonalisation (landscope) and ARPACK (eigsh) converge on 418 parameters, so lambda_max
is asserted to 1e-5 relative (measured: a few 1e-8). Stochastic estimates are asserted within 4
standard deviations of the mean of their P probes, where the deviation is the exact one, computed
from the dense Hessian: a Rademacher probe's z^T A z has variance 2 sum_{i != j} A_ij^2, a probe
uniform on the sphere (curvlinops' Lanczos starts from normalised Gaussians) u^T A u has variance
2 / (n + 2) (mean of a_k^2 - (mean of a_k)^2) over A's eigenvalues a_k; with A = g(H) this covers
every SLQ quantity, whose per-probe value is the Gauss quadrature z^T g(H) z / n once the Lanczos run
resolves g (exact for the moments lambda^k, k < 2 * iters; for the smoothed steps below, measured
here within 1e-7 of z^T g(H) z / n, far below the probe deviations of ~4e-3). The seeds are fixed,
so each test is deterministic; 4 deviations is where a correct estimator would fail for fewer than 1 in 10^4 seeds.
"""
import copy
import math

import curvlinops  # a declared test dependency: missing, this module fails instead of skipping
import pytest
import torch
from scipy.sparse.linalg import eigsh
from sklearn.datasets import load_digits
from torch import nn

from landscope.measures import curvature as cv
from landscope.measures import hvp
from landscope.problem.evaluate import flatten, trainable_parameters
from landscope.problem.models import LOSSES
from landscope.settings import curvature_settings

F64 = torch.float64
# linear_operator (a curvlinops dependency) still decorates with torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
SETTINGS = {"lanczos_iters": 60, "slq_probes": 16, "hutchinson_probes": 60, "seed": 0, "top_k": 3}
CL_PRODUCTS = 60  # curvlinops' trace estimators (a multiple of 3 for Hutch++)
CL_NCV, CL_REPEATS = 60, 16  # curvlinops' Lanczos length and number of density repeats


def rel(a, b):
    return abs(a - b) / abs(b)


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(36, 10))


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The float64 Hessian of the mean cross-entropy of ``model`` as it is (its mode included),
    over its trainable parameters in flatten's order."""
    ref = copy.deepcopy(model).double()
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in trainable_parameters(ref)]

    def loss(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        out = torch.func.functional_call(ref, {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)},
                                         (x.double(),))
        return nn.functional.cross_entropy(out, y)

    h = torch.autograd.functional.hessian(loss, flatten(trainable_parameters(ref)), vectorize=True)
    return (h + h.T) / 2


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    labels = torch.tensor(digits.target)
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):  # train mode: BatchNorm's running statistics move away from (0, 1)
        idx = torch.randint(0, 1000, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
        opt.step()
    x, y = images[1500:1532], labels[1500:1532]  # a fixed batch none of the steps saw

    assert model.training
    op = hvp.hessian_operator(model, LOSSES["cross_entropy"], x, y)
    assert model.training  # landscope switched to evaluation mode and back by itself
    row, spectrum = cv.measure_operator(op, curvature_settings(SETTINGS))

    model.eval()  # curvlinops measures the module as it is: give it landscope's function
    cl_op = curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), trainable_parameters(model), [(x, y)])
    h = dense_hessian(model, x, y)
    model.train()
    for m in model.modules():  # the batch-statistics function, for contrast only
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
    h_batch = dense_hessian(model, x, y)
    model.eval()
    return {"model": model, "op": op, "cl": cl_op, "row": row, "spectrum": spectrum, "h": h,
            "evals": torch.linalg.eigvalsh(h), "h_batch": h_batch, "n": op.n}


def test_the_case_is_a_nonconvex_cnn_whose_batchnorm_mode_matters(case):
    """418 parameters, an indefinite Hessian, running statistics away from (0, 1), and a top
    eigenvalue with batch statistics far from the one with running statistics: agreeing on the
    latter pins the mode."""
    ev, bn = case["evals"], case["model"][1]
    assert case["n"] == 418 and case["cl"].shape == (418, 418)
    assert float(ev[0]) < -1 and float(ev[-1]) > 5
    assert float((bn.running_var - 1).abs().max()) > 0.05 and float(bn.running_mean.abs().max()) > 0.05
    assert rel(float(torch.linalg.eigvalsh(case["h_batch"])[-1]), float(ev[-1])) > 0.1


def test_hvp_equals_curvlinops_matvec_and_the_dense_product(case):
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        v = torch.randn(case["n"], dtype=F64, generator=gen)
        ours = case["op"](v)
        theirs = (case["cl"] @ v.float()).double()
        exact = case["h"] @ v
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-5
        assert float((ours - exact).norm() / exact.norm()) < 1e-5
        assert float((theirs - exact).norm() / exact.norm()) < 1e-5
        # and not the batch-statistics Hessian's
        assert float((ours - case["h_batch"] @ v).norm() / exact.norm()) > 0.05


def test_lambda_max_equals_eigsh_and_dense(case):
    ev, row = case["evals"], case["row"]
    (theirs,) = eigsh(case["cl"].to_scipy(), k=1, which="LA", return_eigenvectors=False)
    assert rel(float(theirs), float(ev[-1])) < 1e-5
    assert rel(row["lambda_max"], float(ev[-1])) < 1e-5
    assert rel(row["lambda_max"], float(theirs)) < 1e-5
    assert rel(row["lambda_2"], float(ev[-2])) < 1e-5 and rel(row["lambda_3"], float(ev[-3])) < 1e-5
    assert rel(row["lambda_min"], float(ev[0])) < 1e-5


def rademacher_sd(a: torch.Tensor) -> float:
    """Standard deviation of z^T A z over Rademacher z: sqrt(2 sum_{i != j} A_ij^2)."""
    off = a - torch.diag(torch.diag(a))
    return math.sqrt(2 * float((off ** 2).sum()))


def test_traces_within_4_exact_deviations_of_the_dense_trace(case):
    h, row = case["h"], case["row"]
    exact = float(torch.trace(h))
    p = SETTINGS["hutchinson_probes"]
    sd = rademacher_sd(h) / math.sqrt(p)  # of the mean of p probes
    assert abs(row["trace"] - exact) < 4 * sd
    assert abs(row["trace"] - exact) < 4 * row["trace_se"]
    assert 0.7 < row["trace_se"] / sd < 1.4  # the reported SE is honest (its own error ~ 1/sqrt(2p))
    assert abs(row["trace_hutchpp"] - exact) < 4 * row["trace_hutchpp_se"]
    torch.manual_seed(3)  # curvlinops draws its probes from torch's global generator
    theirs = float(curvlinops.hutchinson_trace(case["cl"], CL_PRODUCTS))
    assert abs(theirs - exact) < 4 * rademacher_sd(h) / math.sqrt(CL_PRODUCTS)
    # Hutch++: Hutchinson with N = products / 3 probes on P H P (P a projection), and
    # 2 sum_{i != j} (PHP)_ij^2 <= 2 ||PHP||_F^2 <= 2 ||H||_F^2 bounds its variance
    theirs_pp = float(curvlinops.hutchpp_trace(case["cl"], CL_PRODUCTS))
    assert abs(theirs_pp - exact) < 4 * math.sqrt(2 * float((h ** 2).sum()) / (CL_PRODUCTS // 3))


def sphere_sd(g: torch.Tensor) -> float:
    """Standard deviation of u^T A u for u uniform on the unit sphere, A with eigenvalues g."""
    n = len(g)
    return math.sqrt(2 / (n + 2) * float(g.var(correction=0)))


def test_slq_moments_and_negative_share_match_the_dense_spectrum(case):
    """Per probe, sum_i w_i theta_i^k is z^T H^k z / n exactly (k < 2 * 60), so the mean over the 16
    probes estimates tr(H^k) / n with deviation sqrt(2 sum_{i != j} (H^k)_ij^2) / n / 4; the negative
    share is the quadrature of the smooth g = Phi((-3 sigma - lambda) / sigma), the same with g(H)."""
    h, ev, row, n = case["h"], case["evals"], case["row"], case["n"]
    probes = SETTINGS["slq_probes"]
    nodes = [[(r["ritz"], r["weight"]) for r in case["spectrum"] if r["probe"] == j] for j in range(probes)]
    assert all(math.isclose(sum(w for _, w in p), 1.0, abs_tol=1e-9) for p in nodes)
    hk = torch.eye(n, dtype=F64)
    for k in (1, 2, 3):
        hk = hk @ h
        estimate = sum(sum(w * t ** k for t, w in p) for p in nodes) / probes
        exact = float((ev ** k).mean())
        assert abs(estimate - exact) < 4 * rademacher_sd(hk) / n / math.sqrt(probes), k
    sigma = row["density_sigma"]
    assert sigma == pytest.approx((row["lambda_max"] - row["lambda_min"]) / SETTINGS["lanczos_iters"], rel=1e-9)
    g = torch.special.ndtr((-hvp.NEG_SIGMAS * sigma - ev) / sigma)
    vecs = torch.linalg.eigh(h).eigenvectors
    gh = vecs @ torch.diag(g) @ vecs.T
    sd = rademacher_sd(gh) / n / math.sqrt(probes)
    exact = float(g.mean())
    assert 0.02 < exact < 0.05 and float((ev < 0).double().mean()) > 0.1  # a real share, beside a zero bulk
    assert abs(row["neg_fraction"] - exact) < 4 * sd
    assert abs(row["neg_fraction"] - exact) < 4 * row["neg_fraction_se"]


def test_curvlinops_density_matches_the_dense_spectrum_smoothed_alike(case):
    """curvlinops' density on its grid against the exact one smoothed by its own kernel (width
    2 / (ncv - 1) / sqrt(8 ln 3) in the spectrum rescaled to [-1, 1]) on the same grid, integrated by the
    same trapezoid rule: total mass, mean and the mass below zero, each a per-eigenvalue function g
    whose repeat mean has deviation sphere_sd(g) / sqrt(16). landscope's density evaluated with the
    same kernel width carries the same mass below zero within its own deviation."""
    ev, n = case["evals"], case["n"]
    lo, hi = (float(b) for b in eigsh(case["cl"].to_scipy(), k=2, which="BE", return_eigenvectors=False))
    torch.manual_seed(4)
    cached = curvlinops.LanczosApproximateSpectrumCached(case["cl"], ncv=CL_NCV, boundaries=(lo, hi))
    grid, theirs = (t.double() for t in cached.approximate_spectrum(num_repeats=CL_REPEATS))
    half = (hi - lo) * 1.1 / 2  # its default 5% margin on either side
    width = half * 2 / (CL_NCV - 1) / math.sqrt(8 * math.log(3.0))
    kernel = torch.exp(-0.5 * ((grid[:, None] - ev[None, :]) / width) ** 2) / (width * math.sqrt(2 * math.pi))
    below = (grid < 0).double()
    for weight in (torch.ones_like(grid), grid, below):
        g = torch.trapezoid(weight[:, None] * kernel, grid, dim=0)  # per eigenvalue
        estimate = float(torch.trapezoid(weight * theirs, grid))
        # + 1e-5: curvlinops works in the model's float32 (the total mass has no probe variance)
        assert abs(estimate - float(g.mean())) < 4 * sphere_sd(g) / math.sqrt(CL_REPEATS) + 1e-5
    g = torch.trapezoid(below[:, None] * kernel, grid, dim=0)
    assert 0.3 < float(g.mean()) < 0.6  # the zero bulk, smeared across zero
    nodes = torch.tensor([r["ritz"] for r in case["spectrum"]], dtype=F64)  # the spectrum rows as stored
    weights = torch.tensor([r["weight"] for r in case["spectrum"]], dtype=F64) / SETTINGS["slq_probes"]
    ours = float(torch.trapezoid(below * hvp.smoothed_density(nodes, weights, grid, width), grid))
    vecs = torch.linalg.eigh(case["h"]).eigenvectors
    sd = rademacher_sd(vecs @ torch.diag(g) @ vecs.T) / n / math.sqrt(SETTINGS["slq_probes"])
    assert abs(ours - float(g.mean())) < 4 * sd
