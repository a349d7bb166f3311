"""benchmarks/gpu_check.py, the prepared GPU check, run as it must run on any machine: `--device cpu
--quick`. The JSON's structure, the exactness a CPU guarantees (bitwise replay, bitwise retraining, the
bare loop ending where landscope's training ends), FLOP counts against their closed form, and the
helpers the GPU run relies on (its token data, its step planning) against hand-computed values."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import PYTHON, ROOT

from landscope.problem import sources

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check


def run_check(tmp_path, *args, timeout=600):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), proc.stdout


def positive_finite(r):
    for k in ("measured", "baseline", "ratio"):
        assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (r["name"], k, r[k])


def paper_drift_row(rows):
    (drift,) = [r for r in rows if r["part"] == "4" and r["unit"] == "abs"]
    return drift


@pytest.mark.slow  # ~30 s idle, ~60 s on the loaded 2-core machine
def test_quick_cpu_run_has_every_part_and_sane_figures(tmp_path):
    got, md, printed = run_check(tmp_path)
    assert got["ok"] and got["machine"]["device"] == "cpu" and got["machine"]["torch"] == torch.__version__
    assert got["settings"]["quick"] and not got["settings"]["cuda_started_before_determinism"]
    rows = got["rows"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    assert {r["part"] for r in rows} == {"1", "2a", "2b", "3", "4"}

    # 1: on a CPU the replay is bitwise (drift_tolerance auto = 0), and so is a second training
    drifts = [r for r in rows if r["part"] == "1" and r["unit"] == "abs"]
    assert [r["name"].split(":")[0] for r in drifts] == list(gpu_check.FAMILIES)
    for r in drifts:
        assert r["measured"] == 0.0 and r["tolerance"] == 0.0 and r["bitwise"] and r["within_tolerance"]
        assert r["retrain_drift"] == 0.0 and r["check"] == "bitwise" and r["n_params"] > 0
    for r in rows:
        if r["unit"] == "s":
            positive_finite(r)

    # 2: benchmarks/run.py's items on this device; the bare loop ends where landscope's training ends
    whole = [r for r in rows if r["part"] == "2a" and "identical_parameters" in r]
    assert len(whole) == 2 and all(r["identical_parameters"] for r in whole)
    assert {r["name"].split(":")[0] for r in rows if r["part"].startswith("2")} == {
        "MLP 64-256-256-10, digits", "ResNet9 w=1/8 (BatchNorm), digits"}

    # 3: a gradient of the MLP 64-256-256-10 on N = 64 samples is one forward (2N(a + b + c) FLOPs over its
    # three weight matrices a = 64*256, b = 256*256, c = 256*10) and a backward of twice that, less the
    # input gradient of the first layer (nobody asks for it): 2N(3(a + b + c) - a).
    hvps = [r for r in rows if r["part"] == "3" and r["name"].split(": ")[1].startswith("one HVP")]
    assert [r["name"].split(":")[0] for r in hvps] == list(gpu_check.HVP_FAMILIES)
    a, b, c, n = 64 * 256, 256 * 256, 256 * 10, 64
    assert hvps[0]["flops_gradient"] == 2 * n * (3 * (a + b + c) - a) == 30_343_168
    for r in hvps:
        # A product differentiates the gradient's graph: a backward through both the forward and the
        # backward pass, about twice a gradient's work (Pearlmutter 1994); measured 1.9-2.1x in FLOPs.
        assert 1.5 <= r["flop_ratio"] <= 3.0, (r["name"], r["flop_ratio"])
        # its time ratio is a measurement, not a check (no timed assertions): present, positive, finite
        assert r["ratio"] > 0 and math.isfinite(r["ratio"]), (r["name"], r["ratio"])

    # 4: the pipeline's own jobs, replayed bitwise across processes
    paper = [r for r in rows if r["part"] == "4"]
    drift = paper_drift_row(rows)
    assert drift["measured"] == 0.0 and drift["bitwise"] and drift["steps"] == 40
    assert drift["pipeline"] == "snakemake"  # installed with landscope
    fashion = sources.locate_fashion(None) is not None
    assert ("stand-in" in drift["what"]) != fashion
    assert len(paper) == 4 and drift["n_params"] == (784 * 256 + 256 * 256 + 256 * 10 + 256 + 256 + 10 if fashion
                                                      else 64 * 32 + 32 * 32 + 32 * 10 + 32 + 32 + 10)

    # the table: a header naming the device and versions, the legend, one line per row
    assert f"torch {torch.__version__}" in md and "Each line:" in md and "CUBLAS_WORKSPACE_CONFIG" in md
    assert sum(line.startswith("| ") and "| part |" not in line for line in md.splitlines()) == len(rows)
    assert md in printed


@pytest.mark.slow  # ~15 s: three job processes
def test_paper_part_through_the_rules_library_functions(tmp_path):
    got, _, _ = run_check(tmp_path, "--parts", "4", "--pipeline", "library")
    rows = got["rows"]
    assert {r["part"] for r in rows} == {"4"} and got["ok"]
    drift = paper_drift_row(rows)
    assert drift["pipeline"] == "library" and drift["measured"] == 0.0 and drift["bitwise"]
    for r in rows:
        if r["unit"] == "s":
            positive_finite(r)


def test_without_cuda_the_default_device_says_how_to_check_the_script(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--device cpu --quick" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_digit_tokens_are_the_digits_pixels_as_next_token_windows():
    data = gpu_check.digit_tokens(bptt=16, n_windows=10)
    assert data.x.shape == data.y.shape == (10, 16) and data.meta["n_classes"] == 17
    table = np.loadtxt(sources.digits_csv(), delimiter=",", max_rows=2)
    pixels = table[:, :64].reshape(-1)  # the CSV's integers 0..16, image after image
    assert data.x[0].tolist() == pixels[:16].tolist() and data.x[4].tolist() == pixels[64:80].tolist()
    assert torch.equal(data.y[:, :-1], data.x[:, 1:]) and torch.equal(data.y[:-1, -1], data.x[1:, 0])
    assert data.y[3, -1].item() == pixels[64]  # window 3 ends image 0; its last target starts image 1
    full = gpu_check.digit_tokens(bptt=16)
    assert len(full) == (1797 * 64 - 1) // 16 and int(full.x.max()) <= 16 and int(full.x.min()) >= 0


def test_steps_planned_for_the_budget():
    # (budget - fixed) / (step * (1 + replay guess)), even, at most the paper's 93,750
    assert gpu_check.plan_steps(200.0, 50.0, 0.001, 2.0) == 50_000
    assert gpu_check.plan_steps(100.0, 10.0, 0.007, 2.0) == 4284  # 4285.7 -> 4285 -> even
    assert gpu_check.plan_steps(10_000.0, 0.0, 0.001, 2.0) == 93_750
    assert gpu_check.plan_steps(30.0, 45.0, 0.001) == 0


def test_paper_experiment_is_config_paper_fashion_mlp_at_width_4096(tmp_path):
    exp, what = gpu_check.paper_experiment(tmp_path, quick=False)
    assert exp["model"] == {"name": "mlp", "depth": 3, "width": 4096} and exp["dataset"] == {"name": "fashion_mnist"}
    assert exp["optimizer"] == {"name": "sgd", "lr": 0.09} and exp["batch_size"] == 64 and exp["seeds"] == [0]
    assert "sweep" not in exp and "60,000" in what
    stand_in, what = gpu_check.paper_experiment(None, quick=True)
    assert stand_in["dataset"] == {"name": "digits"} and stand_in["model"]["width"] == 32 and "absent" in what


def test_json_cleaning_and_state_drift():
    assert gpu_check.clean({"a": [math.nan, math.inf, -math.inf, 1.5], "b": "x"}) == {
        "a": [None, "inf", "-inf", 1.5], "b": "x"}
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    assert gpu_check.state_drift(a, {"w": torch.tensor([1.0, 2.5]), "n": torch.tensor(3)}) == 0.5
    assert gpu_check.state_drift(a, {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}) == math.inf
    assert [gpu_check.drift_check(d, 1e-4) for d in (0.0, 1e-5, 1e-3)] == [
        "bitwise", "within tolerance", "OVER tolerance"]


@pytest.mark.parametrize("tolerance, check", [(1e-4, "within tolerance"), (1e-5, "OVER tolerance")])
def test_a_drift_over_or_within_the_tolerance_is_measured_not_lost(tmp_path, monkeypatch, tolerance, check):
    # what a GPU may give: replayed parameters 5e-5 away from the checkpoint. Over the tolerance the
    # evaluate job's replay raises after writing its drift row; the check reads the row either way.
    monkeypatch.setattr(gpu_check.replay, "parameter_drift", lambda model, ref: 5e-5)
    monkeypatch.setattr(gpu_check.replay, "drift_tolerance", lambda spec, device: tolerance)
    drift, timing = gpu_check.drift_family("MLP", 4, 1, torch.device("cpu"), tmp_path)
    assert drift["measured"] == 5e-5 and drift["baseline"] == tolerance and drift["ratio"] == pytest.approx(
        5e-5 / tolerance)
    assert drift["check"] == check and drift["within_tolerance"] == (tolerance >= 5e-5) and not drift["bitwise"]
    assert drift["retrain_bitwise"] and timing["unit"] == "s" and timing["measured"] > 0
