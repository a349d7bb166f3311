"""Your own training loop (landscope.Recorder): recorded runs replay exactly and measure what
landscope's own training of the same trajectory measures; misuse is refused with a clear message."""

import json
import math
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import PYTHON, ROOT, landscope_sql, make_study, run_pipeline, run_snakemake

from landscope.trajectory import replay, rundir, train

EXP = {"model": {"name": "mlp", "width": 16, "depth": 2}, "dataset": {"name": "digits", "n_train": 256},
       "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9}, "batch_size": 16, "steps": 24,
       "snapshot_every": 8, "seeds": [3], "directions_every": 4}


def _specs():
    trained = make_study(EXP).experiments["t"].runs[0]
    recorded = make_study({**EXP, "source": "recorded"}).experiments["t"].runs[0]
    return trained, recorded


def _measure_recorded(spec, results):
    """What the pipeline does with a recorded run: import, snapshot, x_K, replay every segment."""
    ckpt = rundir.training_dir(results, spec)
    train.finish_recording(spec, ckpt)
    train.snapshot_and_select(spec, ckpt, ckpt / "minimizer.pt", results)
    drifts = [replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, results)["drift"]
              for j in range(spec.n_segments)]
    return ckpt, drifts


def _table(results, table, spec, part=None):
    d = results / "tables" / table / f"experiment={spec.experiment}" / f"run={spec.run}"
    parts = sorted(d.glob("part-*.parquet")) if part is None else [d / f"part-{part:05d}.parquet"]
    rows = {}
    for p in parts:
        for k, v in pq.read_table(p).to_pydict().items():
            rows.setdefault(k, []).extend(v)
    nan = "NaN"  # NaN != NaN: compare it as a marker (cos_angle at x_K itself)
    return {k: [nan if isinstance(x, float) and math.isnan(x) else x for x in v]
            for k, v in rows.items() if not k.endswith("wall_s")}


def _fresh(spec):
    """The user's model and optimizer, initialised as landscope's own training would."""
    from landscope.problem.data import load_dataset
    from landscope.problem.models import build_model

    data = load_dataset(spec.dataset, spec.data_dir)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, int(data.x[0].numel()), 10)
    return model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)


def test_a_recorded_loop_measures_exactly_what_landscope_training_measures(tmp_path):
    from landscope import Recorder
    from landscope.problem.build import batch_indices
    from landscope.trajectory.rundir import checkpoint_path, load_checkpoint

    trained, spec = _specs()
    res_t, ckpt_t, drift_t = run_pipeline(trained, tmp_path / "own")
    # the user's loop: landscope's batch order, written out by hand
    model, opt = _fresh(spec)
    res_r = tmp_path / "mine" / "results"
    with Recorder(spec, model=model, optimizer=opt, results=res_r) as rec:
        x, y = rec.data.x, rec.data.y
        for k in range(spec.steps):
            idx = batch_indices(len(x), spec.batch_size, spec.seed, k)
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx], reduction="none").mean()
            loss.backward()
            opt.step()
            rec.step(idx, loss)
    ckpt_r, drift_r = _measure_recorded(spec, res_r)
    assert drift_r == drift_t == [0.0, 0.0, 0.0]
    for s in spec.checkpoint_steps:  # the same trajectory: parameters and momentum buffers bitwise
        a = load_checkpoint(checkpoint_path(ckpt_t, s))
        b = load_checkpoint(checkpoint_path(ckpt_r, s))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
                                              for i in sa if sa[i].get("momentum_buffer") is not None)
    for table in ("train", "snapshots", "minimizers", "steps", "directions", "drift"):
        assert _table(res_r, table, spec) == _table(res_t, table, trained), table
    runs_t, runs_r = _table(res_t, "runs", trained), _table(res_r, "runs", spec)
    hashes = ("config_hash", "training_key")
    assert {k: v for k, v in runs_r.items() if k not in hashes} == {k: v for k, v in runs_t.items() if k not in hashes}
    for k in hashes:  # source: recorded is part of the configuration, and a recorded trajectory is never shared
        assert runs_r[k] != runs_t[k]
    manifest = json.loads((ckpt_r / "manifest.json").read_text())
    assert manifest["spec"]["source"] == "recorded" and len(manifest["checkpoints"]) == 4


def test_a_torch_scheduler_and_dataloader_order_are_replayed(tmp_path):
    from landscope import Recorder
    from landscope.trajectory.rundir import load_recording

    _, spec = _specs()
    model, opt = _fresh(spec)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    used = []
    with Recorder(spec, model=model, optimizer=opt, results=tmp_path / "results") as rec:
        x, y = rec.data.x, rec.data.y
        order = torch.utils.data.DataLoader(range(len(x)), batch_size=16, shuffle=True,
                                            generator=torch.Generator().manual_seed(0))
        batches = [b for _ in range(2) for b in order][:spec.steps]  # 16 batches per epoch
        for idx in batches:
            used.append(opt.param_groups[0]["lr"])
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            rec.step(idx, loss)
    ckpt, drifts = _measure_recorded(spec, tmp_path / "results")
    assert drifts == [0.0, 0.0, 0.0]
    assert used == [0.2 * 0.5 ** (k // 5) for k in range(spec.steps)]
    steps = _table(tmp_path / "results", "steps", spec)
    train = _table(tmp_path / "results", "train", spec)
    assert steps["lr"] == train["lr"] == used
    # the replay recomputes each recorded batch's loss (F.cross_entropy's mean may differ in the last bit)
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(steps["batch_loss"], train["batch_loss"]))
    assert train["epoch"] == [0] * 16 + [1] * 8
    rec_ = load_recording(ckpt, spec)
    assert all(torch.equal(rec_.batch(k), batches[k]) for k in range(spec.steps))
    # curvature compares lambda_max with 2/lr: the loop's learning rates, not the config's constant one
    from landscope.measures.curvature import curvature_run

    cheap = make_study({**EXP, "curvature": {"eval_samples": 32, "lanczos_iters": 4, "hutchinson_probes": 2,
                                             "slq_probes": 1, "flatness_directions": 1, "llc_steps": 5,
                                             "llc_chains": 1}}).experiments["t"].raw["curvature"]
    curvature_run(spec, ckpt, ckpt / "minimizer.pt", tmp_path / "results", cheap)
    curv = _table(tmp_path / "results", "curvature", spec)
    assert curv["step"] == [0, 8, 16, 24]
    assert curv["lr"] == [used[0], used[8], used[16], used[23]]  # the last checkpoint: the last step's
    assert not torch.equal(batches[0], batches[16])  # a new permutation in the second epoch


def test_a_loop_doing_something_the_config_does_not_say_fails_the_replay(tmp_path):
    from landscope import Recorder
    from landscope.problem.build import batch_indices
    from landscope.trajectory.replay import ReplayDriftError

    _, spec = _specs()
    model, opt = _fresh(spec)
    with Recorder(spec, model=model, optimizer=opt, results=tmp_path / "results") as rec:
        for k in range(spec.steps):
            idx = batch_indices(len(rec.data), spec.batch_size, spec.seed, k)
            loss = F.cross_entropy(model(rec.data.x[idx]), rec.data.y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)  # not in the config: caught
            opt.step()
            rec.step(idx, loss)
    with pytest.raises(ReplayDriftError, match="segment 0"):
        _measure_recorded(spec, tmp_path / "results")


def test_misuse_is_refused_with_the_fix(tmp_path):
    from landscope import Recorder
    from landscope.factories import ConfigError
    from landscope.problem.models import build_model
    from landscope.trajectory.rundir import RecordingError

    trained, spec = _specs()
    res = tmp_path / "results"
    model, _ = _fresh(spec)
    with pytest.raises(RecordingError, match=r"momentum: yours 0\.5, config 0\.9"):
        Recorder(spec, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5), results=res)
    with pytest.raises(RecordingError, match="torch.optim.adam.Adam.*config says optimizer"):
        Recorder(spec, model=model, optimizer=torch.optim.Adam(model.parameters()), results=res)
    other = build_model({"name": "mlp", "width": 8, "depth": 2}, 64, 10)
    with pytest.raises(RecordingError, match=r"\(64, 8\).*\(64, 16\)|\(8, 64\).*\(16, 64\)"):
        Recorder(spec, model=other, optimizer=torch.optim.SGD(other.parameters(), lr=0.2, momentum=0.9), results=res)
    with pytest.raises(ConfigError, match="source: train.*source: recorded"):
        Recorder(trained, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    rec = Recorder(spec, model=model, optimizer=opt, results=res)
    with pytest.raises(RecordingError, match=r"exactly one optimizer.step\(\).*0 happened"):
        rec.step([0, 1], 1.0)
    opt.step()
    with pytest.raises(RecordingError, match=r"indices must lie in 0\.\.255"):
        rec.step([0] * 15 + [256], 1.0)
    opt.step()
    with pytest.raises(RecordingError, match="9 samples, but the experiment has batch_size: 16.*drop_last"):
        rec.step(list(range(9)), 1.0)
    opt.step()
    rec.step(list(range(16)), 1.0)
    with pytest.raises(RecordingError, match="recorded 1 steps, but the experiment has steps: 24"):
        rec.close()
    assert not (rec.ckpt_dir / "recording.json").exists()  # nothing for the pipeline to pick up


def test_a_recorded_run_without_its_recording_says_how_to_make_it(tmp_path):
    from landscope.problem.build import build_problem
    from landscope.trajectory.rundir import CheckpointError
    from landscope.trajectory.train import finish_recording

    _, spec = _specs()
    with pytest.raises(CheckpointError, match="run your training loop with landscope.Recorder first"):
        finish_recording(spec, tmp_path / "ckpt")
    # built without its recording, the run has a model but no batch order: a replay must attach it
    problem = build_problem(spec)
    assert problem.n_params == 64 * 16 + 16 + 16 * 10 + 10
    with pytest.raises(RuntimeError, match=r"t/seed-3 has source: recorded.*attach_recording"):
        problem.batch(0)
    with pytest.raises(CheckpointError, match="run your training loop with landscope.Recorder first"):
        replay.attach_recording(problem, tmp_path / "ckpt")


@pytest.mark.slow
def test_own_loop_example_through_the_pipeline(tmp_path):
    """README 'Your own training loop': the example script, then snakemake, then the report."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cfg = yaml.safe_load((ROOT / "examples" / "own_loop.yaml").read_text())
    cfg["experiments"]["own_loop"].update(steps=64, snapshot_every=32, directions_every=16)
    (tmp_path / "examples" / "own_loop.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([PYTHON, "examples/own_loop.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_snakemake(tmp_path, "examples/own_loop.yaml", cwd=tmp_path)
    assert (tmp_path / "reports" / "own_loop.html").stat().st_size > 10_000
    q = ("SELECT t.run, max(d.max_abs_drift) AS drift, count(DISTINCT t.step) AS steps, "
         "max(abs(t.lr - s.lr)) AS lr_diff, max(abs(t.batch_loss - s.batch_loss) / t.batch_loss) AS loss_rel, "
         "max(abs(t.lr - 0.05 * (1 + cos(pi() * t.step / 64)))) AS cosine_diff "
         "FROM train t JOIN steps s USING (experiment, run, step) JOIN drift d USING (experiment, run) "
         "GROUP BY ALL ORDER BY ALL")
    rows = landscope_sql(tmp_path / "results", q)
    assert [r["run"] for r in rows] == ["seed-0", "seed-1"]
    for r in rows:
        assert r["drift"] == 0.0 and r["steps"] == 64 and r["lr_diff"] == 0.0
        assert r["loss_rel"] < 1e-6  # the replay's recomputed batch losses equal the loop's own
        assert r["cosine_diff"] < 1e-12  # torch's CosineAnnealingLR, lr 0.1, recorded as used
