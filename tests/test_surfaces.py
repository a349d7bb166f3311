"""Loss surfaces (landscope.measures.surfaces) against exact answers: quadratic losses whose lines are known
parabolas and whose planes are known quadratic forms, trajectories lying in a known plane, filter
norms, a trained run's endpoints, the config's errors, and the rule through Snakemake."""

import math

import pytest
import torch
from torch import nn

from landscope import settings
from landscope.factories import ConfigError
from landscope.measures import surfaces as sf
from landscope.problem.evaluate import loss_and_accuracy
from landscope.trajectory import replay, rundir, train

F64 = torch.float64


def mse(model, out, y):
    return ((out - y) ** 2).reshape(len(out), -1).mean(1)


def linear_problem(n=40, d=5, seed=0):
    """A float64 linear model with MSE: f(w) = mean((X~ w~ - y)^2), X~ = [X, 1], w~ = [weight, bias]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=F64, generator=gen)
    y = torch.randn(n, 1, dtype=F64, generator=gen)
    model = nn.Linear(d, 1).double()
    return model, x, y, torch.cat([x, torch.ones(n, 1, dtype=F64)], 1)


def exact_f(xt, y, w):
    """f at flat parameters w = [weight (d), bias (1)] (nn.Linear's parameter order)."""
    return float(((xt @ w - y[:, 0]) ** 2).mean())


# ----------------------------------------------------------------------------------- grids
def test_t_grid_holds_both_ends_exactly():
    ts = sf.t_grid(25, 0.25)
    assert ts[0] == -0.25 and ts[-1] == 1.25 and 0.0 in ts and 1.0 in ts and len(ts) == 25
    odd = sf.t_grid(4, 0.3)  # linspace misses 0 and 1: both are added
    assert 0.0 in odd and 1.0 in odd and len(odd) == 6 and odd == sorted(odd)
    assert sf.t_grid(2, 0.0) == [0.0, 1.0]


def test_path_steps_and_starts():
    assert settings.path_steps([0, 100], 0) == [0, 100]
    assert settings.path_steps([0, 100], 5) == [0, 25, 50, 75, 100]
    assert settings.path_steps([0, 40, 100], 3) == [0, 40, 50, 100]
    assert settings.path_steps([0, 100], "auto") == [round(100 * i / 19) for i in range(20)]  # replay: 20 iterates
    eight = list(range(0, 800, 100))
    assert settings.path_steps(eight, "auto") == eight  # enough checkpoints: no replay
    steps, dist = [0, 25, 50, 75, 100], [4.0, 3.0, 2.0, 1.0, 0.0]
    assert sf.start_steps(steps, dist, 2) == [0, 50]  # the first and the middle of the 4 that differ from x_K
    assert sf.start_steps(steps, dist, 1) == [0]
    assert sf.start_steps(steps, dist, 0) == []
    assert sf.start_steps(steps, dist, 10) == [0, 25, 50, 75]


# ----------------------------------------------------------------------------------- quadratics
def test_line_is_the_exact_parabola():
    """f(x_a + t (x_b - x_a)) = C + B t + A t^2 with A = mean(dr^2), B = 2 mean(r_a dr), C = mean(r_a^2)."""
    model, x, y, xt = linear_problem()
    surface = sf.SurfaceModel(model, mse, x, y, chunk=16)  # chunks: the mean is over all 40 samples
    gen = torch.Generator().manual_seed(1)
    w_a, w_b = torch.randn(6, dtype=F64, generator=gen), torch.randn(6, dtype=F64, generator=gen)
    ts = sf.t_grid(13, 0.5)
    got = [loss for loss, acc in surface.line(w_a, {}, w_b, {}, ts)]
    r_a, dr = xt @ w_a - y[:, 0], xt @ (w_b - w_a)
    a_, b_, c_ = float((dr ** 2).mean()), float(2 * (r_a * dr).mean()), float((r_a ** 2).mean())
    for t, g in zip(ts, got):
        assert g == pytest.approx(c_ + b_ * t + a_ * t * t, rel=1e-12)
    assert got[ts.index(0.0)] == pytest.approx(exact_f(xt, y, w_a), rel=1e-12)
    assert got[ts.index(1.0)] == pytest.approx(exact_f(xt, y, w_b), rel=1e-12)


def test_plane_is_the_exact_quadratic_form():
    """f(x_K + a d1 + b d2) = f_K + a g.d1 + b g.d2 + 1/2 [a b] D^T H D [a b]^T, H = 2 X~^T X~ / n."""
    model, x, y, xt = linear_problem(seed=3)
    surface = sf.SurfaceModel(model, mse, x, y, chunk=64)
    gen = torch.Generator().manual_seed(4)
    w_k, d1, d2 = (torch.randn(6, dtype=F64, generator=gen) for _ in range(3))
    values = sf.axis_grid(-1.5, 1.5, 7)
    rows = sf.plane_losses(surface.loss_at, w_k, d1, d2, values, values)
    n = len(x)
    h = 2 * xt.T @ xt / n
    g = 2 * xt.T @ (xt @ w_k - y[:, 0]) / n
    f_k = exact_f(xt, y, w_k)
    d = torch.stack([d1, d2], 1)
    q = d.T @ h @ d
    assert len(rows) == 49 and [r["a"] for r in rows[:7]] == [values[0]] * 7  # a-major
    for r in rows:
        ab = torch.tensor([r["a"], r["b"]], dtype=F64)
        want = f_k + float(ab @ (d.T @ g)) + 0.5 * float(ab @ q @ ab)
        assert r["loss"] == pytest.approx(want, rel=1e-11, abs=1e-12)


def test_line_interpolates_batchnorm_statistics_inside_and_holds_them_outside():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(30, 3, dtype=F64)
    y = torch.randn(30, 1, dtype=F64)
    surface = sf.SurfaceModel(model, mse, x, y, chunk=30)
    model.train()
    with torch.no_grad():
        model(x * 3 + 1)  # running statistics of state a
    w_a, buf_a = surface.flat(), surface.buffers()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
        model(x * 0.5 - 2)  # state b: other parameters and statistics
    w_b, buf_b = surface.flat(), surface.buffers()
    assert set(buf_a) == {"1.running_mean", "1.running_var"}

    def loss_with(w, buffers):
        surface.set_params(w)
        surface.set_buffers(buffers)
        model.eval()
        with torch.no_grad():
            return float(mse(model, model(x), y).mean())

    mix = {k: 0.5 * (buf_a[k] + buf_b[k]) for k in buf_a}
    ts = [-0.25, 0.0, 0.5, 1.0, 1.25]
    got = [loss for loss, _ in surface.line(w_a, buf_a, w_b, buf_b, ts)]
    want = [loss_with(w_a - 0.25 * (w_b - w_a), buf_a), loss_with(w_a, buf_a),
            loss_with(0.5 * (w_a + w_b), mix), loss_with(w_b, buf_b), loss_with(w_b + 0.25 * (w_b - w_a), buf_b)]
    assert got == pytest.approx(want, rel=1e-12)
    assert math.isnan(surface.evaluate()[1])  # regression targets: no accuracy


def test_accuracy_counts_argmax_classes():
    model = nn.Linear(2, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0], [2.0, 0.0]], dtype=F64)
    y = torch.tensor([0, 1, 2, 1])  # the last one is wrong
    ce = lambda m, out, t: nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    loss, acc = loss_and_accuracy(model, ce, x, y, chunk=3)
    assert acc == 0.75
    with torch.no_grad():
        assert loss == pytest.approx(float(nn.functional.cross_entropy(model(x), y)), rel=1e-12)


# ----------------------------------------------------------------------------------- directions
def test_random_plane_is_filter_normalised_to_x_k():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4), nn.LayerNorm(4)).double()
    surface = sf.SurfaceModel(model, mse, torch.zeros(1, 2, 4, 4, dtype=F64), torch.zeros(1, 4, dtype=F64), 1)
    w_k = surface.flat()
    plane = sf.random_plane(surface, w_k, seed=7, offsets=torch.randn(3, w_k.numel(), dtype=F64))
    for d in (plane.d1, plane.d2):
        start = 0
        for p in model.parameters():
            chunk = d[start:start + p.numel()].reshape(p.shape)
            start += p.numel()
            rows_w = p.detach().reshape(p.shape[0], -1) if p.dim() >= 2 else p.detach().reshape(1, -1)
            rows_d = chunk.reshape(rows_w.shape)
            assert torch.allclose(rows_d.norm(dim=1), rows_w.norm(dim=1), rtol=1e-12), p.shape
    assert not torch.allclose(plane.d1, plane.d2)
    again = sf.random_plane(surface, w_k, seed=7, offsets=torch.randn(3, w_k.numel(), dtype=F64))
    assert torch.equal(again.d1, plane.d1) and torch.equal(again.d2, plane.d2)  # seeded


def known_plane_path(m=12, n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, 2, dtype=F64, generator=gen))
    coords = torch.randn(m, 2, dtype=F64, generator=gen) * torch.tensor([3.0, 0.5], dtype=F64)
    coords[-1] = 0  # the last iterate is x_K
    return basis.T, coords, coords @ basis.T


def test_pca_plane_recovers_a_trajectory_in_a_known_plane():
    e, coords, offsets = known_plane_path()
    plane = sf.pca_plane(offsets)
    d = torch.stack([plane.d1, plane.d2])
    assert torch.allclose(d @ d.T, torch.eye(2, dtype=F64), atol=1e-12)  # orthonormal
    assert torch.allclose(d.T @ d, e.T @ e, atol=1e-10)  # the same plane (equal projectors)
    assert plane.captured_fraction == pytest.approx(1.0, abs=1e-12)
    assert float(plane.off_plane.max()) < 1e-10
    assert torch.allclose(plane.coords @ d, offsets, atol=1e-10)  # projections exact
    assert (plane.coords[0] <= 0).all()  # signed: x_0 sits at a <= 0, b <= 0
    # the larger spread (3 vs 0.5) is the first principal direction
    assert float(plane.coords[:, 0].std()) > float(plane.coords[:, 1].std())


def test_captured_fraction_and_off_plane_distance_are_exact():
    e, coords, offsets = known_plane_path(seed=5)
    gen = torch.Generator().manual_seed(6)
    noise = torch.randn(offsets.shape, dtype=F64, generator=gen)
    noise -= (noise @ e.T) @ e  # orthogonal to the plane
    noise *= 0.01
    noise[-1] = 0
    plane = sf.make_plane("known", offsets + noise, e[0], e[1])
    assert torch.allclose(plane.coords, coords, atol=1e-12)
    assert torch.allclose(plane.off_plane, noise.norm(dim=1), atol=1e-12)
    want = 1 - float((noise ** 2).sum()) / float(((offsets + noise) ** 2).sum())
    assert plane.captured_fraction == pytest.approx(want, rel=1e-12)
    skew = sf.make_plane("skew", offsets, e[0] + 2 * e[1], -e[0] + 0.5 * e[1])  # any basis: least squares
    assert torch.allclose(skew.coords @ torch.stack([e[0] + 2 * e[1], -e[0] + 0.5 * e[1]]), offsets, atol=1e-10)
    with pytest.raises(ValueError, match="linearly dependent"):
        sf.make_plane("bad", offsets, e[0], 2 * e[0])


def test_pca_ranges_cover_the_path_and_x_k():
    coords = torch.tensor([[-4.0, -1.0], [-2.0, 1.0], [0.0, 0.0]], dtype=F64)
    (a0, a1), (b0, b1) = sf.pca_ranges(coords, 0.25)
    assert (a0, a1) == pytest.approx((-5.0, 1.0)) and (b0, b1) == pytest.approx((-1.5, 1.5))
    line = torch.tensor([[-4.0, 0.0], [0.0, 0.0]], dtype=F64)  # a path along a line: b gets 5% of a's width
    (_, _), (b0, b1) = sf.pca_ranges(line, 0.0)
    assert (b0, b1) == pytest.approx((-0.1, 0.1))
    with pytest.raises(ValueError, match="nonzero offsets"):
        sf.pca_plane(torch.zeros(3, 4, dtype=F64))


# ----------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("raw, needle", [
    ({"grid": 1}, "grid must be an integer >= 2"),
    ({"planes": ["random", "random"]}, "distinct planes"),
    ({"planes": ["hessian"]}, "distinct planes"),
    ({"span_2d": 0}, "span_2d must be a number > 0"),
    ({"path_points": 1}, "path_points must be 'auto', 0"),
    ({"path_points": "many"}, "integer >= 0 or 'auto'"),
    ({"seeds": "some"}, "'all' or 'first'"),
    ({"gird": 3}, "unknown setting"),
])
def test_bad_settings_are_named(raw, needle):
    with pytest.raises(ValueError, match=needle):
        settings.surfaces_settings(raw)


def study(**surfaces):
    from conftest import make_study

    return make_study({"model": {"name": "logistic_regression"}, "dataset": {"name": "digits", "n_train": 200},
                       "steps": 10, "snapshot_every": 10, "seeds": [0, 1], "sweep": {"batch_size": [8, 16]},
                       "surfaces": surfaces})


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"experiments\.t\.surfaces.*'gird'.*grid"):
        study(gird=3)
    with pytest.raises(ConfigError, match=r"experiments\.t\.surfaces\.planes.*"):
        study(planes=["hessian"])
    with pytest.raises(ConfigError) as err:  # two checkpoints and no replay: no PCA plane
        study(path_points=0)
    assert "experiments.t.surfaces.planes" in str(err.value) and "path_points >= 3" in str(err.value)
    assert study(path_points=0, planes=["random"]).experiments["t"].raw["surfaces"]["path_points"] == 0


def test_seeds_first_keeps_one_run_per_point():
    exp = study(seeds="first").experiments["t"]
    assert [r.run for r in settings.surface_runs(exp)] == ["batch_size-8_seed-0", "batch_size-16_seed-0"]
    assert len(settings.surface_runs(study().experiments["t"])) == 4
    assert settings.surface_runs(study(enabled=False).experiments["t"]) == []


# ----------------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Logistic regression on digits, 12 steps, checkpoints every 4: surfaces on a path whose
    iterates between checkpoints the evaluate jobs (replay_segment) kept."""
    from conftest import make_study

    spec = make_study({"model": {"name": "logistic_regression"}, "dataset": {"name": "digits", "n_train": 200},
                       "batch_size": 16, "steps": 12, "snapshot_every": 4, "seeds": [0],
                       "optimizer": {"name": "sgd", "lr": 0.5}}).experiments["t"].runs[0]
    root = tmp_path_factory.mktemp("surf")
    results, ckpt = root / "results", root / "ckpt"
    settings = {"eval_samples": 100, "path_points": 7, "points_1d": 5, "span_1d": 0.5, "starts_1d": 2,
                "grid": 5}
    train.train_run(spec, ckpt)
    train.snapshot_and_select(spec, ckpt, ckpt / "minimizer.pt", results)
    kept = [replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, results, path_points=7)["path_iterates"]
            for j in range(spec.n_segments)]
    assert kept == [1, 1, 1]  # steps 2, 6, 10: the path's steps that are no checkpoint
    out = sf.surfaces_run(spec, ckpt, ckpt / "minimizer.pt", results, settings)
    return spec, results, ckpt, out


def subset_loss(spec, ckpt, state_or_flat):
    """The loss on the evaluation subset, computed directly (no landscope.measures.surfaces code)."""
    from landscope.measures.curvature import eval_subset
    from landscope.problem.build import build_problem

    problem = build_problem(spec)
    idx = eval_subset(len(problem.data), 100, 0)
    if isinstance(state_or_flat, dict):
        problem.model.load_state_dict(state_or_flat)
    else:
        torch.nn.utils.vector_to_parameters(state_or_flat.float(), problem.model.parameters())
    problem.model.eval()
    with torch.no_grad():
        return float(problem.loss_fn(problem.model, problem.model(problem.data.x[idx]), problem.data.y[idx])
                     .double().mean())


def test_trained_run_surfaces_match_direct_evaluations(trained):
    from landscope import store
    from landscope.trajectory.rundir import checkpoint_path, load_checkpoint

    spec, results, ckpt, out = trained
    assert out["path"] == 7 and out["max_drift"] == 0.0  # steps 0, 2, 4, 6, 8, 10, 12; replay bitwise
    con = store.connect(results)
    steps = [r[0] for r in con.sql("SELECT DISTINCT step FROM surface_path ORDER BY step").fetchall()]
    assert steps == [0, 2, 4, 6, 8, 10, 12]
    state = {s: load_checkpoint(checkpoint_path(ckpt, s))["model"] for s in (0, 4, 12)}
    line = dict(con.sql("SELECT t, loss FROM surface_1d WHERE start_step = 0").fetchall())
    assert sorted(line) == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert line[0.0] == pytest.approx(subset_loss(spec, ckpt, state[0]), rel=1e-6)
    assert line[1.0] == pytest.approx(subset_loss(spec, ckpt, state[12]), rel=1e-6)
    flat = {s: torch.cat([v.reshape(-1).double() for v in state[s].values()]) for s in state}
    assert line[0.5] == pytest.approx(subset_loss(spec, ckpt, 0.5 * (flat[0] + flat[12])), rel=1e-6)
    starts = [r[0] for r in con.sql("SELECT DISTINCT start_step FROM surface_1d ORDER BY 1").fetchall()]
    assert starts == [0, 6]  # x_0 and the middle of the path
    # the path: the replayed iterate at a checkpoint step has the checkpoint's loss; x_K sits at (0, 0)
    rows = {(r["plane"], r["step"]): r for r in con.sql("SELECT * FROM surface_path").pl().to_dicts()}
    assert rows[("pca", 4)]["loss"] == pytest.approx(subset_loss(spec, ckpt, state[4]), rel=1e-6)
    for plane in ("pca", "random"):
        k = rows[(plane, 12)]
        assert (k["a"], k["b"], k["off_plane"]) == (0.0, 0.0, 0.0) and k["loss_on_plane"] == k["loss"]
    pca = [r for (p, _), r in rows.items() if p == "pca"]
    # off-plane distances and the captured fraction agree: 1 - sum off^2 / sum ||x_k - x_K||^2
    dist2 = {s: float(((torch.cat([v.reshape(-1).double() for v in load_checkpoint(checkpoint_path(ckpt, s))
                                   ["model"].values()]) - flat[12]) ** 2).sum()) for s in (0, 4, 8, 12)}
    for s in (0, 4, 8):
        r = rows[("pca", s)]
        assert r["a"] ** 2 + r["b"] ** 2 + r["off_plane"] ** 2 == pytest.approx(dist2[s], rel=1e-6)
    assert 0.9 < pca[0]["captured_fraction"] <= 1.0 + 1e-12
    grid = con.sql("SELECT plane, count(*), min(a), max(a) FROM surface_2d GROUP BY 1 ORDER BY 1").fetchall()
    assert grid[0][:2] == ("pca", 25) and grid[1] == ("random", 25, -1.0, 1.0)
    centre = con.sql("SELECT loss FROM surface_2d WHERE plane = 'random' AND a = 0 AND b = 0").fetchall()[0][0]
    assert centre == pytest.approx(subset_loss(spec, ckpt, state[12]), rel=1e-6)


def test_surface_charts_and_page(trained, tmp_path):
    from landscope import store
    from landscope.report.page import surface_sections, write_experiment_report
    from landscope.report.surfaces import surface_charts

    spec, results, _, _ = trained
    con = store.connect(results)
    charts = surface_charts(con, "t")
    assert [s.heading for s in charts] == ["Loss from x_0 to x_K", "Loss from x_k to x_K",
                                           "Trajectory (PCA) plane", "Random plane"]
    assert all(s.chart is not None for s in charts)
    pca = charts[2].chart.to_dict()
    panel = pca["vconcat"][0]["hconcat"][0]
    datasets = pca["datasets"]
    heat = next(layer for layer in panel["layer"] if layer["mark"] in ("rect", {"type": "rect"}))
    assert len(datasets[heat["data"]["name"]]) == 25
    assert heat["encoding"]["color"]["scale"]["type"] == "log"
    assert "captured" in charts[2].caption
    assert surface_sections(con, "other") == []
    page = write_experiment_report(results, "t", tmp_path / "t.html").read_text()
    assert "Loss surfaces around x<sub>K</sub>" in page and "Random plane" in page


def test_surfaces_run_rejects_another_configuration(trained, spec_factory):
    spec, results, ckpt, _ = trained
    other = spec_factory(steps=12, snapshot_every=4, batch_size=8)
    with pytest.raises(ValueError, match="another training configuration"):
        sf.surfaces_run(other, ckpt, ckpt / "minimizer.pt", results, {})


def sgd_iterate(spec, ckpt, lo: int, step: int) -> dict:
    """x_step by hand: checkpoint ``lo``, then plain SGD (lr 0.5) on mean cross-entropy over the
    seeded batches (no landscope training code)."""
    from landscope.problem.build import batch_indices, build_problem

    problem = build_problem(spec)
    model = problem.model
    model.load_state_dict(rundir.load_checkpoint(rundir.checkpoint_path(ckpt, lo))["model"])
    for k in range(lo, step):
        idx = batch_indices(len(problem.data), spec.batch_size, spec.seed, k)
        loss = torch.nn.functional.cross_entropy(model(problem.data.x[idx]), problem.data.y[idx])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.5 * g
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_evaluate_keeps_the_path_iterates_surfaces_read(trained):
    """The iterates between checkpoints come from the evaluate jobs: x_k of the trajectory itself."""
    spec, _, ckpt, _ = trained
    states, drift = rundir.load_path_states(spec, ckpt, ckpt, [0, 2, 4, 6, 10], "cpu")
    assert sorted(states) == [0, 2, 4, 6, 10] and drift == 0.0
    for lo, step in ((0, 2), (4, 6), (8, 10)):
        want = sgd_iterate(spec, ckpt, lo, step)
        for name, value in want.items():
            assert torch.allclose(states[step][name], value, rtol=1e-5, atol=1e-7), (step, name)
    assert not torch.equal(states[2]["linear.weight"], states[0]["linear.weight"])
    # surfaces asking for iterates evaluate did not keep (path_points 5: step 3) are refused
    with pytest.raises(rundir.CheckpointError, match=r"not step 3.*re-run the evaluate rule"):
        sf.surfaces_run(spec, ckpt, ckpt / "minimizer.pt", ckpt.parent / "other-results", {"path_points": 5})


def test_a_diverged_run_keeps_the_iterates_before_the_divergence(tmp_path):
    """A run marked diverged in its last segment: evaluate measures nothing, but still keeps the
    iterates its surfaces need in the segments before (replayed, checked), none after."""
    from conftest import make_study

    from landscope.problem.build import build_problem

    spec = make_study({"model": {"name": "logistic_regression"}, "dataset": {"name": "digits", "n_train": 200},
                       "batch_size": 16, "steps": 12, "snapshot_every": 4, "seeds": [0],
                       "optimizer": {"name": "sgd", "lr": 0.5}}).experiments["t"].runs[0]
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    train.train_run(spec, ckpt)
    mark = rundir.mark_diverged(ckpt, 9, 2, spec.training_key())  # as if step 9 had a NaN loss
    manifest = train.finish_train(spec, build_problem(spec), ckpt, 0.0, mark)
    assert rundir.manifest_checkpoints(manifest) == [0, 4, 8]
    train.snapshot_and_select(spec, ckpt, ckpt / "minimizer.pt", results)
    kept = [replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, results, path_points="auto")
            for j in range(3)]
    assert [k["status"] for k in kept] == ["diverged"] * 3
    assert [k["path_iterates"] for k in kept] == [3, 3, 0]  # auto: 20 points over 0..8, i.e. every step
    out = sf.surfaces_run(spec, ckpt, ckpt / "minimizer.pt", results, {"eval_samples": 50, "grid": 3})
    assert out["path"] == 9 and out["max_drift"] == 0.0
    states, _ = rundir.load_path_states(spec, ckpt, ckpt, [7], "cpu")
    want = sgd_iterate(spec, ckpt, 4, 7)
    assert all(torch.allclose(states[7][k], v, rtol=1e-5, atol=1e-7) for k, v in want.items())


# ----------------------------------------------------------------------------------- the rule
@pytest.mark.slow
def test_surfaces_rule_through_snakemake(tmp_path):
    """The surfaces rule on a tiny study: tables queryable with `landscope sql`, panel on the page."""

    import yaml
    from conftest import landscope_sql, run_snakemake

    config = {"device": "cpu", "experiments": {"tiny": {
        "model": {"name": "mlp", "depth": 2, "width": 8}, "dataset": {"name": "digits", "n_train": 256},
        "optimizer": {"name": "sgd", "lr": 0.1}, "batch_size": 32, "steps": 30, "snapshot_every": 30,
        "seeds": [0, 1], "curvature": {"enabled": False},
        "surfaces": {"seeds": "first", "grid": 7, "points_1d": 9, "path_points": 6}}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path, tmp_path / "tiny.yaml")
    q = ("SELECT plane, count(*) AS n, count(DISTINCT run) AS runs FROM surface_2d "
         "GROUP BY plane ORDER BY plane")
    assert landscope_sql(tmp_path / "results", q) == [{"plane": "pca", "n": 49, "runs": 1}, {"plane": "random", "n": 49, "runs": 1}]
    page = (tmp_path / "reports" / "tiny.html").read_text()
    assert "Loss surfaces around x<sub>K</sub>" in page and "Trajectory (PCA) plane" in page
    assert (tmp_path / "results/benchmarks/surfaces/tiny/seed-0.tsv").is_file()
    assert not (tmp_path / "results/tables/surface_2d/experiment=tiny/run=seed-1").exists()
