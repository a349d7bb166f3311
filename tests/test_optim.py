"""Optimizers and schedules against steps computed by hand.

The optimizers run on f(a, b) = (3 a^2 + b^2) / 2 with two scalar parameters (float64), from
x_0 = (1, -2): f(x_0) = 3.5, grad f = (3 a, b), g_0 = (3, -2), ||g_0||^2 = 13. Every expected value
below is that arithmetic written out in Python floats.
"""

import io
import math

import pytest
import torch

from landscope.config import validate
from landscope.problem.optim import OPTIMIZER_DEFAULTS, OPTIMIZERS, SCHEDULE_DEFAULTS, SCHEDULES, lr_at, make_optimizer
from landscope.settings import load_schema

X0 = [1.0, -2.0]


def f(x):
    return 0.5 * (3 * x[0] ** 2 + x[1] ** 2)


def grad(x):
    return [3 * x[0], x[1]]


def sq(v):
    return sum(t * t for t in v)


def axpy(x, alpha, d):
    """x + alpha d."""
    return [xi + alpha * di for xi, di in zip(x, d)]


def spec(name, **kw):
    return {**OPTIMIZER_DEFAULTS, "name": name, **kw}


def run(opt_spec, n_steps, f_star=0.0, sched=None, steps=None):
    """n_steps steps of the training loop (lr from the schedule, set_batch_info, step) on f."""
    a = torch.nn.Parameter(torch.tensor(X0[0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(X0[1], dtype=torch.float64))
    opt = make_optimizer(opt_spec, [a, b])
    path = []
    for k in range(n_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(opt_spec, sched or {}, steps or n_steps, k)
        opt.zero_grad()
        loss = 0.5 * (3 * a ** 2 + b ** 2)
        loss.backward()
        if hasattr(opt, "set_batch_info"):
            opt.set_batch_info(loss.detach(), torch.tensor(f_star, dtype=torch.float64))
        opt.step()
        path.append([a.item(), b.item()])
    return path, opt


def close(got, want):
    """Equal to float64 rounding; lists of points are compared point by point."""
    if isinstance(want, list) and want and isinstance(want[0], list):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            close(g, w)
        return
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


# ----------------------------------------------------------------------------------- config
def test_code_defaults_are_the_schema_defaults():
    """The defaults are read from the schema (no copy to keep equal); the names are a Python copy of its enums."""
    props = load_schema()["$defs"]["experiment"]["properties"]
    opt, sched = props["optimizer"]["properties"], props["schedule"]["properties"]
    assert {k: v["default"] for k, v in opt.items()} == OPTIMIZER_DEFAULTS
    assert {k: v["default"] for k, v in sched.items()} == SCHEDULE_DEFAULTS
    assert OPTIMIZER_DEFAULTS["betas"] == [0.9, 0.999] and OPTIMIZER_DEFAULTS["eps"] == 1e-8
    assert SCHEDULE_DEFAULTS["final_div_factor"] == 10000.0 and SCHEDULE_DEFAULTS["anneal_strategy"] == "cos"
    assert tuple(opt["name"]["enum"]) == OPTIMIZERS
    assert tuple(sched["name"]["enum"]) == SCHEDULES


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_key_the_code_reads_has_a_schema_default(name):
    """Built from the name alone, every other key comes from OPTIMIZER_DEFAULTS (a key the schema
    lacks would be a KeyError); one step of plain descent-like motion from x_0 follows."""
    p = torch.nn.Parameter(torch.tensor(X0, dtype=torch.float64))
    opt = make_optimizer({"name": name}, [p])
    loss = 0.5 * (3 * p[0] ** 2 + p[1] ** 2)
    loss.backward()
    if hasattr(opt, "set_batch_info"):
        opt.set_batch_info(loss.detach(), torch.tensor(0.0, dtype=torch.float64))
    opt.step()
    assert f(p.detach().tolist()) < f(X0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_key_the_code_reads_has_a_schema_default(name):
    """lr_at with the name alone: the defaults give lr at step 0 for all but onecycle (lr / 25) and a
    last step of at most lr."""
    lrs = [lr_at({"lr": 1.0}, {"name": name}, 10, k) for k in range(10)]
    assert lrs[0] == pytest.approx(1.0 / 25.0 if name == "onecycle" else 1.0)
    assert 0.0 <= lrs[-1] <= 1.0


def test_config_accepts_the_new_names_and_fills_their_keys():
    exp = {"model": {"name": "mlp"}, "dataset": {"name": "digits"},
           "optimizer": {"name": "decsps", "lr": 2.0}, "schedule": {"name": "warmup_cosine", "warmup_steps": 5}}
    full = validate({"experiments": {"t": exp}})["experiments"]["t"]
    assert full["optimizer"] == {**OPTIMIZER_DEFAULTS, "name": "decsps", "lr": 2.0}
    assert full["schedule"] == {**SCHEDULE_DEFAULTS, "name": "warmup_cosine", "warmup_steps": 5}


# ----------------------------------------------------------------------------------- optimizers
def test_sgd_plain():
    lr = 0.1
    x1 = axpy(X0, -lr, grad(X0))             # (0.7, -1.8)
    x2 = axpy(x1, -lr, grad(x1))             # (0.49, -1.62)
    path, _ = run(spec("sgd", lr=lr), 2)
    close(path[0], [0.7, -1.8])
    close(path, [x1, x2])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_weight_decay_nesterov(nesterov):
    lr, mu, wd = 0.1, 0.9, 0.01
    g0 = axpy(grad(X0), wd, X0)                           # g + wd x
    buf0 = g0                                             # torch: first buffer = gradient
    d0 = axpy(g0, mu, buf0) if nesterov else buf0
    x1 = axpy(X0, -lr, d0)
    g1 = axpy(grad(x1), wd, x1)
    buf1 = axpy([mu * t for t in buf0], 1.0, g1)          # mu buf + g
    d1 = axpy(g1, mu, buf1) if nesterov else buf1
    x2 = axpy(x1, -lr, d1)
    path, _ = run(spec("sgd", lr=lr, momentum=mu, weight_decay=wd, nesterov=nesterov), 2)
    close(path, [x1, x2])


def _adam_like(lr, b1, b2, eps, wd, decoupled, nesterov, n=2):
    x, m, v, out = list(X0), [0.0, 0.0], [0.0, 0.0], []
    for t in range(1, n + 1):
        g = grad(x)
        if decoupled:
            x = [xi * (1 - lr * wd) for xi in x]
        else:
            g = axpy(g, wd, x)
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        num = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)] if nesterov else m
        x = [xi - lr / (1 - b1 ** t) * ni / (math.sqrt(vi) / math.sqrt(1 - b2 ** t) + eps)
             for xi, ni, vi in zip(x, num, v)]
        out.append(x)
    return out


@pytest.mark.parametrize("name, decoupled, nesterov", [
    ("adam", False, False), ("adamw", True, False), ("nadamw", True, True)])
def test_adam_family(name, decoupled, nesterov):
    lr, (b1, b2), eps, wd = 0.05, (0.8, 0.99), 1e-3, 0.1
    want = _adam_like(lr, b1, b2, eps, wd, decoupled, nesterov)
    path, _ = run(spec(name, lr=lr, betas=[b1, b2], eps=eps, weight_decay=wd), 2)
    close(path, want)


def test_nadamw_first_step_by_hand():
    """t = 1, no decay: m = (1-b1) g, v = (1-b2) g^2, numerator b1 m + (1-b1) g = (1-b1)(1+b1) g,
    so x_1 = x_0 - lr (1+b1) sign(g) / (1 + eps / |g|) exactly as written out here."""
    lr, b1, eps = 0.05, 0.9, 1e-8
    x1 = [x - lr * (1 + b1) * math.copysign(1.0, g) / (1 + eps / abs(g)) for x, g in zip(X0, grad(X0))]
    path, _ = run(spec("nadamw", lr=lr, eps=eps), 1)
    close(path[0], x1)


@pytest.mark.parametrize("lr, f_star, capped", [(0.1, 0.0, True), (1.0, 0.0, False), (1.0, 0.5, False)])
def test_sps_max(lr, f_star, capped):
    c = 0.5
    polyak0 = (f(X0) - f_star) / (c * sq(grad(X0)))       # 3.5 / 6.5 or 3.0 / 6.5
    assert (polyak0 > lr) == capped
    gamma0 = min(polyak0, lr)
    x1 = axpy(X0, -gamma0, grad(X0))
    gamma1 = min((f(x1) - f_star) / (c * sq(grad(x1))), lr)
    x2 = axpy(x1, -gamma1, grad(x1))
    path, opt = run(spec("sps_max", lr=lr, c=c), 2, f_star=f_star)
    close(path, [x1, x2])
    close(opt.last_step_size, gamma1)
    if capped:
        close(path[0], [1 - 0.3, -2 + 0.2])


def test_decsps_polyak_then_recursion_binds():
    lr, c0 = 1.0, 1.0
    c = [c0 * math.sqrt(k + 1) for k in range(3)]
    x, gammas, xs = list(X0), [], []
    for k in range(3):
        polyak = f(x) / (c[k] * sq(grad(x)))
        candidates = [polyak, lr] if k == 0 else [polyak, c[k - 1] * gammas[-1] / c[k]]
        gammas.append(min(candidates))
        x = axpy(x, -gammas[-1], grad(x))
        xs.append(x)
    # step 0: the Polyak term binds (3.5/13 < 1); step 1: the recursion c_0 gamma_0 / c_1 binds
    assert gammas[0] == pytest.approx(3.5 / 13) and gammas[1] == pytest.approx(gammas[0] / math.sqrt(2))
    path, opt = run(spec("decsps", lr=lr, c0=c0), 3)
    close(path, xs)
    assert opt.state[opt.param_groups[0]["params"][0]]["step"] == 3


def test_decsps_cap_gamma_b():
    lr = 0.1                                              # gamma_b below the Polyak term 3.5/13
    g1_gamma = 1.0 * lr / math.sqrt(2)                    # c_0 gamma_0 / c_1
    x1 = axpy(X0, -lr, grad(X0))
    assert f(x1) / (math.sqrt(2) * sq(grad(x1))) > g1_gamma
    x2 = axpy(x1, -g1_gamma, grad(x1))
    path, _ = run(spec("decsps", lr=lr), 2)
    close(path, [x1, x2])


def test_ngn():
    lr, f_star = 1.0, 0.5
    gamma0 = lr / (1 + lr * sq(grad(X0)) / (2 * (f(X0) - f_star)))      # 1 / (1 + 13/6) = 6/19
    assert gamma0 == pytest.approx(6 / 19)
    x1 = axpy(X0, -gamma0, grad(X0))
    gamma1 = lr / (1 + lr * sq(grad(x1)) / (2 * (f(x1) - f_star)))
    x2 = axpy(x1, -gamma1, grad(x1))
    path, _ = run(spec("ngn", lr=lr), 2, f_star=f_star)
    close(path, [x1, x2])


@pytest.mark.parametrize("b0", [1.0, 10.0])
def test_adagrad_norm_max_is_theorem_7(b0):
    """Three steps by hand: c_k^2 = max(c_(k-1)^2, |g_k|^2), b_k^2 = b_(k-1)^2 + c_k^2, b_(-1) = b0."""
    lr = 1.0
    g0 = grad(X0)                                         # |g0|^2 = 13
    b_sq0 = b0 ** 2 + 13.0                                # c_0^2 = 13
    x1 = axpy(X0, -lr / math.sqrt(b_sq0), g0)
    c_sq1 = max(13.0, sq(grad(x1)))
    b_sq1 = b_sq0 + c_sq1
    x2 = axpy(x1, -lr / math.sqrt(b_sq1), grad(x1))
    c_sq2 = max(c_sq1, sq(grad(x2)))
    b_sq2 = b_sq1 + c_sq2
    x3 = axpy(x2, -lr / math.sqrt(b_sq2), grad(x2))
    # the step shrinks the gradient, so the running maximum stays |g0|^2 and is accumulated three times,
    # where AdaGrad-norm would add the (smaller) current norms and a floor would not add b0^2
    assert sq(grad(x1)) < 13.0 and sq(grad(x2)) < 13.0 and b_sq2 == b0 ** 2 + 3 * 13.0
    if b0 == 1.0:                                         # x1 = x0 - g0 / sqrt(14), written out
        close(x1, [1.0 - 3.0 / math.sqrt(14.0), -2.0 + 2.0 / math.sqrt(14.0)])
    path, opt = run(spec("adagrad_norm_max", lr=lr, b0=b0), 3)
    close(path, [x1, x2, x3])
    state = opt.state[opt.param_groups[0]["params"][0]]
    close(state["max_sq_grad"], 13.0)
    close(state["b_sq"], b0 ** 2 + 39.0)


def test_adagrad_norm_max_running_max_rises_with_the_gradient():
    """A step that grows the gradient: c_1^2 = |g_1|^2 > |g_0|^2 (lr 4 overshoots the a-axis: a -> 1 - 12/sqrt 14)."""
    lr = 4.0
    x1 = axpy(X0, -lr / math.sqrt(14.0), grad(X0))
    assert sq(grad(x1)) > 13.0
    b_sq1 = 14.0 + sq(grad(x1))
    x2 = axpy(x1, -lr / math.sqrt(b_sq1), grad(x1))
    path, _ = run(spec("adagrad_norm_max", lr=lr), 2)
    close(path, [x1, x2])


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_nsgdm(beta):
    lr = 0.1
    m0 = [(1 - beta) * g for g in grad(X0)]
    x1 = axpy(X0, -lr / math.sqrt(sq(m0)), m0)            # x_0 - lr g_0 / sqrt(13)
    close(x1, axpy(X0, -lr / math.sqrt(13), grad(X0)))
    m1 = [beta * m + (1 - beta) * g for m, g in zip(m0, grad(x1))]
    x2 = axpy(x1, -lr / math.sqrt(sq(m1)), m1)
    path, _ = run(spec("nsgdm", lr=lr, momentum=beta), 2)
    close(path, [x1, x2])
    path, _ = run(spec("nsgdm", lr=lr, momentum=beta, momentum_follows_lr=True), 2)
    close(path, [x1, x2])                                 # a constant schedule leaves beta_k = beta


def test_nsgdm_momentum_follows_the_schedule():
    """Three steps of a linear decay over 4 steps: lr_k = 0.1 (1 - k/4), beta_k = 0.9 (1 - k/4)."""
    lr, beta, sched = 0.1, 0.9, {"name": "polynomial", "power": 1.0}
    lrs_, betas = [0.1, 0.075, 0.05], [0.9, 0.675, 0.45]
    x, m, want = X0, [0.0, 0.0], []
    for lr_k, b_k in zip(lrs_, betas):
        m = [b_k * mi + (1 - b_k) * gi for mi, gi in zip(m, grad(x))]
        x = axpy(x, -lr_k / math.sqrt(sq(m)), m)
        want.append(x)
    path, opt = run(spec("nsgdm", lr=lr, momentum=beta, momentum_follows_lr=True), 3, sched=sched, steps=4)
    close(path, want)
    assert opt.param_groups[0]["peak_lr"] == lr
    fixed, _ = run(spec("nsgdm", lr=lr, momentum=beta), 3, sched=sched, steps=4)
    assert abs(fixed[2][1] - path[2][1]) > 1e-4          # off by default: the constant beta is another path


def test_polyak_lr_comes_from_the_schedule():
    """The scheduled lr is SPS_max's cap: with a cosine schedule step 1 uses lr_1 < lr."""
    lr, steps = 0.1, 4
    lr1 = lr_at({"lr": lr}, {"name": "cosine"}, steps, 1)
    x1 = axpy(X0, -lr, grad(X0))
    x2 = axpy(x1, -min(f(x1) / (0.5 * sq(grad(x1))), lr1), grad(x1))
    path, _ = run(spec("sps_max", lr=lr), 2, sched={"name": "cosine"}, steps=steps)
    close(path[1], x2)


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["sps_max", "decsps", "ngn"])
def test_missing_batch_info_is_explained(name):
    p = torch.nn.Parameter(torch.ones(2))
    opt = make_optimizer(spec(name), [p])
    p.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match=f"optimizer {name} needs .*set_batch_info.*f_i_star"):
        opt.step()
    opt.set_batch_info(torch.tensor(1.0), torch.tensor(0.0, dtype=torch.float64))
    opt.step()
    with pytest.raises(RuntimeError, match="set_batch_info"):  # consumed by the step
        opt.step()


@pytest.mark.parametrize("opt_spec, needle", [
    (spec("sps_max", weight_decay=0.1), "sps_max: weight_decay is not supported"),
    (spec("sgd", nesterov=True), "nesterov: true needs momentum > 0"),
    (spec("nsgdm", momentum=1.0), "nsgdm: momentum must be < 1"),
    (spec("sgd", momentum=0.9, momentum_follows_lr=True), "sgd: momentum_follows_lr applies to nsgdm only"),
    (spec("lbfgs"), "available: sgd, adam, adamw, nadamw, sps_max"),
])
def test_bad_optimizer_settings_are_explained(opt_spec, needle):
    with pytest.raises(ValueError, match=needle):
        make_optimizer(opt_spec, [torch.nn.Parameter(torch.ones(1))])


# ----------------------------------------------------------------------------------- resume
ROUND_TRIP = [spec("sgd", momentum=0.9, nesterov=True, weight_decay=0.01), spec("adam", weight_decay=0.01),
              spec("adamw", weight_decay=0.01), spec("nadamw", weight_decay=0.01), spec("sps_max", lr=0.5),
              spec("decsps", lr=0.5), spec("ngn", lr=0.5), spec("adagrad_norm_max", weight_decay=0.01),
              spec("nsgdm", momentum=0.9, weight_decay=0.01, momentum_follows_lr=True)]


def _train(params, opt, opt_spec, steps, ks):
    gen = torch.Generator().manual_seed(7)
    data = torch.randn(8, 5, generator=gen)
    for k in ks:
        for group in opt.param_groups:
            group["lr"] = lr_at(opt_spec, {"name": "onecycle"}, steps, k)
        opt.zero_grad()
        row = data[k % 8]
        loss = torch.nn.functional.softplus(row[:3] @ params[0]) + (row[3:] * params[1]).square().sum()
        loss.backward()
        if hasattr(opt, "set_batch_info"):
            opt.set_batch_info(loss.detach(), torch.tensor(0.0, dtype=torch.float64))
        opt.step()


def test_ROUND_TRIP_covers_every_optimizer():
    assert {s["name"] for s in ROUND_TRIP} == set(OPTIMIZERS)


@pytest.mark.parametrize("opt_spec", ROUND_TRIP, ids=[s["name"] for s in ROUND_TRIP])
def test_state_dict_round_trip_continues_bitwise(opt_spec):
    steps = 8
    params = [torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0])), torch.nn.Parameter(torch.tensor([1.0, -0.5]))]
    opt = make_optimizer(opt_spec, params)
    _train(params, opt, opt_spec, steps, range(4))
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = make_optimizer(opt_spec, resumed)
    opt2.load_state_dict(saved["opt"])
    _train(params, opt, opt_spec, steps, range(4, steps))
    _train(resumed, opt2, opt_spec, steps, range(4, steps))
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
    assert not torch.equal(params[0].detach(), torch.tensor([0.5, -1.0, 2.0]))


# ----------------------------------------------------------------------------------- schedules
def lrs(sched, steps, ks, lr=1.0):
    return [lr_at({"lr": lr}, {**SCHEDULE_DEFAULTS, **sched}, steps, k) for k in ks]


def test_constant_and_cosine():
    assert lrs({}, 10, [0, 5, 9]) == [1.0, 1.0, 1.0]
    close(lrs({"name": "cosine", "min_lr": 0.1}, 10, [0, 2, 5, 10]),
          [1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 5)), 0.55, 0.1])


def test_onecycle_by_hand():
    # steps 100, pct_start 0.3: phase 1 ends at step 0.3*100 - 1 = 29, phase 2 at step 99
    initial, final = 1.0 / 25, 1.0 / 25 / 1e4             # k = 14.5 is half way through phase 1
    want = [initial, initial + (1 - initial) / 2 * (1 - math.cos(math.pi * 14.5 / 29)), 1.0,
            final + (1 - final) / 2, final]
    close(lrs({"name": "onecycle"}, 100, [0, 14.5, 29, 64, 99]), want)
    close(lrs({"name": "onecycle", "anneal_strategy": "linear"}, 100, [0, 29, 64, 99]),
          [initial, 1.0, (1 + final) / 2, final])


@pytest.mark.parametrize("steps, pct_start, anneal, div, final_div", [
    (100, 0.3, "cos", 25.0, 1e4), (37, 0.25, "linear", 10.0, 100.0), (7, 0.3, "cos", 25.0, 1e4),
    (2, 0.3, "cos", 25.0, 1e4)])
def test_onecycle_matches_torch(steps, pct_start, anneal, div, final_div):
    lr = 0.01
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start,
                                              anneal_strategy=anneal, div_factor=div,
                                              final_div_factor=final_div)
    torch_lrs = []
    for _ in range(steps):
        torch_lrs.append(sch.get_last_lr()[0])
        opt.step()
        sch.step()
    sched = {"name": "onecycle", "pct_start": pct_start, "anneal_strategy": anneal, "div_factor": div,
             "final_div_factor": final_div}
    assert lrs(sched, steps, range(steps), lr=lr) == torch_lrs


def test_warmup_cosine():
    sched = {"name": "warmup_cosine", "warmup_steps": 4, "min_lr": 0.1}
    want = [0.0, 0.5, 1.0, 0.55, 0.1]                     # k = 0, 2, 4, 7 (half way), 10
    close(lrs(sched, 10, [0, 2, 4, 7, 10]), want)
    close(lrs({**sched, "warmup_steps": 0, "warmup_fraction": 0.4}, 10, [0, 2, 4, 7, 10]), want)
    close(lrs({**sched, "warmup_init": 0.5}, 10, [0, 2]), [0.5, 0.75])
    assert lrs({"name": "warmup_cosine", "min_lr": 0.1}, 10, range(11)) == \
        lrs({"name": "cosine", "min_lr": 0.1}, 10, range(11))
    with pytest.raises(ValueError, match="warmup_steps or warmup_fraction, not both"):
        lrs({**sched, "warmup_fraction": 0.4}, 10, [0])


def test_warmup_cosine_matches_algoperf_torch_schedulers():
    """AlgoPerf's NAdamW schedule: LinearLR(1e-10 -> 1) for W steps, then CosineAnnealingLR."""
    steps, warm, lr = 20, 5, 0.3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sch = torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-10, end_factor=1.0, total_iters=warm),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warm)], milestones=[warm])
    torch_lrs = []
    for _ in range(steps):
        torch_lrs.append(sch.get_last_lr()[0])
        opt.step()
        sch.step()
    sched = {"name": "warmup_cosine", "warmup_steps": warm, "warmup_init": 1e-10}
    assert lrs(sched, steps, range(steps), lr=lr) == pytest.approx(torch_lrs, rel=1e-9, abs=1e-15)


def test_polynomial():
    close(lrs({"name": "polynomial", "power": 2.0, "min_lr": 0.1}, 10, [0, 5, 9, 10]),
          [1.0, 0.1 + 0.9 * 0.25, 0.1 + 0.9 * 0.01, 0.1])
    close(lrs({"name": "polynomial"}, 4, [0, 1, 2, 3]), [1.0, 0.75, 0.5, 0.25])


def test_unknown_schedule_is_explained():
    with pytest.raises(ValueError, match="available: constant, cosine, onecycle, warmup_cosine, polynomial"):
        lrs({"name": "step"}, 10, [0])


def test_nsgdm_resumes_a_checkpoint_written_before_momentum_follows_lr():
    """An optimizer state saved before the option existed has no such key: it steps as plain NSGD-M."""
    p = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]
    state = make_optimizer({"name": "nsgdm", "lr": 0.5, "momentum": 0.9}, p).state_dict()
    for group in state["param_groups"]:
        del group["momentum_follows_lr"], group["peak_lr"]
    opt = make_optimizer({"name": "nsgdm", "lr": 0.5, "momentum": 0.9}, p)
    opt.load_state_dict(state)
    p[0].grad = torch.ones(3, dtype=torch.float64)
    opt.step()  # m_0 = (1 - 0.9) g; the step is lr m / ||m|| = 0.5 / sqrt(3) in every coordinate
    assert torch.allclose(p[0].detach(), torch.full((3,), 1 - 0.5 / 3 ** 0.5, dtype=torch.float64), rtol=0, atol=1e-15)


def test_the_spec_knows_which_optimizers_read_f_star():
    """landscope.spec.READS_F_STAR (what puts f_i_star into a run's training key) names exactly the
    built-in optimizers that take set_batch_info."""
    import inspect

    from landscope.problem import optim
    from landscope.spec import READS_F_STAR

    readers = {cls.name for _, cls in inspect.getmembers(optim, inspect.isclass)
               if issubclass(cls, torch.optim.Optimizer) and hasattr(cls, "set_batch_info") and cls.name}
    assert readers == READS_F_STAR == {"sps_max", "decsps", "ngn"}
