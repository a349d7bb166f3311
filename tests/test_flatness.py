"""Stationarity, eps-sublevel radius and SGLD local learning coefficient against closed forms."""
import json
import math

import pytest
import torch
from torch import nn

from landscope import settings as section_settings
from landscope.measures import flatness as fl
from landscope.measures import plateaus
from landscope.problem.evaluate import flatten, restoring_parameters, trainable_parameters

F64 = torch.float64


# ----------------------------------------------------------------------------------- stationarity
def test_stationarity_of_hand_made_checkpoints():
    steps = [0, 10, 20, 30, 40]
    pts = [torch.tensor(p, dtype=F64) for p in
           ([0, 0, 0], [3, 4, 0], [3, 4, 12], [6, 8, 12], [6, 8, 14])]
    rows, run = fl.stationarity(steps, pts, x_k=pts[-1])
    assert [(r["step"], r["next_step"]) for r in rows] == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert [r["distance"] for r in rows] == pytest.approx([5.0, 12.0, 5.0, 2.0], abs=1e-12)
    assert [r["mean_step_length"] for r in rows] == pytest.approx([0.5, 1.2, 0.5, 0.2], abs=1e-12)
    # last quarter: steps >= 30, i.e. (6,8,12) and (6,8,14) around (6,8,13): RMS distance 1
    assert run["tail_checkpoints"] == 2 and run["tail_spread"] == pytest.approx(1.0, abs=1e-12)
    assert run["dist_xk_x0"] == pytest.approx(math.sqrt(296), abs=1e-12)
    assert run["path_length"] == pytest.approx(24.0, abs=1e-12)


def test_stationarity_of_one_checkpoint_and_bad_input():
    rows, run = fl.stationarity([5], [torch.ones(3)], torch.zeros(3))
    assert rows == [] and run["tail_spread"] == 0.0 and run["dist_xk_x0"] == pytest.approx(math.sqrt(3))
    with pytest.raises(ValueError, match="strictly increasing"):
        fl.stationarity([0, 0], [torch.ones(2)] * 2, torch.ones(2))
    with pytest.raises(ValueError, match="need equal"):
        fl.stationarity([0, 1], [torch.ones(2)], torch.ones(2))


# ----------------------------------------------------------------------------------- radius
@pytest.mark.parametrize("a, eps", [(1.0, 0.1), (40.0, 0.1), (0.3, 0.02)])
def test_radius_of_a_parabola_is_sqrt_2eps_over_a(a, eps):
    r, capped = fl.sublevel_radius(lambda t: 0.5 * a * t * t, eps, t_max=2.0, iters=40)
    assert not capped
    assert r == pytest.approx(math.sqrt(2 * eps / a), abs=1e-10)
    assert 0.5 * a * r * r <= eps  # the lower end of the bracket: inside the sublevel set


def test_radius_is_capped_and_stops_at_the_first_crossing():
    assert fl.sublevel_radius(lambda t: 0.5 * t * t, 10.0, t_max=1.0) == (1.0, True)
    bump = lambda t: 1.0 if 0.3 < t < 0.6 else 0.0  # noqa: E731 (below again after 0.6)
    r, capped = fl.sublevel_radius(bump, 0.5, t_max=1.0, iters=40)
    assert not capped and r == pytest.approx(0.3, abs=1e-10)
    r, _ = fl.sublevel_radius(lambda t: float("nan") if t > 0.2 else 0.0, 0.5, 1.0, iters=40)
    assert r == pytest.approx(0.2, abs=1e-10)  # non-finite counts as outside
    with pytest.raises(ValueError, match="eps and t_max must be > 0"):
        fl.sublevel_radius(lambda t: t, 0.0, 1.0)


def test_filter_normalized_direction_norms():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight[1] = 0.0
    d = fl.filter_normalized_direction([lin.weight, lin.bias], torch.Generator().manual_seed(0))
    dw, db = d[:12].reshape(3, 4), d[12:]
    w = lin.weight.detach().double()
    assert torch.allclose(dw.norm(dim=1), w.norm(dim=1), rtol=1e-12, atol=0)
    assert float(dw[1].abs().max()) == 0.0  # a zero filter gets a zero direction
    assert float(db.norm()) == pytest.approx(float(lin.bias.detach().double().norm()), rel=1e-12)


def test_radius_on_linear_regression_matches_closed_form():
    """L(w) = ½ mean (Xw - y)^2: along d the excess is t g·d + ½ t² dᵀAd, A = XᵀX/m, g = Xᵀ(Xw - y)/m."""
    torch.manual_seed(0)
    m, k = 50, 6
    x = torch.randn(m, k, dtype=F64)
    y = torch.randn(m, dtype=F64)
    model = nn.Linear(k, 1, bias=False).double()

    def sq(model, out, y):
        return 0.5 * (out.squeeze(-1) - y) ** 2

    w0 = model.weight.detach().reshape(-1).clone()
    gen = torch.Generator().manual_seed(1)
    dirs = [fl.filter_normalized_direction(trainable_parameters(model), gen) for _ in range(5)]
    eps = 0.05
    with restoring_parameters(model):
        f0, radii, capped = fl.flatness_radii(fl.model_loss(model, sq, x, y), w0, dirs, eps, 5.0, iters=40)
    assert torch.equal(model.weight.detach().reshape(-1), w0) and model.training  # restored
    a = x.T @ x / m
    g = x.T @ (x @ w0 - y) / m
    assert f0 == pytest.approx(float(0.5 * ((x @ w0 - y) ** 2).mean()), rel=1e-12)
    for d, r, c in zip(dirs, radii, capped):
        gd, q = float(g @ d), float(d @ a @ d)
        want = (-gd + math.sqrt(gd * gd + 2 * eps * q)) / q
        assert not c and r == pytest.approx(want, abs=1e-9)


def test_log_volume_proxy():
    v, n = fl.log_volume_proxy([4.0, 1.0, -2.0, None, float("nan")])
    assert n == 2 and v == pytest.approx(-math.log(2.0), abs=1e-15)
    v, n = fl.log_volume_proxy([-1.0])
    assert n == 0 and math.isnan(v)


def test_quartiles():
    assert fl.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert all(math.isnan(v) for v in fl.quartiles([]))


# ----------------------------------------------------------------------------------- LLC
def _quadratic(a, w_star, offset=0.0):
    def loss_grad(w):
        r = w - w_star
        return offset + 0.5 * float(r @ (a * r)), a * r
    return loss_grad


def _gaussian_llc(a, n, gamma, eps):
    """Exact stationary E[lambda-hat] of SGLD on L* + 1/2 sum a_i r_i^2: per coordinate an AR(1)
    process with precision p = n beta a + gamma and variance 1 / (p (1 - eps p / 4))."""
    nbeta = n / math.log(n)
    p = nbeta * a + gamma
    return float(nbeta / 2 * (a / (p * (1 - eps * p / 4))).sum())


def _quartic_llc(c, n, gamma):
    """Exact sum_i n beta c_i E[t^4] under exp(-n beta c_i t^4 - gamma t^2 / 2), by quadrature on a
    fine grid (the posterior of the localised quartic; gamma = 0 gives 1/4 per coordinate)."""
    nbeta = n / math.log(n)
    total = 0.0
    for ci in c.tolist():
        t = torch.linspace(-1, 1, 200001, dtype=F64) * 12 * (nbeta * ci) ** -0.25
        dens = torch.exp(-nbeta * ci * t ** 4 - gamma * t ** 2 / 2)
        total += float(torch.trapezoid(nbeta * ci * t ** 4 * dens, t) / torch.trapezoid(dens, t))
    return total


def test_quartic_quadrature_reproduces_the_gamma_function_identity():
    assert _quartic_llc(torch.tensor([0.5, 2.0], dtype=F64), 1000, 0.0) == pytest.approx(0.5, abs=1e-9)


def test_llc_of_a_regular_quadratic_is_half_the_dimension():
    """L_n(w) = L* + ½ (w - w*)ᵀ diag(a) (w - w*) in d = 40 parameters: a regular model, λ = d/2.

    With the automatic plan (step 0.2 / p_max, 8 relaxation times 1/(ε γ)) the estimate must be
    within 4 standard errors over chains of the exact stationary value (γ = 10 and the step size
    shift it by a known -3 %, :func:`_gaussian_llc`) and within 8 % of d/2 = 20 (the standard error
    is ~2 %: 40 coordinates average the per-chain noise of a 6-relaxation-time sample)."""
    d, n, gamma = 40, 1000, 10.0
    a = torch.linspace(0.5, 2.0, d, dtype=F64)
    w_star = torch.linspace(-1.0, 1.0, d, dtype=F64)
    res = fl.local_learning_coefficient(_quadratic(a, w_star, 3.0), w_star, n, 6, gamma, float(a.max()), seed=0)
    nbeta = n / math.log(n)
    assert res.plan.step_size == pytest.approx(0.2 / (nbeta * 2.0 + gamma), rel=1e-12)
    assert res.plan.steps == math.ceil(8 / (res.plan.step_size * gamma)) and res.equilibrated and res.note is None
    want = _gaussian_llc(a, n, gamma, res.plan.step_size)
    assert 0 < res.std < 0.1 * want and res.run.rhat < 1.1
    assert abs(res.mean - want) < 4 * res.std / math.sqrt(6)
    assert abs(res.mean - d / 2) < 0.08 * d / 2


def test_llc_of_a_quartic_is_a_quarter_per_parameter():
    """L_n(w) = L* + sum_i c_i (w_i - w*_i)^4: a singular (degenerate) model, lambda = d/4, half the
    regular d/2. Without localisation (gamma = 0) the tempered posterior per coordinate is
    exp(-n beta c t^4), and E[n beta c t^4] = 1/4 exactly (a Gamma-function identity), so SGLD must
    find d/4 up to its step-size bias: within 4 standard errors over chains and 8 % of d/4. With
    gamma = 0 there is no relaxation bound: ``equilibrated`` is None and the note says so."""
    d, n, eps = 8, 1000, 1e-3
    c = torch.linspace(0.5, 2.0, d, dtype=F64)
    w_star = torch.linspace(-1.0, 1.0, d, dtype=F64)

    def loss_grad(w):
        r = w - w_star
        return 1.0 + float((c * r ** 4).sum()), 4 * c * r ** 3

    res = fl.local_learning_coefficient(loss_grad, w_star, n, 6, 0.0, 0.0, step_size=eps, steps=4000, seed=1)
    assert res.equilibrated is None and "no relaxation bound" in res.note
    assert abs(res.mean - d / 4) < max(4 * res.std / math.sqrt(6), 0.08 * d / 4)
    assert abs(res.mean - d / 4) < 0.08 * d / 4 and res.mean < 0.6 * d / 2  # clearly below the regular d/2


def test_llc_of_a_mixed_model_is_the_sum_of_its_coordinates():
    """6 quadratic coordinates (1/2 each) and 6 quartic ones (1/4 each): lambda = 3 + 1.5 = 4.5.

    The curvature at w* is the quadratic part's (the quartic's is 0), so the automatic step comes
    from it; with gamma = 5 the exact localised value is the Gaussian formula for the quadratic
    coordinates plus the quartic quadrature (:func:`_quartic_llc`). Within 4 standard errors of it,
    within 6 % of 4.5, and clearly apart from the all-regular 6 and the all-quartic 3."""
    n, gamma = 1000, 5.0
    a = torch.linspace(1.0, 2.0, 6, dtype=F64)
    c = torch.linspace(0.5, 2.0, 6, dtype=F64)

    def loss_grad(w):
        q, r = w[:6], w[6:]
        return 0.5 * float(q @ (a * q)) + float((c * r ** 4).sum()), torch.cat([a * q, 4 * c * r ** 3])

    res = fl.local_learning_coefficient(loss_grad, torch.zeros(12, dtype=F64), n, 4, gamma, float(a.max()),
                                        max_steps=5000, seed=2)
    want = _gaussian_llc(a, n, gamma, res.plan.step_size) + _quartic_llc(c, n, gamma)
    assert res.equilibrated and res.note is None
    assert abs(res.mean - want) < 4 * res.std / math.sqrt(4)
    assert abs(res.mean - 4.5) < 0.06 * 4.5 and 3.6 < res.mean < 5.4


def test_llc_of_a_stiff_quadratic_needs_the_adaptive_step():
    """Eigenvalues log-spaced over 1e-2 .. 1e4 (48 coordinates), n = 1000, gamma = 1e4.

    The old fixed step 1e-4 is 146 times past the stability limit 4 / p_max: every chain diverges.
    The automatic step (0.2 / p_max) gives the exact localised value within 4 standard errors (and
    10 %). That value counts only the directions stiffer than gamma / (n beta) ~ 69: about 10, not
    d/2 = 24 -- no single-step SGLD resolves 6 decades of curvature at gamma far below the flattest
    direction's n beta a (it would need ~1e7 steps)."""
    n, gamma = 1000, 1e4
    a = torch.logspace(-2, 4, 48, dtype=F64)
    w0 = torch.zeros(48, dtype=F64)
    old = fl.sgld_llc(_quadratic(a, w0), w0, n, 2, 100, 1e-4, gamma, seed=0)
    assert all(old.diverged) and math.isnan(old.mean)
    res = fl.local_learning_coefficient(_quadratic(a, w0), w0, n, 6, gamma, float(a.max()), max_steps=10000,
                                        seed=0)
    want = _gaussian_llc(a, n, gamma, res.plan.step_size)
    assert res.retries == 0 and not any(res.run.diverged) and res.equilibrated
    assert abs(res.mean - want) < 4 * res.std / math.sqrt(6) and abs(res.mean - want) < 0.1 * want


def test_llc_not_equilibrated_when_the_budget_binds():
    """The same regular quadratic with a budget of 500 steps (8 relaxation times need ~2,300): the
    estimate is made with 500 steps, flagged not equilibrated and the note names the steps needed
    and the fix; an explicit short run is flagged the same way, and an explicit step past the
    stability limit is named unstable."""
    d, n, gamma = 10, 1000, 10.0
    a = torch.linspace(0.5, 2.0, d, dtype=F64)
    w0 = torch.zeros(d, dtype=F64)
    res = fl.local_learning_coefficient(_quadratic(a, w0), w0, n, 2, gamma, 2.0, max_steps=500, seed=0)
    assert res.plan.steps == 500 and res.run.burnin_steps == 125 and res.equilibrated is False
    needed = math.ceil(8 / (res.plan.step_size * gamma))
    assert f"500 steps < {needed} needed" in res.note and "raise llc_max_steps" in res.note
    short = fl.llc_plan(n, gamma, 2.0, step_size=1e-4, steps=100)
    assert short.equilibrated is False and "use llc_steps: auto" in short.note
    assert short.needed_steps == pytest.approx(8 / (1e-4 * gamma))
    wild = fl.llc_plan(n, gamma, 2.0, step_size=0.01, steps=10**6)
    assert wild.equilibrated is False and "unstable step" in wild.note


def test_llc_retries_a_diverged_chain_at_a_smaller_step():
    """lambda_max at w* understates the curvature where the chain goes (here the loss is 1/2 a r^2
    with a 64x stiffer than the lambda_max given): the auto step diverges, the retry at a 4x then
    16x smaller step does not, and the note says so."""
    n, gamma, a = 1000, 10.0, 100.0
    lg = _quadratic(torch.full((4,), a, dtype=F64), torch.zeros(4, dtype=F64))
    res = fl.local_learning_coefficient(lg, torch.zeros(4, dtype=F64), n, 2, gamma, a / 64, max_steps=300, seed=0)
    assert res.retries >= 1 and not any(res.run.diverged) and "retried at a 4x smaller" in res.note
    nbeta = n / math.log(n)
    assert res.plan.step_size == pytest.approx(0.2 / (nbeta * a / 64 + gamma) / 4 ** res.retries, rel=1e-12)


def test_split_rhat_detects_drift_and_disagreement():
    gen = torch.Generator().manual_seed(0)
    iid = [torch.randn(400, generator=gen, dtype=F64).tolist() for _ in range(3)]
    assert fl.split_rhat(iid) == pytest.approx(1.0, abs=0.02)
    drifting = [(torch.randn(400, generator=gen, dtype=F64) + torch.linspace(0, 4, 400, dtype=F64)).tolist()]
    assert fl.split_rhat(drifting) > 1.3  # one chain: its halves disagree
    apart = [t for t in iid[:2]] + [[v + 3 for v in iid[2]]]
    assert fl.split_rhat(apart) > 1.3
    assert math.isnan(fl.split_rhat([[1.0, 2.0, 3.0]])) and math.isnan(fl.split_rhat([[1.0] * 10]))


def test_llc_reproducible_and_bad_settings_named():
    lg = lambda w: (0.5 * float(w @ w), w)  # noqa: E731
    one = fl.sgld_llc(lg, torch.zeros(3, dtype=F64), 100, 2, 20, 1e-3, 1.0, seed=4)
    assert one == fl.sgld_llc(lg, torch.zeros(3, dtype=F64), 100, 2, 20, 1e-3, 1.0, seed=4)
    blown = fl.sgld_llc(lambda w: (float("inf"), w), torch.zeros(3, dtype=F64), 100, 1, 5, 1e-3, 1.0)
    assert math.isnan(blown.mean) and math.isnan(blown.std) and blown.diverged == [True]
    with pytest.raises(ValueError, match="n must be >= 2"):
        fl.sgld_llc(lg, torch.zeros(3), 1, 1, 1, 1e-3, 1.0)
    with pytest.raises(ValueError, match="step_size > 0"):
        fl.sgld_llc(lg, torch.zeros(3), 10, 1, 1, 0.0, 1.0)
    with pytest.raises(ValueError, match="needs a finite lambda_max"):
        fl.llc_plan(100, 1.0, math.nan)
    with pytest.raises(ValueError, match="needs llc_gamma > 0"):
        fl.llc_plan(100, 0.0, 1.0)
    with pytest.raises(ValueError, match="'auto' or a number > 0"):
        fl.llc_plan(100, 1.0, 1.0, step_size="1e-4")
    plan = fl.llc_plan(100, 1.0, -5.0, lambda_min=-5.0)  # n beta lambda_min = -108.6 < -gamma
    assert plan.equilibrated is False and "raise llc_gamma above 108.6" in plan.note


# ----------------------------------------------------------------------------------- a trained run
def test_curvature_run_writes_stationarity_and_flatness(spec_factory, tmp_path):
    """Logistic regression on digits, checkpoints 0, 4, 8 (stride 2 measures 0 and 8 only)."""
    from conftest import run_pipeline

    from landscope import store
    from landscope.measures import curvature as cv
    from landscope.problem.build import build_problem
    from landscope.trajectory.rundir import checkpoint_path, load_checkpoint, load_minimizer

    spec = spec_factory(steps=8, snapshot_every=4)
    results, ckpt, _ = run_pipeline(spec, tmp_path)
    settings = {"eval_samples": 100, "lanczos_iters": 30, "slq_probes": 1, "hutchinson_probes": 2,
                "every": 2, "flatness_directions": 4, "llc_chains": 2, "llc_steps": 20}
    out = cv.curvature_run(spec, ckpt, ckpt / "minimizer.pt", results, settings)
    assert out["rows"] == 2 and out["llc_s"] > 0
    con = store.connect(results)
    rows = con.sql("SELECT * FROM stationarity ORDER BY step").pl().to_dicts()
    problem = build_problem(spec)
    pts = {}
    for step in (0, 4, 8):  # every checkpoint, not only the stride
        problem.model.load_state_dict(load_checkpoint(checkpoint_path(ckpt, step))["model"])
        pts[step] = flatten(trainable_parameters(problem.model))
    assert [(r["step"], r["next_step"]) for r in rows] == [(0, 4), (4, 8)]
    for r in rows:
        want = float((pts[r["next_step"]] - pts[r["step"]]).norm())
        assert r["distance"] == pytest.approx(want, rel=1e-12)
        assert r["mean_step_length"] == pytest.approx(want / 4, rel=1e-12)
        assert r["tail_checkpoints"] == 1 and r["tail_spread"] == 0.0  # steps >= 6: only 8
    mini = load_minimizer(ckpt / "minimizer.pt")
    problem.model.load_state_dict(mini["model"])
    x_k = flatten(trainable_parameters(problem.model))
    assert rows[0]["dist_xk_x0"] == pytest.approx(float((x_k - pts[0]).norm()), rel=1e-12)

    (f,) = con.sql("SELECT * FROM flatness").pl().to_dicts()
    (c,) = con.sql("SELECT * FROM curvature WHERE is_minimizer").pl().to_dicts()
    assert f["step"] == mini["step"] == c["step"]
    tops = [c[k] for k in section_settings.TOP_COLUMNS if c[k] is not None and c[k] > 0]
    assert f["n_positive_eigs"] == len(tops) == 3
    assert f["log_volume_proxy"] == pytest.approx(-0.5 * sum(math.log(v) for v in tops), rel=1e-12)
    idx = cv.eval_subset(len(problem.data), 100, 0)
    with torch.no_grad():
        loss = problem.loss_fn(problem.model, problem.model(problem.data.x[idx]), problem.data.y[idx]).mean()
    assert f["loss_at_xk"] == pytest.approx(float(loss), rel=1e-6) and f["eval_samples"] == 100
    assert 0 < f["radius_q25"] <= f["radius_median"] <= f["radius_q75"] <= f["t_max"] == 1.0
    assert f["directions"] == 4 and f["eps"] == 0.1 and math.isfinite(f["llc_mean"]) and f["llc_std"] >= 0
    # the LLC's step is planned from x_K's measured curvature; 20 explicit steps are flagged short
    nbeta = 100 / math.log(100)
    assert f["llc_lambda_max"] == c["lambda_max"] and f["llc_steps"] == 20 and f["llc_burnin_steps"] == 5
    assert f["llc_step_size"] == pytest.approx(0.2 / (nbeta * c["lambda_max"] + 100.0), rel=1e-12)
    assert f["llc_relax_steps"] == pytest.approx(1 / (f["llc_step_size"] * (100.0 + nbeta * min(c["lambda_min"], 0))))
    assert f["llc_equilibrated"] is False and "use llc_steps: auto" in f["llc_note"]
    chains = json.loads(f["llc_per_chain_json"])
    assert len(chains) == 2 and sum(ch["llc"] for ch in chains) / 2 == pytest.approx(f["llc_mean"], rel=1e-12)
    assert f["llc_drift"] == pytest.approx(sum(ch["drift"] for ch in chains) / 2, rel=1e-12)
    assert f["llc_rhat"] > 0 and f["llc_max_steps"] == 2000


def test_flatness_and_llc_can_be_skipped(spec_factory, tmp_path):
    from conftest import run_pipeline

    from landscope import store
    from landscope.measures import curvature as cv

    spec = spec_factory(steps=4, snapshot_every=4)
    results, ckpt, _ = run_pipeline(spec, tmp_path)
    settings = {"eval_samples": 50, "lanczos_iters": 5, "slq_probes": 1, "hutchinson_probes": 2,
                "flatness_directions": 0, "llc_chains": 0}
    cv.curvature_run(spec, ckpt, ckpt / "minimizer.pt", results, settings)
    (f,) = store.connect(results).sql("SELECT * FROM flatness").pl().to_dicts()
    assert math.isnan(f["radius_median"]) and math.isnan(f["llc_mean"]) and math.isnan(f["capped_fraction"])
    assert math.isfinite(f["loss_at_xk"]) and math.isfinite(f["log_volume_proxy"])


@pytest.mark.parametrize("raw, needle", [
    ({"flatness_directions": -1}, "flatness_directions must be >= 0"),
    ({"llc_steps": 0}, "llc_steps must be auto or an integer >= 1"),
    ({"flatness_eps": 0.0}, "flatness_eps must be > 0"),
    ({"llc_gamma": -1.0}, "llc_gamma must be >= 0"),
    ({"llc_step_size": "1e-4"}, "llc_step_size must be auto or a number > 0"),
    ({"llc_steps": "many"}, "llc_steps must be auto or an integer >= 1"),
    ({"llc_max_steps": 0}, "llc_max_steps must be >= 1"),
    ({"llc_gamma": 0.0}, "llc_steps auto needs llc_gamma > 0"),
])
def test_bad_flatness_settings_are_named(raw, needle):
    with pytest.raises(ValueError, match=needle):
        section_settings.curvature_settings(raw)


# ----------------------------------------------------------------------------------- report charts
def test_flatness_charts_on_synthetic_results(tmp_path):
    """Two points x two seeds (runs from test_curvature's synthetic results) with hand-chosen values."""
    from test_curvature import synthetic_results

    from landscope import store
    from landscope.report import curvature as rc

    results = synthetic_results(tmp_path)
    for point in ("lr-0.1", "lr-1"):
        for seed in (0, 1):
            run = f"{point}_seed-{seed}"
            st = {c: [None, None] for c in store.SCHEMAS["stationarity"]}
            st.update(experiment=["e"] * 2, run=[run] * 2, step=[0, 10], next_step=[10, 20],
                      mean_step_length=[0.5 + seed, 0.1])
            store.write_table(store.part_path(results, "stationarity", "e", run), "stationarity", st)
            f = {c: [None] for c in store.SCHEMAS["flatness"]}
            f.update(experiment=["e"], run=[run], step=[20], radius_q25=[0.1 + seed], radius_median=[0.2 + seed],
                     radius_q75=[0.4 + seed], llc_mean=[3.0 + 2 * seed], llc_std=[0.5 if seed else float("nan")])
            store.write_table(store.part_path(results, "flatness", "e", run), "flatness", f)
    con = store.connect(results)
    steps = {(r["point"], r["step"]): r for r in rc.step_length_stat(con, "e").to_dicts()}
    assert steps[("lr-1", 0)]["mean"] == pytest.approx(1.0) and steps[("lr-1", 0)]["lo"] == 0.5
    assert steps[("lr-1", 0)]["hi"] == 1.5 and steps[("lr-0.1", 10)]["n_runs"] == 2
    (r,) = [r for r in rc.radius_stat(con, "e").to_dicts() if r["point"] == "lr-0.1"]
    assert (r["n_runs"], r["mean"], r["lo"], r["hi"]) == (2, pytest.approx(0.7), pytest.approx(0.1), pytest.approx(1.4))
    (r,) = [r for r in rc.llc_stat(con, "e").to_dicts() if r["point"] == "lr-1"]
    # seed 0: 3 (one chain: no spread), seed 1: 5 ± 0.5
    assert (r["mean"], r["lo"], r["hi"]) == (pytest.approx(4.0), pytest.approx(3.0), pytest.approx(5.5))
    charts = rc.curvature_charts(con, "e")
    titles = [s.heading for s in charts]
    assert titles[-3:] == ["Step length", "Sublevel radius", "Local learning coefficient"]
    assert all(s.chart is not None for s in charts[-3:])
    spec = charts[-2].chart.to_dict()
    assert len(spec["layer"]) == 2 and spec["layer"][0]["mark"]["type"] == "rule"
    assert charts[-3].chart.to_dict()["layer"][1]["encoding"]["y"]["scale"]["type"] == "log"


# ----------------------------------------------------------------------------------- plateaus
def synthetic_curve(seed: int = 0):
    """Steps 0..999: a descent 2.3 -> 1.0 (large gradient), a plateau at 1.0 over 200..599 (small
    gradient), a drop to 0.3 over 600..699, then flat at 0.3 to the end; 2% multiplicative noise."""
    g = torch.Generator().manual_seed(seed)
    steps = list(range(1000))
    loss, grad = [], []
    for k in steps:
        if k < 200:
            l, gn = 2.3 - 1.3 * k / 200, 1.0
        elif k < 600:
            l, gn = 1.0, 0.05
        elif k < 700:
            l, gn = 1.0 - 0.7 * (k - 600) / 100, 0.8
        else:
            l, gn = 0.3, 0.03
        noise = 1 + 0.02 * float(torch.randn(1, generator=g))
        loss.append(l * noise)
        grad.append(gn * noise)
    return steps, loss, grad


def test_plateau_escape_on_a_synthetic_loss_curve():
    steps, loss, grad = synthetic_curve()
    events = plateaus.plateau_events(steps, loss, grad, window=50, min_windows=3, flat_tol=0.02, grad_tol=0.25,
                                     drop=0.1)
    assert len(events) == 2
    first, last = events
    assert (first["start_step"], first["end_step"]) == (200, 599)  # blocks 4..11 exactly
    assert first["escaped"] and not first["at_end"] and first["n_windows"] == 8
    assert first["escape_step"] == 600  # the first block after the plateau already averages 0.83
    assert first["plateau_loss"] == pytest.approx(1.0, abs=0.01)
    assert first["plateau_grad_norm"] == pytest.approx(0.05, abs=0.002)
    assert first["relative_drop"] == pytest.approx(1 - 0.8285, abs=0.01)
    assert first["grad_norm_max"] == pytest.approx(1.0, abs=0.02)
    assert (last["start_step"], last["end_step"]) == (700, 999)
    assert last["at_end"] and not last["escaped"] and last["escape_step"] is None and last["loss_after"] is None


def test_plateau_needs_small_gradient_and_enough_windows():
    steps, loss, grad = synthetic_curve()
    # with the gradient as large as during the descent, the flat loss is no plateau (a noisy valley)
    none = plateaus.plateau_events(steps, loss, [1.0] * 1000, 50, 3, 0.02, 0.25, 0.1)
    assert none == []
    # a loss that is flat for only two windows is not a plateau at min_windows 3
    short = [2.0] * 100 + [1.0 - 0.005 * k for k in range(100)] + [0.2] * 100  # flat 0..99 then falls
    ev = plateaus.plateau_events(list(range(300)), short, [0.01] * 100 + [1.0] * 200, 50, 3, 0.02, 0.25, 0.1)
    assert ev == []
    ev = plateaus.plateau_events(list(range(300)), short, [0.01] * 100 + [1.0] * 200, 50, 2, 0.02, 0.25, 0.1)
    assert len(ev) == 1 and ev[0]["escaped"] and ev[0]["escape_step"] == 100
    with pytest.raises(ValueError, match="one of each per step"):
        plateaus.plateau_events([0, 1], [1.0], [1.0, 1.0], 1, 2, 0.1, 0.5, 0.1)
    with pytest.raises(ValueError, match="min_windows >= 2"):
        plateaus.plateau_events([0], [1.0], [1.0], 1, 1, 0.1, 0.5, 0.1)


def test_plateaus_experiment_writes_the_table(spec_factory, tmp_path):
    """From a real replayed run: the table is written (and readable) with the settings' window."""
    from conftest import run_pipeline

    from landscope import store

    spec = spec_factory(steps=40, snapshot_every=20, optimizer={"name": "sgd", "lr": 0.05})
    results, _, _ = run_pipeline(spec, tmp_path)
    n = plateaus.plateaus_experiment(results, spec.experiment, [spec.run, "absent"],
                               {"plateau_window": 5, "plateau_min_windows": 2, "plateau_flat_tol": 1.0,
                                "plateau_grad_tol": 1.0, "plateau_drop": 0.5})
    con = store.connect(results)
    rows = con.sql("SELECT * FROM plateaus").pl().to_dicts()
    assert len(rows) == n >= 1  # tolerances this loose: the whole run is one plateau, lasting to the end
    assert rows[0]["window_steps"] == 5 and rows[0]["at_end"] and rows[0]["start_step"] == 0
    assert rows[0]["end_step"] == 39 and rows[0]["n_windows"] == 8
