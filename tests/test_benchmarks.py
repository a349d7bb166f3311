"""The benchmark suite (benchmarks/run.py) and the correctness its fast paths rely on: the bare loop
and landscope's training end at the same parameters, the hull heatmap equals a brute-force DuckDB
grid, the batched f_{i_k}(x_K) equals the per-step one (and falls back when batching would change
it), batch-norm measurement writes no buffer, and the per-rule split of Snakemake benchmark files.
No timing is asserted: timings go in the JSON, figures are checked to be finite and positive."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
from conftest import PYTHON, ROOT, run_pipeline

from landscope.problem import build, evaluate
from landscope.trajectory import replay, rundir, train

sys.path.insert(0, str(ROOT / "benchmarks"))
import run as bench


def run_bench(tmp_path, *args, timeout=600):
    out = tmp_path / "results.json"
    proc = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def fake_study(root, jobs):
    """results/benchmarks/<rule>/<i>.tsv as Snakemake writes them, each ending at a given time."""
    for i, (rule, s, rss, end) in enumerate(jobs):
        f = root / "benchmarks" / rule / "x" / f"{i}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{s}\n")
        os.utime(f, (end, end))


JOBS = [("train", 10.0, 300.0, 1010.0), ("train", 30.0, 500.0, 1030.0),  # 1000-1010, 1000-1030
        ("evaluate", 20.0, 400.0, 1050.0),  # 1030-1050
        ("report", 5.0, 200.0, 1105.0)]  # 1100-1105: a gap of 50 s is not busy time


@pytest.mark.slow  # ~40 s idle, ~75 s on the loaded 2-core machine
def test_every_item_runs_quick_and_gives_finite_positive_figures(tmp_path):
    fake_study(tmp_path / "study", JOBS)
    got, printed = run_bench(tmp_path, "--repeats", "1", "--study-results", str(tmp_path / "study"))
    rows = got["rows"]
    assert {r["item"] for r in rows} == set("abcdef")
    assert not [r for r in rows if "error" in r or "skipped" in r]
    for r in rows:
        for k in ("measured", "baseline", "ratio"):
            assert math.isfinite(r[k]) and r[k] > 0, (r["name"], k, r[k])
        assert r["met"] in (None, True, False)
    whole_runs = [r for r in rows if r["item"] == "a" and "identical_parameters" in r]
    assert whole_runs and all(r["identical_parameters"] for r in whole_runs)
    c = next(r for r in rows if r["item"] == "c")
    assert c["max_abs_difference"] <= 1e-9 and c["hull_points"] >= 3
    e = next(r for r in rows if r["item"] == "e")
    assert e["measured"] == int(e["measured"]) and e["lambda_max"] > 0
    assert {"a", "b", "c", "e", "f"} <= {line.split()[0] for line in printed.splitlines() if line[:1] in "abcdef"}


def test_study_split_by_rule_from_benchmark_files(tmp_path):
    fake_study(tmp_path, JOBS)
    args = type("A", (), {"study_results": str(tmp_path)})
    rows = {r["name"].split(":")[0]: r for r in bench.bench_d(args)}
    total = 65.0
    assert rows["rule train"]["measured"] == 40.0 and rows["rule train"]["jobs"] == 2
    assert rows["rule train"]["mean_s"] == 20.0 and rows["rule train"]["max_rss_mb"] == 500.0
    assert rows["rule evaluate"]["share"] == pytest.approx(20.0 / total)
    assert rows["rule report"]["baseline"] == total
    busy = next(r for n, r in rows.items() if n.startswith("busy"))
    assert busy["measured"] == pytest.approx(55.0)  # 1000..1050 and 1100..1105


def test_no_study_says_how_to_run_one(tmp_path):
    args = type("A", (), {"study_results": str(tmp_path)})
    (row,) = bench.bench_d(args)
    assert "snakemake --cores all" in row["skipped"]


def test_bare_loop_and_instrumented_training_end_at_the_same_parameters(tmp_path):
    spec = bench.run_spec({"name": "mlp", "width": 16, "depth": 3}, 25)
    bare = bench.bare_train(spec)
    train.train_run(spec, tmp_path / "ck")
    final = rundir.load_checkpoint(rundir.checkpoint_path(tmp_path / "ck", 25))["model"]
    assert all(torch.equal(v, final[k]) for k, v in bare.state_dict().items())


def test_hull_heatmap_equals_brute_force_duckdb_grid():
    import duckdb
    import pyarrow as pa
    from conditions_bench import make_rows

    from landscope.measures import conditions as C

    rows = make_rows(3000, seed=4)
    u = (rows["batch_loss"].to_numpy() - rows["batch_loss_at_min"].to_numpy())
    v = rows["batch_loss"].to_numpy() - rows["batch_loss_star"].to_numpy()
    a = rows["grad_dot_dir"].to_numpy()
    reg = C.analyze_region(u, v, a, margin=0.1, alpha_max=5.0)
    A, B, T, valid = C.grid(u, v, a, reg, 7, 0.1)
    con = duckdb.connect()
    con.register("s", pa.table({"u": u, "v": v, "a": a}))
    brute = con.sql("""SELECT i * 5.0 / 6 AS alpha, j * 5.0 / 6 AS beta, min(a - alpha * u + beta * v) AS t
                       FROM range(7) x(i), range(7) y(j), s GROUP BY ALL""").fetchall()
    expected = {(round(al, 9), round(be, 9)): t for al, be, t in brute if al >= be + 0.1 - 1e-12}
    ours = {(round(al, 9), round(be, 9)): t for al, be, t, ok in zip(A, B, T, valid) if ok}
    assert ours.keys() == expected.keys() and len(ours) > 10
    assert max(abs(ours[k] - expected[k]) for k in ours) <= 1e-12 * max(1.0, max(abs(t) for t in ours.values()))


# ----------------------------------------------------------------------------------- the replay's fast paths
def test_batched_losses_at_x_k_equal_per_step_ones(tmp_path, spec_factory):
    spec = spec_factory(model={"name": "mlp", "width": 8}, steps=20, snapshot_every=20, eval_batch_size=40)
    problem = build.build_problem(spec)  # 40 // 16 = 2 steps per chunk: several chunks
    batched = replay.losses_at(problem, problem.model, range(3, 20))
    single = torch.stack([replay.loss_at(problem, problem.model, s) for s in range(3, 20)])
    assert torch.allclose(batched, single, rtol=1e-6, atol=0)
    # and by hand: mean cross-entropy of step 7's batch
    idx = build.batch_indices(200, 16, 0, 7)
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(problem.model(problem.data.x[idx]), problem.data.y[idx]).item()
    assert batched[4].item() == pytest.approx(ref, rel=1e-6)


BATCH_MIXING = '''
import torch
from torch import nn


class Centred(nn.Module):
    """Subtracts the batch mean: every sample's output depends on the rest of its batch."""
    def __init__(self, in_features, n_classes, **_):
        super().__init__()
        self.lin = nn.Linear(in_features, n_classes)

    def forward(self, x):
        h = self.lin(x)
        return h - h.mean(0, keepdim=True) * 3.0


def make(in_features, n_classes, **_):
    return Centred(in_features, n_classes)
'''


def test_batch_mixing_model_falls_back_to_per_step_losses(tmp_path, spec_factory, monkeypatch):
    (tmp_path / "mixing.py").write_text(BATCH_MIXING)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = spec_factory(model={"name": "mixing:make"}, steps=8, snapshot_every=4)
    results, ckpt, drifts = run_pipeline(spec, tmp_path / "run")
    assert drifts == [0.0, 0.0]
    steps = pl.read_parquet(f"{results}/tables/steps/**/*.parquet").sort("step")
    problem = build.build_problem(spec)
    problem.model.load_state_dict(torch.load(ckpt / "minimizer.pt", weights_only=True)["model"])
    problem.model.eval()
    expected = [replay.loss_at(problem, problem.model, s).item() for s in range(8)]
    assert np.allclose(steps["batch_loss_at_min"].to_numpy(), expected, rtol=1e-6)
    batched = replay.losses_at(problem, problem.model, range(8))  # what batching would have given
    assert not np.allclose(batched.numpy(), expected, rtol=1e-3)


def test_measurement_mode_writes_no_buffer_and_restores_every_mode():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    m.train()
    m[2].eval()  # mixed modes must come back as they were
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(6, 3)
    with evaluate.measurement_mode(m):
        assert m[1].training and not m[2].training and not m[0].training
        out = m(x)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # incl. num_batches_tracked
    assert [mod.training for mod in m] == [True, True, False, True] and m[1].track_running_stats
    h = m[0](x)  # batch statistics by hand (biased variance), dropout off
    ref = m[3]((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5) * m[1].weight + m[1].bias)
    assert torch.allclose(out, ref, atol=1e-6)


def test_evaluation_mode_restores_each_module():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    m.eval()
    m[1].train()
    with evaluate.evaluation_mode(m):
        assert not any(mod.training for mod in m.modules())
    assert [mod.training for mod in m] == [False, True]


def test_determinism_switch_for_accelerators(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        build.enable_determinism(torch.device("cpu"))
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        build.enable_determinism(torch.device("cuda"))  # flags only: no CUDA call is made
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(was)


def test_device_auto_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build.resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="device: auto or cpu"):
        build.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert build.resolve_device("auto").type == "cuda"
