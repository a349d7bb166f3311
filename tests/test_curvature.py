"""Curvature estimators against known spectra: quadratics Q diag(d) Q^T and exact small Hessians."""
import math

import polars as pl
import pytest
import torch
from torch import nn

from landscope import settings
from landscope.config import validate
from landscope.measures import curvature as cv
from landscope.measures import hvp
from landscope.problem.evaluate import flatten, trainable_parameters

F64 = torch.float64


def quadratic(d: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A = Q diag(d) Q^T with a random orthogonal Q: the Hessian of f(x) = 0.5 x^T A x."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(d), len(d), dtype=F64, generator=g))
    return q @ torch.diag(d) @ q.T


def matvec(a: torch.Tensor):
    return lambda v: a @ v


# spectrum: bulk in [-1, 1.5], three separated top values and a separated bottom value
SPECTRUM = torch.cat([torch.tensor([12.0, 9.0, 7.0, -4.0], dtype=F64),
                      torch.linspace(-1.0, 1.5, 116, dtype=F64)])


def rel(a, b):
    return abs(a - b) / abs(b)


def test_lanczos_top3_and_bottom_of_known_spectrum():
    a = quadratic(SPECTRUM)
    top, bottom, n_hvp = hvp.top_eigenvalues(matvec(a), len(SPECTRUM), k=3, iters=40, seed=1)
    for got, want in zip(top, [12.0, 9.0, 7.0]):
        assert rel(got, want) < 1e-6
    assert rel(bottom, -4.0) < 1e-6
    assert n_hvp == 40


def test_lanczos_stops_when_krylov_space_is_invariant():
    """Four distinct eigenvalues: the Krylov space has dimension 4, so 4 products give them exactly."""
    d = torch.tensor([5.0] * 10 + [2.0] * 10 + [-1.0] * 10 + [0.5] * 10, dtype=F64)
    run = hvp.lanczos(matvec(quadratic(d)), torch.ones(40, dtype=F64), iters=30)
    assert run.n_hvp == 4
    assert torch.allclose(run.ritz, torch.tensor([-1.0, 0.5, 2.0, 5.0], dtype=F64), atol=1e-10)
    assert math.isclose(float(run.weights.sum()), 1.0, abs_tol=1e-12)
    assert torch.allclose(run.ritz_after(4), run.ritz) and len(run.ritz_after(2)) == 2


def soft_negative_fraction(evals: torch.Tensor, sigma: float, sigmas: float = hvp.NEG_SIGMAS) -> float:
    """The exact value SLQ's negative fraction estimates: (1/n) sum_k Phi((-sigmas sigma - lambda_k) / sigma)."""
    return float(torch.special.ndtr((-sigmas * sigma - evals) / sigma).mean())


def test_slq_negative_fraction_of_a_known_20_percent_share():
    """20% of the eigenvalues clearly negative (below -3 sigma - 2 sigma), a near-zero bulk of both
    signs, positives up to 20: the estimate is 0.2 within its stated uncertainty."""
    d = torch.cat([torch.linspace(-20.0, -13.0, 60, dtype=F64), torch.linspace(-1e-3, 1e-3, 150, dtype=F64),
                   torch.linspace(0.5, 20.0, 90, dtype=F64)])
    dens = hvp.slq(matvec(quadratic(d, seed=2)), 300, probes=30, iters=16, seed=3)
    mean, se = dens.negative_fraction()
    sigma = dens.sigma
    assert sigma == pytest.approx(40.0 / 16, rel=0.02)  # the spectrum's range over the Lanczos length
    assert 0 < se < 0.03
    truth = soft_negative_fraction(d, sigma)
    assert truth == pytest.approx(0.2, abs=2e-3)
    assert abs(mean - truth) < 3 * se and abs(mean - 0.2) < 3 * se
    assert dens.n_hvp == 30 * 16
    for p in dens.probes:  # each probe's weights are a probability distribution
        assert math.isclose(float(p.weights.sum()), 1.0, abs_tol=1e-10)


@pytest.mark.parametrize("bulk", ["psd", "both_signs"])
def test_slq_negative_fraction_ignores_the_near_zero_bulk(bulk):
    """90% of the eigenvalues within 1e-3 of zero (PSD, or half of them tiny negatives that 16 Lanczos
    steps cannot resolve), 10% up to 40: about zero, not the bulk's weight."""
    lo = 0.0 if bulk == "psd" else -1e-3
    d = torch.cat([torch.linspace(lo, 1e-3, 360, dtype=F64), torch.linspace(0.5, 40.0, 40, dtype=F64)])
    dens = hvp.slq(matvec(quadratic(d, seed=5)), 400, probes=10, iters=16, seed=1)
    mean, se = dens.negative_fraction()
    assert 0 <= mean < 2e-3  # the smoothing floor: 0.9 * Phi(-3) = 1.2e-3
    assert mean == pytest.approx(soft_negative_fraction(d, dens.sigma), abs=3 * se + 1e-4)


def test_smoothed_density_integrates_to_one_and_peaks_at_the_eigenvalues():
    d = torch.tensor([-2.0] * 20 + [3.0] * 30 + [8.0] * 50, dtype=F64)
    dens = hvp.slq(matvec(quadratic(d, seed=7)), 100, probes=4, iters=10, seed=0)
    grid = torch.linspace(-10, 16, 2601, dtype=F64)
    rho = dens.density(grid, sigma=0.3)
    assert float(torch.trapezoid(rho, grid)) == pytest.approx(1.0, abs=1e-6)
    # three eigenvalues: Lanczos is exact after 3 steps; the mass near each matches its share
    for centre, share in ((-2.0, 0.2), (3.0, 0.3), (8.0, 0.5)):
        near = (grid - centre).abs() < 1.5
        assert float(torch.trapezoid(rho[near], grid[near])) == pytest.approx(share, abs=0.1)
    assert dens.sigma == pytest.approx(10.0 / 10)  # range 10 over the asked Lanczos length 10


def test_slq_pooled_extremes_bound_the_spectrum():
    a = quadratic(SPECTRUM, seed=4)
    dens = hvp.slq(matvec(a), len(SPECTRUM), probes=3, iters=40, seed=5)
    top = dens.top(3)
    assert all(t <= w + 1e-9 for t, w in zip(top, [12.0, 9.0, 7.0]))  # Ritz values interlace
    assert rel(top[0], 12.0) < 1e-6 and rel(dens.bottom, -4.0) < 1e-6


def test_hutchinson_within_4_se_and_se_matches_theory():
    a = quadratic(SPECTRUM, seed=6)
    m = 400
    est, se, n_hvp = hvp.hutchinson(matvec(a), len(SPECTRUM), probes=m, seed=7)
    true = float(SPECTRUM.sum())
    assert abs(est - true) < 4 * se
    off = a - torch.diag(torch.diag(a))
    true_se = math.sqrt(2 * float((off ** 2).sum()) / m)  # Var(z^T A z) = 2 sum_{i!=j} A_ij^2
    assert 0.8 < se / true_se < 1.25
    assert n_hvp == m


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    d = torch.arange(1.0, 31.0, dtype=F64)
    est, se, _ = hvp.hutchinson(matvec(torch.diag(d)), 30, probes=5, seed=0)
    assert est == pytest.approx(465.0, abs=1e-9) and se == pytest.approx(0.0, abs=1e-9)


def test_hutchpp_beats_hutchinson_on_a_fast_decaying_spectrum():
    """lambda_i = 100 / i^2 (i = 1..300), 30 products each, 40 seeds: both unbiased, Hutch++'s mean
    absolute error far smaller; Hutch++'s standard error (from 10 deflated probes, so itself noisy)
    covers most errors: at least 80% within 2 SE (nominal for Student's t with 9 dof: 92%)."""
    d = 100.0 / torch.arange(1, 301, dtype=F64) ** 2
    a, true = quadratic(d, seed=8), float(d.sum())
    err_h, err_pp, z_pp = [], [], []
    for seed in range(40):
        est, _, n_h = hvp.hutchinson(matvec(a), 300, probes=30, seed=seed)
        pp, se, n_pp = hvp.hutchpp(matvec(a), 300, products=30, seed=seed)
        assert n_h == n_pp == 30
        err_h.append(est - true)
        err_pp.append(pp - true)
        z_pp.append((pp - true) / se)
    mae_h = sum(abs(e) for e in err_h) / 40
    mae_pp = sum(abs(e) for e in err_pp) / 40
    assert mae_pp < mae_h / 5
    assert abs(sum(err_h) / 40) < 4 * (torch.tensor(err_h).std() / math.sqrt(40))  # unbiased
    assert abs(sum(err_pp) / 40) < 4 * (torch.tensor(err_pp).std() / math.sqrt(40))
    assert sum(abs(z) < 2 for z in z_pp) >= 0.8 * 40


def test_hutchpp_is_exact_for_low_rank():
    """Rank 3 <= the sketch's 4 columns: the low-rank part holds the whole trace, the rest is 0."""
    d = torch.cat([torch.tensor([5.0, -2.0, 1.0], dtype=F64), torch.zeros(47, dtype=F64)])
    est, se, n_hvp = hvp.hutchpp(matvec(quadratic(d, seed=9)), 50, products=12, seed=0)
    assert est == pytest.approx(4.0, abs=1e-9) and se == pytest.approx(0.0, abs=1e-9)
    assert n_hvp == 4 + 3 + 4  # sketch, the 3 kept directions, 4 deflated probes


def test_power_iteration_converges_to_lambda_max():
    d = torch.cat([torch.tensor([10.0], dtype=F64), torch.linspace(0.0, 5.0, 49, dtype=F64)])
    history = []
    lam, n_hvp = hvp.power_iteration(matvec(quadratic(d)), 50, tol=1e-10, seed=0, history=history)
    assert rel(lam, 10.0) < 1e-8
    assert 5 < n_hvp < 200 and len(history) == n_hvp and history[-1] == lam
    errs = [10.0 - h for h in history]  # Rayleigh quotients rise monotonically to lambda_max (PSD)
    assert all(e1 >= e2 >= 0 for e1, e2 in zip(errs, errs[1:]))


@pytest.mark.parametrize("call, needle", [
    (lambda: hvp.top_eigenvalues(lambda v: v, 5, k=0), "k must be >= 1"),
    (lambda: hvp.slq(lambda v: v, 5, probes=0), "probes must be >= 1"),
    (lambda: hvp.hutchinson(lambda v: v, 5, probes=1), "probes must be >= 2"),
    (lambda: hvp.hutchpp(lambda v: v, 5, products=3), "products must be >= 4"),
    (lambda: hvp.lanczos(lambda v: v, torch.ones(5, dtype=F64), iters=0), "iters must be >= 1"),
])
def test_bad_settings_are_named(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


# ----------------------------------------------------------------------------------- tiny networks
def ce(model, out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def tiny_problem(extra: nn.Module | None = None):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 5), nn.Tanh()] + ([extra] if extra is not None else []) + [nn.Linear(5, 3)]
    model = nn.Sequential(*layers).double()
    x = torch.randn(32, 4, dtype=F64)
    y = torch.randint(0, 3, (32,))
    return model, x, y


def exact_hessian(model, x, y):
    """torch.autograd.functional.hessian of the mean loss on the flat parameters, in eval mode."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = flatten(trainable_parameters(model))
    was = model.training
    model.eval()

    def f(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        out = torch.func.functional_call(model, params, (x,))
        return ce(model, out, y).mean()

    h = torch.autograd.functional.hessian(f, flat)
    model.train(was)
    return h


@pytest.mark.parametrize("extra", [None, nn.Dropout(0.5), nn.BatchNorm1d(5)], ids=["plain", "dropout", "batchnorm"])
def test_hvp_matches_exact_hessian_in_eval_mode(extra):
    model, x, y = tiny_problem(extra)
    if isinstance(extra, nn.BatchNorm1d):  # non-trivial running statistics
        extra.running_mean.copy_(torch.linspace(-1, 1, 5))
        extra.running_var.copy_(torch.linspace(0.5, 2, 5))
    model.train()
    h = exact_hessian(model, x, y)
    op = hvp.hessian_operator(model, ce, x, y)
    assert model.training  # the caller's mode is restored
    v = torch.randn(op.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(op(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.n_hvp == 1


def test_estimators_on_tiny_mlp_match_exact_spectrum_and_trace():
    model, x, y = tiny_problem()
    h = exact_hessian(model, x, y)
    evals = torch.linalg.eigvalsh(h)
    op = hvp.hessian_operator(model, ce, x, y)
    top, bottom, _ = hvp.top_eigenvalues(op, op.n, k=3, iters=op.n, seed=0)
    for got, want in zip(top, evals.flip(0)[:3].tolist()):
        assert rel(got, want) < 1e-6
    assert rel(bottom, float(evals[0])) < 1e-6
    est, se, _ = hvp.hutchinson(op, op.n, probes=64, seed=2)
    assert abs(est - float(torch.trace(h))) < 4 * se
    pp, pp_se, _ = hvp.hutchpp(op, op.n, products=30, seed=2)
    assert abs(pp - float(torch.trace(h))) < max(4 * pp_se, 1e-8) and pp_se < se


def test_negative_fraction_of_tiny_mlp_matches_its_exact_hessian():
    """An MLP at initialisation (tanh, so saddle-like: clearly negative eigenvalues): the SLQ fraction
    below -3 sigma (12 Lanczos steps, fewer than the 43 parameters) agrees with the exact
    eigenvalues' soft count at the same sigma within 3 standard errors."""
    model, x, y = tiny_problem()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # larger weights: a more indefinite Hessian
    evals = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    op = hvp.hessian_operator(model, ce, x, y)
    dens = hvp.slq(op, op.n, probes=40, iters=12, seed=4)
    mean, se = dens.negative_fraction()
    truth = soft_negative_fraction(evals, dens.sigma)
    hard = float((evals < -hvp.NEG_SIGMAS * dens.sigma).double().mean())
    assert truth > 0.02 and abs(mean - truth) < 3 * se
    assert abs(truth - hard) < 0.05  # the soft count is close to the share below -3 sigma
    assert dens.sigma >= (float(evals[-1]) - float(evals[0])) / 12 * 0.8  # pooled Ritz range ~ the true range


def test_preconditioned_sharpness_of_tiny_mlp_matches_exact():
    """lambda_max(P^{-1/2} H P^{-1/2}) by Lanczos = the exact top eigenvalue of P^{-1} H."""
    model, x, y = tiny_problem()
    h = exact_hessian(model, x, y)
    p = torch.linspace(0.01, 2.0, h.shape[0], dtype=F64)
    want = float(torch.linalg.eigvals(torch.diag(1 / p) @ h).real.max())
    op = hvp.hessian_operator(model, ce, x, y)
    got = float(hvp.lanczos(cv.preconditioned_operator(op, p), torch.ones(op.n, dtype=F64), op.n).ritz[-1])
    assert rel(got, want) < 1e-8


def test_adam_preconditioner_reads_the_optimizer_state():
    """After Adam steps, P = (1 - b1^t) (sqrt(v_t / (1 - b2^t)) + eps), flat in the parameters' order;
    a parameter that never had a gradient gets P = inf."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.8, 0.9), eps=1e-3)
    v = [torch.zeros_like(q) for q in model.parameters()]
    for t in range(1, 4):
        opt.zero_grad()
        loss = model(torch.randn(5, 3, dtype=F64)).pow(2).mean()
        loss.backward()
        model[1].bias.grad = None  # never updated: no state
        for vi, q in zip(v, model.parameters()):
            if q.grad is not None:
                vi.mul_(0.9).add_(0.1 * q.grad ** 2)
        opt.step()
    got = cv.adam_preconditioner(opt.state_dict(), list(model.parameters()),
                                 {"name": "adam", "betas": [0.8, 0.9], "eps": 1e-3})
    want = torch.cat([((1 - 0.8 ** 3) * ((vi / (1 - 0.9 ** 3)).sqrt() + 1e-3)).reshape(-1) for vi in v[:3]])
    assert torch.allclose(got[:-1], want, rtol=1e-12) and got[-1] == math.inf
    with pytest.raises(ValueError, match="does not belong"):
        cv.adam_preconditioner(opt.state_dict(), list(model.parameters())[:2], {"name": "adam"})


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.5, True)])
def test_eos_threshold_is_where_torch_sgd_turns_unstable_on_a_quadratic(momentum, nesterov):
    """torch.optim.SGD on f(x) = a x^2 / 2: converges at a = 0.98 threshold, diverges at 1.02 threshold."""
    lr = 0.1
    thr, rule = cv.eos_threshold({"name": "sgd", "momentum": momentum, "nesterov": nesterov}, lr)
    assert rule == {(0.0, False): "gd", (0.9, False): "heavy_ball", (0.5, True): "nesterov"}[(momentum, nesterov)]

    def final(a):
        x = torch.ones(1, dtype=F64, requires_grad=True)
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum, nesterov=nesterov)
        for _ in range(2000):
            opt.zero_grad()
            (0.5 * a * x ** 2).sum().backward()
            opt.step()
            if abs(float(x.detach())) > 1e6:
                return math.inf
        return abs(float(x.detach()))

    assert final(0.98 * thr) < 1e-3 and final(1.02 * thr) > 1e3


@pytest.mark.parametrize("name, b1", [("adam", 0.9), ("adamw", 0.5), ("nadamw", 0.9)])
def test_eos_threshold_of_adam_types_on_a_frozen_preconditioner(name, b1):
    """38/lr for Adam with b1 = 0.9 (Cohen et al. 2022): the linearised update with P fixed
    (x <- x - lr m / P, m the EMA of the gradients; NAdamW's Nesterov form b1 m + (1 - b1) g) on a
    quadratic with preconditioned curvature a turns unstable at the threshold."""
    lr = 0.01
    thr, rule = cv.eos_threshold({"name": name, "betas": [b1, 0.999]}, lr)
    assert rule == ("nadam" if name == "nadamw" else "adam")
    if (name, b1) == ("adam", 0.9):
        assert thr == pytest.approx(38 / lr)

    def final(a):
        x, m = 1.0, 0.0
        for _ in range(5000):
            g = a * x
            m = b1 * m + (1 - b1) * g
            x -= lr * ((b1 * m + (1 - b1) * g) if name == "nadamw" else m)
            if abs(x) > 1e6:
                return math.inf
        return abs(x)

    assert final(0.98 * thr) < 1e-3 and final(1.02 * thr) > 1e3


def test_eos_threshold_of_adaptive_methods():
    assert cv.eos_threshold({"name": "sps_max"}, 0.5) == (4.0, "gd_max_step")
    thr, rule = cv.eos_threshold({"name": "nsgdm"}, 0.5)
    assert math.isnan(thr) and rule == "none"
    row = cv.edge_of_stability(10.0, 0.5, {"name": "nsgdm"})
    assert row["above_eos"] is None and row["two_over_lr"] == 4.0
    row = cv.edge_of_stability(10.0, 0.1, {"name": "adam"}, precond_lambda_max=400.0)
    assert row["eos_sharpness"] == 400.0 and row["above_eos"] and row["eos_threshold"] == pytest.approx(380.0)


@pytest.mark.parametrize("opt", [{"name": "sgd"}, {"name": "sgd", "momentum": 0.9}, {"name": "adam"},
                                 {"name": "nadamw"}, {"name": "sps_max"}, {"name": "nsgdm"}])
def test_eos_at_lr_zero_is_not_applicable(opt):
    """At lr = 0 the optimizer does not move and every threshold is infinite: no comparison (it cannot fail)."""
    thr, rule = cv.eos_threshold(opt, 0.0)
    assert math.isnan(thr) and rule == "lr_zero"
    row = cv.edge_of_stability(1e6, 0.0, opt, precond_lambda_max=1e6)
    assert row["above_eos"] is None and math.isnan(row["eos_threshold"]) and row["eos_rule"] == "lr_zero"
    assert row["two_over_lr"] == math.inf  # the reference line 2/lr, left as it is (the chart drops it)


def test_eos_summary_leaves_out_checkpoints_at_lr_zero(tmp_path):
    """Two runs of a decayed schedule with their last checkpoint at lr = 0, stored as older results did
    (above_eos False against an infinite threshold) and as now (None): counted as left out, not as below."""
    from landscope import store
    from landscope.report import curvature as rc

    results = synthetic_results(tmp_path)
    for seed, above_at_zero in ((0, False), (1, None)):
        run = f"decay_seed-{seed}"
        rows = {c: [None, None] for c in store.SCHEMAS["curvature"]}
        rows.update(experiment=["z", "z"], run=[run, run], step=[0, 10], lambda_max=[30.0, 30.0], lr=[1.0, 0.0],
                    two_over_lr=[2.0, math.inf], eos_threshold=[2.0, math.nan if above_at_zero is None else math.inf],
                    eos_rule=["gd", "lr_zero" if above_at_zero is None else "gd"], eos_sharpness=[30.0, 30.0],
                    above_eos=[True, above_at_zero])
        store.write_table(store.part_path(results, "curvature", "z", run), "curvature", rows)
    con = store.connect(results)
    assert rc.eos_summary(con, "z") == (2, 2, 2)
    assert rc.eos_share(2, 2, 2) == ("2 of 2 checkpoints (100%) above the stability threshold; 2 checkpoints at "
                                     "lr = 0, where the optimizer does not move, left out (not applicable: the "
                                     "threshold is infinite there)")
    assert rc.eos_share(0, 0, 2).startswith("not applicable: no checkpoint where the optimizer moves is compared; "
                                            "2 checkpoints at lr = 0")
    assert rc.eos_share(0, 0, 0) == "not applicable: no checkpoint where the optimizer moves is compared"
    assert "; 1 checkpoint at lr = 0," in rc.eos_share(0, 3, 1)
    caption = rc.curvature_charts(con, "z")[0].caption
    assert caption.startswith("2 of 2 checkpoints (100%) above the stability threshold; 2 checkpoints at lr = 0")


def test_operator_rejects_wrong_length_and_non_finite_loss():
    model, x, y = tiny_problem()
    op = hvp.hessian_operator(model, ce, x, y)
    with pytest.raises(ValueError, match="expected"):
        op(torch.ones(op.n + 1, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        hvp.hessian_operator(model, ce, x * float("nan"), y)


# ----------------------------------------------------------------------------------- a trained run
def test_curvature_run_writes_tables_matching_exact_hessian(spec_factory, tmp_path):
    """Logistic regression on digits: convex, so no negative eigenvalue; λ_max, trace and 2/lr exact."""
    from conftest import run_pipeline

    from landscope import store
    from landscope.problem.build import build_problem
    from landscope.trajectory.rundir import checkpoint_path, load_checkpoint

    spec = spec_factory(steps=8, snapshot_every=4)
    results, ckpt, _ = run_pipeline(spec, tmp_path)
    settings = {"eval_samples": 100, "lanczos_iters": 60, "slq_probes": 2, "hutchinson_probes": 32,
                "blocks": ["*.bias", "*"]}
    out = cv.curvature_run(spec, ckpt, ckpt / "minimizer.pt", results, settings)
    assert out["rows"] == 3
    con = store.connect(results)
    rows = con.sql("SELECT * FROM curvature ORDER BY step").pl().to_dicts()
    assert [r["step"] for r in rows] == [0, 4, 8] and sum(r["is_minimizer"] for r in rows) == 1
    problem = build_problem(spec)
    idx = cv.eval_subset(len(problem.data), 100, 0)
    for r in rows[-1:]:  # exact Hessian at the last checkpoint (x_K); the others share the code path
        problem.model.load_state_dict(load_checkpoint(checkpoint_path(ckpt, r["step"]))["model"])
        h = exact_hessian_of(problem, idx)
        evals = torch.linalg.eigvalsh(h)
        assert rel(r["lambda_max"], float(evals[-1])) < 1e-4
        assert rel(r["lambda_2"], float(evals[-2])) < 1e-4
        assert abs(r["lambda_min"]) < 1e-5 * float(evals[-1])  # PSD with a null space
        assert abs(r["trace"] - float(torch.trace(h))) < 4 * r["trace_se"]
        assert abs(r["trace_hutchpp"] - float(torch.trace(h))) < 4 * r["trace_hutchpp_se"] + 1e-6
        assert r["two_over_lr"] == pytest.approx(4.0) and r["above_eos"] == (r["lambda_max"] > 4.0)
        assert r["eos_threshold"] == pytest.approx(4.0) and r["eos_rule"] == "gd"
        assert r["eos_sharpness"] == r["lambda_max"] and math.isnan(r["precond_lambda_max"])
    for r in rows:  # convex: only the smoothing floor Phi(-3) = 0.00135 of negative mass
        assert r["n_hvp"] == 2 * 60 + 2 * 32 and r["eval_samples"] == 100 and 0 <= r["neg_fraction"] < 1.4e-3
        assert r["density_sigma"] == pytest.approx((r["lambda_max"] - r["lambda_min"]) / 60, rel=1e-6)
    n_nodes = con.sql("SELECT count(*), sum(weight) FROM spectrum WHERE step = 8").fetchall()[0]
    assert n_nodes[0] == 2 * 60 and n_nodes[1] == pytest.approx(2.0)  # two probes, weights sum to 1
    # the near-zero share is the mean over probes of the SLQ weight within density_sigma of zero
    near = con.sql("SELECT s.step, sum(weight) / 2 FROM spectrum s JOIN curvature c USING (experiment, run, step) "
                   "WHERE abs(ritz) < density_sigma GROUP BY ALL ORDER BY s.step").fetchall()
    assert [r["near_zero_fraction"] for r in rows] == pytest.approx([w for _, w in near], abs=1e-12)
    assert all(0 < r["near_zero_fraction"] < 1 and r["near_zero_fraction_se"] >= 0 for r in rows)
    # per block (the configured patterns): every bias, then the rest, at every measured step
    blocks = con.sql("SELECT * FROM block_curvature ORDER BY step, block").pl().to_dicts()
    assert [(b["step"], b["block"], b["n_params"]) for b in blocks] == [
        (st, name, n) for st in (0, 4, 8) for name, n in (("*", 640), ("*.bias", 10))]
    assert [b["eos_threshold"] for b in blocks] == pytest.approx([4.0] * 6)
    assert [b["is_minimizer"] for b in blocks] == [r["is_minimizer"] for r in rows for _ in range(2)]
    weight, bias = blocks[-2:]
    for b, sl in ((weight, slice(0, 640)), (bias, slice(640, 650))):
        ev = torch.linalg.eigvalsh(h[sl, sl])
        assert rel(b["lambda_max"], float(ev[-1])) < 1e-4
        assert abs(b["trace"] - float(torch.trace(h[sl, sl]))) < 4 * b["trace_se"] + 1e-6
    assert bias["n_hvp"] <= 10 + 32 and weight["n_hvp"] == 60 + 32


def test_curvature_run_with_adam_measures_the_preconditioned_sharpness(spec_factory, tmp_path):
    """Adam on logistic regression: at the last checkpoint precond_lambda_max is the exact largest
    eigenvalue of P^{-1} H with P from the checkpoint's optimizer state; the threshold is 38/lr."""
    from conftest import run_pipeline

    from landscope import store
    from landscope.problem.build import build_problem
    from landscope.trajectory.rundir import checkpoint_path, load_checkpoint

    spec = spec_factory(steps=8, snapshot_every=4, optimizer={"name": "adam", "lr": 0.01})
    results, ckpt, _ = run_pipeline(spec, tmp_path)
    settings = {"eval_samples": 100, "lanczos_iters": 40, "slq_probes": 1, "hutchinson_probes": 4,
                "flatness_directions": 0, "llc_chains": 0}
    cv.curvature_run(spec, ckpt, ckpt / "minimizer.pt", results, settings)
    rows = store.connect(results).sql("SELECT * FROM curvature ORDER BY step").pl().to_dicts()
    assert math.isnan(rows[0]["precond_lambda_max"]) and rows[0]["above_eos"] is None  # step 0: no state
    last = rows[-1]
    problem = build_problem(spec)
    state = load_checkpoint(checkpoint_path(ckpt, 8))
    problem.model.load_state_dict(state["model"])
    h = exact_hessian_of(problem, cv.eval_subset(len(problem.data), 100, 0))
    p = cv.adam_preconditioner(state["optimizer"], list(problem.model.parameters()), spec.optimizer)
    d = p.rsqrt()
    want = float(torch.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1])
    assert rel(last["precond_lambda_max"], want) < 1e-3
    assert last["eos_rule"] == "adam" and last["eos_threshold"] == pytest.approx(38 / last["lr"])
    assert last["eos_sharpness"] == last["precond_lambda_max"]
    assert last["above_eos"] == (want > 38 / last["lr"])
    assert last["n_hvp"] == 40 + 4 + 4 + 40  # SLQ, Hutchinson, Hutch++, preconditioned Lanczos


def exact_hessian_of(problem, idx):
    model, x, y = problem.model, problem.data.x[idx], problem.data.y[idx]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        out = torch.func.functional_call(model, {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}, (x,))
        return problem.loss_fn(model, out, y).double().mean()

    return torch.autograd.functional.hessian(f, flatten(trainable_parameters(model)).float(), vectorize=True).double()


@pytest.mark.parametrize("raw, needle", [
    ({"top_k": 5}, "top_k must be 1..3"),
    ({"hutchinson_probes": 1}, "hutchinson_probes must be >= 2"),
    ({"evry": 2}, "unknown setting"),
    ({"every": 0}, "every must be >= 1"),
    ({"blocks": "layers"}, "blocks must be modules, none or a non-empty list"),
    ({"blocks": []}, "blocks must be modules, none or a non-empty list"),
])
def test_bad_curvature_settings_are_named(raw, needle):
    with pytest.raises(ValueError, match=needle):
        settings.curvature_settings(raw)


def test_section_defaults_come_from_the_schema_as_fresh_copies():
    """One home: an empty section gets exactly what the config fills in for a missing one."""
    exp = {"model": {"name": "mlp"}, "dataset": {"name": "digits"}}
    full = validate({"experiments": {"t": exp}})["experiments"]["t"]
    assert settings.curvature_settings({}) == full["curvature"] == settings.CURVATURE_DEFAULTS
    assert settings.surfaces_settings({}) == full["surfaces"] == settings.SURFACES_DEFAULTS
    assert settings.CURVATURE_DEFAULTS["lanczos_iters"] == 16 and settings.CURVATURE_DEFAULTS["llc_gamma"] == 100.0
    fresh = settings.section_defaults("surfaces")
    fresh["planes"].append("other")
    assert settings.SURFACES_DEFAULTS["planes"] == ["random", "pca"] == settings.section_defaults("surfaces")["planes"]


def test_measured_steps_keep_stride_last_and_minimizer():
    assert cv.measured_steps([0, 10, 20, 30, 40], 2, 30) == [0, 20, 30, 40]
    assert cv.measured_steps([0, 10, 20], 5, None) == [0, 20]


# ----------------------------------------------------------------------------------- report charts
def synthetic_results(root):
    """Two sweep points x two seeds x steps 0, 10: hand-chosen values for the report queries."""
    from landscope import store

    results = root / "results"
    for point, lr in (("lr-0.1", 0.1), ("lr-1", 1.0)):
        for seed in (0, 1):
            run = f"{point}_seed-{seed}"
            runs = {c: [None] for c in store.SCHEMAS["runs"]}
            runs.update(experiment=["e"], run=[run], point=[point], seed=[seed], lr=[lr])
            store.write_table(store.part_path(results, "runs", "e", run), "runs", runs)
            lam = [5.0 + seed, 30.0 + seed]  # 2/lr = 20 or 2: above at step 10 (lr 0.1), always (lr 1)
            rows = {c: [None, None] for c in store.SCHEMAS["curvature"]}
            rows.update(experiment=["e", "e"], run=[run, run], step=[0, 10], lambda_max=lam,
                        lambda_min=[-1.0, -0.5], neg_fraction=[0.2 + 0.1 * seed, 0.1],
                        neg_fraction_se=[0.05, 0.01], trace=[100.0, 50.0], trace_se=[4.0, 2.0],
                        two_over_lr=[2 / lr] * 2, above_eos=[x > 2 / lr for x in lam],
                        trace_hutchpp=[98.0, 51.0], trace_hutchpp_se=[1.0, 0.5], density_sigma=[0.5, 0.5],
                        eos_threshold=[2 / lr] * 2, eos_rule=["gd"] * 2, eos_sharpness=lam, lr=[lr] * 2,
                        near_zero_fraction=[0.6, 0.8 + 0.1 * seed], near_zero_fraction_se=[0.02, 0.01])
            store.write_table(store.part_path(results, "curvature", "e", run), "curvature", rows)
            blocks = {c: [None] * 4 for c in store.SCHEMAS["block_curvature"]}  # net.0: 1 + seed, 3 + seed
            blocks.update(experiment=["e"] * 4, run=[run] * 4, step=[0, 0, 10, 10], block=["net.0", "net.2"] * 2,
                          lambda_max=[1.0 + seed, 2.0, 3.0 + seed, 4.0], eos_threshold=[2 / lr] * 4,
                          eos_rule=["gd"] * 4)
            store.write_table(store.part_path(results, "block_curvature", "e", run), "block_curvature", blocks)
            # one probe, two nodes per checkpoint: weight 0.25 at -1 and 0.75 at lambda_max
            spec = {"experiment": ["e"] * 4, "run": [run] * 4, "step": [0, 0, 10, 10], "probe": [0] * 4,
                    "node": [0, 1, 0, 1], "ritz": [-1.0, lam[0], -1.0, lam[1]], "weight": [0.25, 0.75] * 2}
            store.write_table(store.part_path(results, "spectrum", "e", run), "spectrum", spec)
    train = {"experiment": ["e"] * 300, "run": ["lr-1_seed-0"] * 300, "step": list(range(300)),
             "epoch": [0] * 300, "lr": [1.0] * 300, "batch_loss": [2.0] * 200 + [0.5] * 100}
    store.write_table(store.part_path(results, "train", "e", "lr-1_seed-0"), "train", train)
    ev = {c: [None, None] for c in store.SCHEMAS["plateaus"]}
    ev.update(experiment=["e", "e"], run=["lr-1_seed-0"] * 2, start_step=[0, 200], end_step=[199, 299],
              n_windows=[4, 2], window_steps=[50, 50], plateau_loss=[2.0, 0.5], escaped=[True, False],
              escape_step=[200, None], loss_after=[0.5, None], relative_drop=[0.75, None], at_end=[False, True])
    store.write_table(store.part_path(results, "plateaus", "e"), "plateaus", ev)
    return results


def test_curvature_charts_on_synthetic_results(tmp_path):
    from landscope import store
    from landscope.report import curvature as rc

    con = store.connect(synthetic_results(tmp_path))
    assert rc.eos_summary(con, "e") == (6, 8, 0)  # lr 1: 4 of 4; lr 0.1: only step 10 (2 of 4)
    neg = rc.curvature_stat(con, "e", "neg_fraction", "neg_fraction_se").to_dicts()
    first = next(r for r in neg if r["point"] == "lr-0.1" and r["step"] == 0)
    assert first["n_runs"] == 2 and first["mean"] == pytest.approx(0.25)
    assert first["lo"] == pytest.approx(0.15) and first["hi"] == pytest.approx(0.35)  # range ± SE
    lines = rc.threshold_lines(con, "e").to_dicts()
    assert sorted({(r["point"], r["two_over_lr"]) for r in lines}) == [("lr-0.1", 20.0), ("lr-1", 2.0)]
    blocks = {(r["point"], r["block"], r["step"]): r for r in rc.block_stat(con, "e").to_dicts()}
    assert len(blocks) == 8 and blocks[("lr-1", "net.0", 10)]["n_runs"] == 2
    assert (blocks[("lr-1", "net.0", 10)]["mean"], blocks[("lr-1", "net.0", 10)]["lo"],
            blocks[("lr-1", "net.0", 10)]["hi"]) == (3.5, 3.0, 4.0)
    assert blocks[("lr-0.1", "net.2", 0)]["threshold"] == pytest.approx(20.0)
    near = {(r["point"], r["step"]): r for r in rc.curvature_stat(con, "e", "near_zero_fraction",
                                                                     "near_zero_fraction_se").to_dicts()}
    assert near[("lr-1", 10)]["mean"] == pytest.approx(0.85) and near[("lr-1", 10)]["hi"] == pytest.approx(0.91)
    charts = rc.curvature_charts(con, "e")
    assert [s.heading for s in charts] == ["Edge of stability", "Sharpness per block", "Smallest eigenvalue",
                                           "Negative eigenvalues", "Near-zero eigenvalues", "Spectral density",
                                           "Trace", "Trace (Hutch++)", "Plateaus",
                                           "Step length", "Sublevel radius", "Local learning coefficient"]
    assert [s.chart for s in charts[9:]] == [None] * 3  # no stationarity or flatness rows here
    assert all(s.chart is not None for s in charts[:9])
    plateaus = charts[8].caption
    assert "2 plateau(s)" in plateaus and "1 escaped" in plateaus and "1 lasting" in plateaus
    assert len(charts[8].chart.to_dict()["layer"]) == 3  # loss curve, plateau bars, escape markers
    assert len(charts[5].chart.to_dict()["concat"]) == 2  # one density panel per sweep point
    per_block = charts[1].chart.to_dict()  # band, mean line, thresholds; one series per point and block
    assert per_block["layer"][-1]["mark"]["strokeDash"] == [6, 4]
    assert per_block["layer"][0]["encoding"]["color"]["scale"]["domain"] == [
        "lr-0.1 · net.0", "lr-0.1 · net.2", "lr-1 · net.0", "lr-1 · net.2"]
    assert "6 of 8 checkpoints (75%) above the stability threshold. " in charts[0].caption
    sharp = charts[0].chart.to_dict()
    assert len(sharp["layer"]) == 3 and sharp["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
    assert rc.curvature_charts(con, "other")[0].chart is None  # no rows: no chart, no error


def test_density_curves_of_synthetic_spectrum(tmp_path):
    """Two nodes (weight 0.25 at -1, 0.75 at lambda_max) smoothed with sigma 0.5: the curve integrates
    to 1 and holds a quarter of its mass near -1; the first seed of each point, first and last step."""
    from landscope import store
    from landscope.report import curvature as rc

    con = store.connect(synthetic_results(tmp_path))
    df = rc.density_curves(con, "e", points=2000)
    assert sorted(set(zip(df["point"], df["step"], df["checkpoint"]))) == [
        ("lr-0.1", 0, "first"), ("lr-0.1", 10, "last"), ("lr-1", 0, "first"), ("lr-1", 10, "last")]
    one = df.filter((pl.col("point") == "lr-0.1") & (pl.col("step") == 10))  # seed 0: lambda_max 30
    x, rho = torch.tensor(one["eigenvalue"].to_list()), torch.tensor(one["density"].to_list())
    assert float(torch.trapezoid(rho, x)) == pytest.approx(1.0, abs=2e-3)  # the floor adds < 1e-4
    near = (x + 1).abs() < 2.5
    assert float(torch.trapezoid(rho[near], x[near])) == pytest.approx(0.25, abs=2e-3)
    assert float(x[rho.argmax()]) == pytest.approx(30.0, abs=0.1)
    assert set(one["two_over_lr"].to_list()) == {20.0}
