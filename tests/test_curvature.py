"""Curvature estimators against known spectra: quadratics Q diag(d) Q^T and exact small Hessians."""
import math

import pytest
import torch
from torch import nn

from landscope import curvature as cv

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
    top, bottom, n_hvp = cv.top_eigenvalues(matvec(a), len(SPECTRUM), k=3, iters=40, seed=1)
    for got, want in zip(top, [12.0, 9.0, 7.0]):
        assert rel(got, want) < 1e-6
    assert rel(bottom, -4.0) < 1e-6
    assert n_hvp == 40


def test_lanczos_stops_when_krylov_space_is_invariant():
    """Four distinct eigenvalues: the Krylov space has dimension 4, so 4 products give them exactly."""
    d = torch.tensor([5.0] * 10 + [2.0] * 10 + [-1.0] * 10 + [0.5] * 10, dtype=F64)
    run = cv.lanczos(matvec(quadratic(d)), torch.ones(40, dtype=F64), iters=30)
    assert run.n_hvp == 4
    assert torch.allclose(run.ritz, torch.tensor([-1.0, 0.5, 2.0, 5.0], dtype=F64), atol=1e-10)
    assert math.isclose(float(run.weights.sum()), 1.0, abs_tol=1e-12)
    assert torch.allclose(run.ritz_after(4), run.ritz) and len(run.ritz_after(2)) == 2


def test_slq_negative_fraction_within_3_se_of_truth():
    """30% negative eigenvalues, separated from the positive ones so the quadrature resolves 0."""
    d = torch.cat([torch.linspace(-3.0, -1.0, 60, dtype=F64), torch.linspace(1.0, 4.0, 140, dtype=F64)])
    dens = cv.slq(matvec(quadratic(d, seed=2)), 200, probes=30, iters=20, seed=3)
    mean, se = dens.negative_fraction()
    assert 0 < se < 0.05
    assert abs(mean - 0.3) < 3 * se
    assert dens.n_hvp == 30 * 20
    for p in dens.probes:  # each probe's weights are a probability distribution
        assert math.isclose(float(p.weights.sum()), 1.0, abs_tol=1e-10)


def test_slq_pooled_extremes_bound_the_spectrum():
    a = quadratic(SPECTRUM, seed=4)
    dens = cv.slq(matvec(a), len(SPECTRUM), probes=3, iters=40, seed=5)
    top = dens.top(3)
    assert all(t <= w + 1e-9 for t, w in zip(top, [12.0, 9.0, 7.0]))  # Ritz values interlace
    assert rel(top[0], 12.0) < 1e-6 and rel(dens.bottom, -4.0) < 1e-6


def test_hutchinson_within_4_se_and_se_matches_theory():
    a = quadratic(SPECTRUM, seed=6)
    m = 400
    est, se, n_hvp = cv.hutchinson(matvec(a), len(SPECTRUM), probes=m, seed=7)
    true = float(SPECTRUM.sum())
    assert abs(est - true) < 4 * se
    off = a - torch.diag(torch.diag(a))
    true_se = math.sqrt(2 * float((off ** 2).sum()) / m)  # Var(z^T A z) = 2 sum_{i!=j} A_ij^2
    assert 0.8 < se / true_se < 1.25
    assert n_hvp == m


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    d = torch.arange(1.0, 31.0, dtype=F64)
    est, se, _ = cv.hutchinson(matvec(torch.diag(d)), 30, probes=5, seed=0)
    assert est == pytest.approx(465.0, abs=1e-9) and se == pytest.approx(0.0, abs=1e-9)


def test_power_iteration_converges_to_lambda_max():
    d = torch.cat([torch.tensor([10.0], dtype=F64), torch.linspace(0.0, 5.0, 49, dtype=F64)])
    history = []
    lam, n_hvp = cv.power_iteration(matvec(quadratic(d)), 50, tol=1e-10, seed=0, history=history)
    assert rel(lam, 10.0) < 1e-8
    assert 5 < n_hvp < 200 and len(history) == n_hvp and history[-1] == lam
    errs = [10.0 - h for h in history]  # Rayleigh quotients rise monotonically to lambda_max (PSD)
    assert all(e1 >= e2 >= 0 for e1, e2 in zip(errs, errs[1:]))


@pytest.mark.parametrize("call, needle", [
    (lambda: cv.top_eigenvalues(lambda v: v, 5, k=0), "k must be >= 1"),
    (lambda: cv.slq(lambda v: v, 5, probes=0), "probes must be >= 1"),
    (lambda: cv.hutchinson(lambda v: v, 5, probes=1), "probes must be >= 2"),
    (lambda: cv.lanczos(lambda v: v, torch.ones(5, dtype=F64), iters=0), "iters must be >= 1"),
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
    flat = cv.flat_parameters(model)
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
    op = cv.hessian_operator(model, ce, x, y)
    assert model.training  # the caller's mode is restored
    v = torch.randn(op.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(op(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.n_hvp == 1


def test_estimators_on_tiny_mlp_match_exact_spectrum_and_trace():
    model, x, y = tiny_problem()
    h = exact_hessian(model, x, y)
    evals = torch.linalg.eigvalsh(h)
    op = cv.hessian_operator(model, ce, x, y)
    top, bottom, _ = cv.top_eigenvalues(op, op.n, k=3, iters=op.n, seed=0)
    for got, want in zip(top, evals.flip(0)[:3].tolist()):
        assert rel(got, want) < 1e-6
    assert rel(bottom, float(evals[0])) < 1e-6
    est, se, _ = cv.hutchinson(op, op.n, probes=64, seed=2)
    assert abs(est - float(torch.trace(h))) < 4 * se
    # full-length Lanczos resolves every eigenvalue: the negative weight is exactly v^T P_- v / |v|^2
    got, _ = cv.slq(op, op.n, probes=1, iters=op.n, seed=3).negative_fraction()
    v = cv.rademacher(op.n, torch.Generator().manual_seed(3))
    w, q = torch.linalg.eigh(h)
    want = float(((q[:, w < -1e-6 * w.abs().max()].T @ v) ** 2).sum() / (v @ v))  # null space: zero
    assert 0.0 < want and got == pytest.approx(want, abs=1e-6)


def test_operator_rejects_wrong_length_and_non_finite_loss():
    model, x, y = tiny_problem()
    op = cv.hessian_operator(model, ce, x, y)
    with pytest.raises(ValueError, match="expected"):
        op(torch.ones(op.n + 1, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        cv.hessian_operator(model, ce, x * float("nan"), y)


# ----------------------------------------------------------------------------------- a trained run
def test_curvature_run_writes_tables_matching_exact_hessian(spec_factory, tmp_path):
    """Logistic regression on digits: convex, so no negative eigenvalue; λ_max, trace and 2/lr exact."""
    from conftest import run_pipeline
    from landscope import store
    from landscope.trajectory import build_problem, checkpoint_path, load_checkpoint

    spec = spec_factory(steps=8, snapshot_every=4)
    results, ckpt, _ = run_pipeline(spec, tmp_path)
    settings = {"eval_samples": 100, "lanczos_iters": 60, "slq_probes": 2, "hutchinson_probes": 32}
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
        assert r["neg_fraction"] == 0.0
        assert abs(r["trace"] - float(torch.trace(h))) < 4 * r["trace_se"]
        assert r["two_over_lr"] == pytest.approx(4.0) and r["above_eos"] == (r["lambda_max"] > 4.0)
    for r in rows:
        assert r["n_hvp"] == 2 * 60 + 32 and r["eval_samples"] == 100 and r["neg_fraction"] == 0.0
    n_nodes = con.sql("SELECT count(*), sum(weight) FROM spectrum WHERE step = 8").fetchall()[0]
    assert n_nodes[0] == 2 * 60 and n_nodes[1] == pytest.approx(2.0)  # two probes, weights sum to 1


def exact_hessian_of(problem, idx):
    model, x, y = problem.model, problem.data.x[idx], problem.data.y[idx]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        out = torch.func.functional_call(model, {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}, (x,))
        return problem.loss_fn(model, out, y).double().mean()

    return torch.autograd.functional.hessian(f, cv.flat_parameters(model).float(), vectorize=True).double()


@pytest.mark.parametrize("raw, needle", [
    ({"top_k": 5}, "top_k must be 1..3"),
    ({"hutchinson_probes": 1}, "hutchinson_probes must be >= 2"),
    ({"evry": 2}, "unknown setting"),
    ({"every": 0}, "every must be >= 1"),
])
def test_bad_curvature_settings_are_named(raw, needle):
    with pytest.raises(ValueError, match=needle):
        cv.settings_of(raw)


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
                        two_over_lr=[2 / lr] * 2, above_eos=[x > 2 / lr for x in lam])
            store.write_table(store.part_path(results, "curvature", "e", run), "curvature", rows)
    return results


def test_curvature_charts_on_synthetic_results(tmp_path):
    from landscope import report_curvature as rc
    from landscope import store

    con = store.connect(synthetic_results(tmp_path))
    assert rc.eos_summary(con, "e") == (6, 8)  # lr 1: 4 of 4; lr 0.1: only step 10 (2 of 4)
    neg = rc.curvature_stat(con, "e", "neg_fraction", "neg_fraction_se").to_dicts()
    first = next(r for r in neg if r["point"] == "lr-0.1" and r["step"] == 0)
    assert first["n_runs"] == 2 and first["mean"] == pytest.approx(0.25)
    assert first["lo"] == pytest.approx(0.15) and first["hi"] == pytest.approx(0.35)  # range ± SE
    lines = rc.threshold_lines(con, "e").to_dicts()
    assert sorted({(r["point"], r["two_over_lr"]) for r in lines}) == [("lr-0.1", 20.0), ("lr-1", 2.0)]
    charts = rc.curvature_charts(con, "e")
    assert [t for t, _, _ in charts] == ["Edge of stability", "Smallest eigenvalue", "Negative eigenvalues", "Trace",
                                         "Step length", "Sublevel radius", "Local learning coefficient"]
    assert [c for _, _, c in charts[4:]] == [None] * 3  # no stationarity or flatness rows here
    assert "6 of 8 checkpoints (75%)" in charts[0][1]
    sharp = charts[0][2].to_dict()
    assert len(sharp["layer"]) == 3 and sharp["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
    assert rc.curvature_charts(con, "other")[0][2] is None  # no rows: no chart, no error
