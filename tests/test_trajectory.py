"""Training, checkpoints, replay: exact T quantities, bitwise replay, resume after SIGKILL."""

import dataclasses
import json
import math
import signal
import subprocess
import textwrap
import time

import numpy as np
import polars as pl
import pytest
import torch
from conftest import EXPLODING_MODULE, PYTHON, ROOT, run_pipeline
from scipy.special import expit

from landscope.problem import build
from landscope.problem.data import digits, halfspace_sample_min
from landscope.trajectory import replay, rundir, train


def read(results, table):
    return pl.read_parquet(f"{results}/tables/{table}/experiment=t/run=seed-0/*.parquet").sort("step")


def _softmax_loss_grad(W, b, X, y):
    """Closed form for multinomial logistic regression: mean loss and gradient (float64)."""
    z = X @ W.T + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    r = p.copy()
    r[np.arange(len(y)), y] -= 1.0
    return loss, r.T @ X / len(y), r.mean(0)


def test_t_quantities_match_closed_form_logistic_regression(tmp_path, spec_factory):
    spec = spec_factory(steps=12, snapshot_every=1)  # a checkpoint at every step: x_k is known
    results, ckpt, drifts = run_pipeline(spec, tmp_path)
    assert drifts == [0.0] * 12
    steps = read(results, "steps")
    assert steps["step"].to_list() == list(range(12))
    data = digits(n_train=200)
    X, Y = data.x.double().numpy(), data.y.numpy()
    final = rundir.load_checkpoint(rundir.checkpoint_path(ckpt, 12))["model"]
    WK, bK = final["linear.weight"].double().numpy(), final["linear.bias"].double().numpy()
    for k, row in zip(range(12), steps.iter_rows(named=True)):
        st = rundir.load_checkpoint(rundir.checkpoint_path(ckpt, k))["model"]
        W, b = st["linear.weight"].double().numpy(), st["linear.bias"].double().numpy()
        idx = build.batch_indices(200, 16, 0, k).numpy()
        loss, gW, gb = _softmax_loss_grad(W, b, X[idx], Y[idx])
        lossK, _, _ = _softmax_loss_grad(WK, bK, X[idx], Y[idx])
        dot = (gW * (W - WK)).sum() + (gb * (b - bK)).sum()
        dist = np.sqrt(((W - WK) ** 2).sum() + ((b - bK) ** 2).sum())
        gnorm = np.sqrt((gW**2).sum() + (gb**2).sum())
        assert row["batch_loss"] == pytest.approx(loss, rel=1e-5)
        assert row["batch_loss_at_min"] == pytest.approx(lossK, rel=1e-5)
        assert row["grad_dot_dir"] == pytest.approx(dot, rel=1e-4, abs=1e-6)
        assert row["grad_norm"] == pytest.approx(gnorm, rel=1e-5)
        assert row["dist_to_min"] == pytest.approx(dist, rel=1e-5, abs=1e-7)
        assert row["batch_loss_star"] == 0.0
    # the last step's direction is x_11 - x_12: nonzero; the full-batch rows cover all 13 checkpoints
    directions = read(results, "directions")
    assert directions["step"].to_list() == list(range(13))
    last = directions.filter(pl.col("step") == 12).row(0, named=True)
    assert last["dist_to_min"] == 0.0 and last["full_grad_dot_dir"] == 0.0


def test_replay_is_bitwise_and_drift_is_caught(tmp_path, spec_factory):
    spec = spec_factory(model={"name": "mlp", "width": 16}, steps=30, snapshot_every=10,
                        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    results, ckpt, drifts = run_pipeline(spec, tmp_path)
    assert drifts == [0.0, 0.0, 0.0]
    # replayed training losses are the recorded ones, bit for bit
    train, steps = read(results, "train"), read(results, "steps")
    assert np.array_equal(train["batch_loss"].to_numpy(), steps["batch_loss"].to_numpy())
    # tamper with checkpoint 20 (and re-sign it so only the drift check can notice)
    path = rundir.checkpoint_path(ckpt, 20)
    state = torch.load(path, weights_only=True)
    state["model"]["net.0.weight"][0, 0] += 1e-3
    torch.save(state, path)
    side = json.loads(path.with_suffix(".json").read_text())
    side["sha256"] = rundir.file_sha256(path)
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(replay.ReplayDriftError, match=r"t/seed-0 segment 1 .*step=20.*1\.0+e-03"):
        replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", 1, results)


def test_corrupted_checkpoint_is_detected(tmp_path, spec_factory):
    spec = spec_factory()
    results, ckpt, _ = run_pipeline(spec, tmp_path)
    path = rundir.checkpoint_path(ckpt, 4)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(rundir.CheckpointError, match="corrupted"):
        replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", 1, results)
    # training notices too, and recomputes from the last good checkpoint before it
    assert not rundir.checkpoint_valid(path, spec.training_key())
    train.train_run(spec, ckpt)
    assert rundir.checkpoint_valid(path, spec.training_key())


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, spec_factory):
    spec = spec_factory(model={"name": "mlp", "width": 256}, dataset={"name": "digits"},
                        batch_size=64, steps=1200, snapshot_every=100,
                        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        from landscope.spec import RunSpec
        from landscope.trajectory.train import train_run
        spec = RunSpec.from_dict(json.loads(sys.argv[1]))
        train_run(spec, sys.argv[2])
    """))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([PYTHON, str(script), json.dumps(spec.to_dict()), str(killed / "ckpt")], cwd=ROOT)
    deadline = time.time() + 120
    target = rundir.checkpoint_path(killed / "ckpt", 300)
    while not target.with_suffix(".json").exists():
        assert proc.poll() is None, "training finished before it could be killed; make it longer"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "ckpt" / "manifest.json").exists()
    done_before = [s for s in spec.checkpoint_steps if rundir.checkpoint_path(killed / "ckpt", s).exists()]
    assert 300 in done_before and 1200 not in done_before
    manifest = train.train_run(spec, killed / "ckpt")  # resumes
    clean = tmp_path / "clean"
    train.train_run(spec, clean / "ckpt")
    a = torch.load(rundir.checkpoint_path(killed / "ckpt", 1200), weights_only=True)
    b = torch.load(rundir.checkpoint_path(clean / "ckpt", 1200), weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    ta, tb = (pl.DataFrame(rundir.read_train_rows(d / "ckpt", spec.n_segments)) for d in (killed, clean))
    assert ta.equals(tb) and len(ta) == 1200
    assert manifest["checkpoints"][-1]["step"] == 1200


def test_batches_cover_each_epoch_once():
    seen = torch.cat([build.batch_indices(100, 10, 7, k) for k in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    again = torch.cat([build.batch_indices(100, 10, 7, k) for k in range(10)])
    assert torch.equal(seen, again)
    other_epoch = torch.cat([build.batch_indices(100, 10, 7, k) for k in range(10, 20)])
    assert not torch.equal(seen, other_epoch)


def test_halfspace_sample_minimum_matches_dense_search():
    norm_a, l2 = 1.7, 1e-5
    s = np.linspace(0, 4000, 4_000_001)
    dense = (expit(-s * norm_a) + 0.5 * l2 * s**2).min()
    assert halfspace_sample_min(norm_a, l2) == pytest.approx(dense, rel=1e-6)


def test_best_minimizer_is_the_lowest_full_loss_checkpoint(tmp_path, spec_factory):

    # a large step size makes the loss oscillate, so the best checkpoint need not be the last
    spec = spec_factory(model={"name": "mlp", "width": 16}, steps=40, snapshot_every=5,
                        optimizer={"name": "sgd", "lr": 2.0}, minimizer="best")
    results, ckpt, _ = run_pipeline(spec, tmp_path)
    snaps = read(results, "snapshots")
    best = snaps.sort(["full_loss", "step"], descending=[False, True]).row(0, named=True)
    chosen = pl.read_parquet(f"{results}/tables/minimizers/experiment=t/run=seed-0/*.parquet").row(0, named=True)
    assert chosen["method"] == "best" and chosen["step"] == best["step"]
    assert chosen["full_loss"] == min(snaps["full_loss"])
    xk = torch.load(ckpt / "minimizer.pt", weights_only=True)["model"]
    ref = rundir.load_checkpoint(rundir.checkpoint_path(ckpt, best["step"]))["model"]
    assert all(torch.equal(xk[k], ref[k]) for k in ref)
    # the distance to x_K vanishes exactly at the chosen checkpoint
    d = read(results, "directions").filter(pl.col("dist_to_min") == 0.0)["step"].to_list()
    assert d == [best["step"]]


BN_MODULE = '''
import torch
from torch import nn


def make(in_features, n_classes, width=16, **_):
    return nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(width, n_classes))
'''


def test_batchnorm_and_dropout_measurement_semantics(tmp_path, spec_factory, monkeypatch):
    """Measured losses: dropout off, batch-norm on the batch's own statistics, running stats untouched;
    the trajectory (with dropout on) is still replayed bit for bit."""
    (tmp_path / "bnmodel.py").write_text(BN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = spec_factory(model={"name": "bnmodel:make"}, steps=6, snapshot_every=1,
                        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    results, ckpt, drifts = run_pipeline(spec, tmp_path / "run")
    assert drifts == [0.0] * 6
    steps = read(results, "steps")
    data = digits(n_train=200)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Linear(16, 10))
    final = rundir.load_checkpoint(rundir.checkpoint_path(ckpt, 6))["model"]
    for k, row in enumerate(steps.iter_rows(named=True)):
        idx = build.batch_indices(200, 16, 0, k)
        xb, yb = data.x[idx], data.y[idx]
        expected = []
        for state in (rundir.load_checkpoint(rundir.checkpoint_path(ckpt, k))["model"], final):
            model.load_state_dict(state)
            model.train()
            model[3].eval()  # dropout off
            with torch.no_grad():
                expected.append(torch.nn.functional.cross_entropy(model(xb), yb).item())
        assert row["batch_loss"] == pytest.approx(expected[0], rel=1e-6)
        assert row["batch_loss_at_min"] == pytest.approx(expected[1], rel=1e-6)
    # the training loss (dropout on) differs from the measured one, as it should
    train = read(results, "train")
    assert not np.allclose(train["batch_loss"].to_numpy(), steps["batch_loss"].to_numpy())


BN_ONLY_MODULE = BN_MODULE.replace("nn.Dropout(0.5), ", "").replace("def make(", "def make_bn_only(")


def test_batchnorm_without_dropout_reuses_the_training_forward(tmp_path, spec_factory, monkeypatch):
    """Without dropout the replay measures with the training forward itself: the same numbers as a
    separate batch-statistics forward at x_k and x_K, and exactly the training loss."""
    (tmp_path / "bnonly.py").write_text(BN_ONLY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = spec_factory(model={"name": "bnonly:make_bn_only"}, steps=6, snapshot_every=3,
                        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    results, ckpt, drifts = run_pipeline(spec, tmp_path / "run")
    assert drifts == [0.0, 0.0]
    steps, train = read(results, "steps"), read(results, "train")
    assert steps["batch_loss"].to_list() == train["batch_loss"].to_list()
    data = digits(n_train=200)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 10))
    final = rundir.load_checkpoint(rundir.checkpoint_path(ckpt, 6))["model"]
    model.load_state_dict(final)
    w_k = [p.detach().clone() for p in model.parameters()]
    model.train()
    for k in (0, 3):  # checkpoints: x_k known exactly
        row = steps.row(k, named=True)
        idx = build.batch_indices(200, 16, 0, k)
        xb, yb = data.x[idx], data.y[idx]
        model.load_state_dict(final)
        with torch.no_grad():
            at_min = torch.nn.functional.cross_entropy(model(xb), yb).item()
        model.load_state_dict(rundir.load_checkpoint(rundir.checkpoint_path(ckpt, k))["model"])
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        dot = sum(float((g.double() * (p.detach().double() - q.double())).sum())
                  for g, p, q in zip(grads, model.parameters(), w_k))
        assert row["batch_loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert row["batch_loss_at_min"] == pytest.approx(at_min, rel=1e-6)
        assert row["grad_dot_dir"] == pytest.approx(dot, rel=1e-5)


def test_tail_average_minimizer(tmp_path, spec_factory):
    spec = spec_factory(steps=40, snapshot_every=5, minimizer="tail_average")
    results, ckpt, drifts = run_pipeline(spec, tmp_path)
    assert drifts == [0.0] * 8
    xk = torch.load(ckpt / "minimizer.pt", weights_only=True)
    assert xk["averaged_steps"] == [30, 35, 40]  # the last quarter of 40 steps
    states = [rundir.load_checkpoint(rundir.checkpoint_path(ckpt, s))["model"] for s in (30, 35, 40)]
    mean_w = (states[0]["linear.weight"].double() + states[1]["linear.weight"].double()
              + states[2]["linear.weight"].double()) / 3
    assert torch.allclose(xk["model"]["linear.weight"].double(), mean_w, atol=1e-7)
    # f(x_K) recorded by the replay is the full loss at the averaged point, not at any checkpoint
    d = read(results, "directions")
    assert (d["dist_to_min"] > 0).all()
    other = dataclasses.replace(spec, minimizer="median")
    with pytest.raises(ValueError, match="unknown minimizer method 'median'; use last, best, tail_average or projection"):
        train.finish_run(other, ckpt, tmp_path / "m.pt", results)


def test_divergence_marks_the_run_and_the_rest_goes_on(tmp_path, spec_factory, monkeypatch):
    import glob

    from landscope.measures import conditions
    from landscope.spec import ExperimentSpec

    (tmp_path / "exploding.py").write_text(EXPLODING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = spec_factory(model={"name": "exploding:make"}, steps=40, snapshot_every=10,
                        optimizer={"name": "sgd", "lr": 50.0})
    results, ckpt, drifts = run_pipeline(spec, tmp_path / "run")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    train_rows = read(results, "train")
    bad = train_rows.filter(~pl.col("batch_loss").is_finite())
    assert manifest["status"] == "diverged" and len(bad) == 1
    first_bad = bad["step"][0]
    assert manifest["diverged_step"] == first_bad and train_rows["step"].max() == first_bad
    assert [c["step"] for c in manifest["checkpoints"]] == [s for s in (0, 10, 20, 30) if s <= first_bad]
    runs = pl.read_parquet(f"{results}/tables/runs/experiment=t/run=seed-0/*.parquet").row(0, named=True)
    assert runs["status"] == "diverged" and runs["diverged_step"] == first_bad
    assert len(read(results, "steps")) == 0  # every segment part exists and is empty
    # conditions: no verdict for a point whose only run diverged
    g = lambda t: sorted(glob.glob(f"{results}/tables/{t}/experiment=t/*/*.parquet"))
    exp = ExperimentSpec(name="t", title="t", runs=[spec], conditions={"margin": 0.1, "pl_delta": 2.0,
                                                                       "grid_size": 5, "alpha_max": "auto"})
    out = conditions.experiment_conditions(exp, results, g("steps"), g("directions"), g("drift"))
    row = out["points"][0]
    assert row["feasible"] is False and row["n_runs"] == 0 and math.isnan(row["alpha_min"])
    # re-running training is a no-op that keeps the verdict
    again = train.train_run(spec, ckpt)
    assert again["status"] == "diverged" and again["diverged_step"] == first_bad


def test_directions_between_checkpoints_equal_those_at_checkpoints(spec_factory, tmp_path):
    """directions_every=2 with checkpoints every 4 gives the same full-batch rows as checkpoints every 2."""
    import polars as pl

    fine = spec_factory(snapshot_every=4, directions_every=2)
    coarse = spec_factory(snapshot_every=2)
    rows = {}
    for name, spec in (("fine", fine), ("coarse", coarse)):
        results, _, drifts = run_pipeline(spec, tmp_path / name)
        assert drifts == [0.0] * spec.n_segments
        rows[name] = pl.read_parquet(results / "tables/directions/**/*.parquet").sort("step")
    assert rows["fine"]["step"].to_list() == list(range(0, 13, 2)) == rows["coarse"]["step"].to_list()
    for col in ("full_loss", "full_loss_at_min", "full_grad_norm", "full_grad_dot_dir", "cos_angle", "aiming_coef"):
        a, b = rows["fine"][col].to_numpy(), rows["coarse"][col].to_numpy()
        assert np.allclose(a, b, rtol=1e-12, atol=1e-15, equal_nan=True), col


def test_rows_at_checkpoints_reuse_the_snapshot_jobs_gradients_bit_for_bit(tmp_path, spec_factory, monkeypatch):
    """The snapshot job saves f and its full-batch gradient at each checkpoint; the replay's full-batch rows at
    checkpoints read them (no forward or backward), and the rows are identical to those computed afresh, with
    batch-norm buffers too. A saved gradient that belongs to another checkpoint file is not used."""
    (tmp_path / "bnonly.py").write_text(BN_ONLY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = spec_factory(model={"name": "bnonly:make_bn_only"}, steps=6, snapshot_every=3, directions_every=2,
                        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    results, ckpt, drifts = run_pipeline(spec, tmp_path / "run")
    assert drifts == [0.0, 0.0]
    key = spec.training_key()
    snaps = pl.read_parquet(rundir.snapshots_path(ckpt)).sort("step")
    for step, f in zip(snaps["step"], snaps["full_loss"]):
        saved = rundir.load_full_grad(ckpt, step, key)
        assert saved is not None and saved[0] == f
    computed_rows = []
    real = replay.direction_row

    def counting(problem, model_k, step, f_k=None, full=None):
        computed_rows.append((step, full is None))
        return real(problem, model_k, step, f_k, full)

    monkeypatch.setattr(replay, "direction_row", counting)
    reused = results / "reused"
    for j in range(spec.n_segments):
        replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, reused)
    # checkpoints 0, 3, 6 reuse; 2 and 5 (every 2 steps from each segment's start) are computed
    assert sorted(computed_rows) == [(0, False), (2, True), (3, False), (5, True), (6, False)]
    for p in ckpt.glob("full-grad-step=*"):
        p.unlink()
    fresh = results / "fresh"
    for j in range(spec.n_segments):
        replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, fresh)
    a, b = (pl.read_parquet(r / "tables/directions/**/*.parquet").sort("step") for r in (reused, fresh))
    assert a["step"].to_list() == [0, 2, 3, 5, 6]
    assert a.drop("created_at", strict=False).equals(b.drop("created_at", strict=False))

    # another checkpoint file at step 3 (its SHA-256 changed): the saved gradient is not its own
    train.snapshot_and_select(spec, ckpt, ckpt / "minimizer.pt", results / "again")
    assert rundir.load_full_grad(ckpt, 3, key) is not None
    state = rundir.load_checkpoint(rundir.checkpoint_path(ckpt, 3))
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    rundir.write_with_sidecar(rundir.checkpoint_path(ckpt, 3), {**state, "note": "rewritten"},
                              rundir.read_sidecar(rundir.checkpoint_path(ckpt, 3)))
    assert rundir.load_full_grad(ckpt, 3, key) is None and rundir.load_full_grad(ckpt, 0, key) is not None
