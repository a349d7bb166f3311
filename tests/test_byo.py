"""The bring-your-own example (examples/byo.py + examples/byo.yaml) runs through the whole DAG."""

import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, landscope_sql, run_snakemake


def test_byo_factories_give_what_the_config_promises():
    from examples.byo import gated_mlp, noisy_spirals

    x, y = noisy_spirals(n=50, seed=3)
    assert x.shape == (100, 2) and x.dtype == torch.float32 and y.tolist() == [0] * 50 + [1] * 50
    assert torch.equal(noisy_spirals(n=50, seed=3)[0], x)  # deterministic across job processes
    # the two arms are point reflections of each other up to the noise
    assert np.abs((x[:50] + x[50:]).numpy()).max() < 0.2
    torch.manual_seed(0)
    net = gated_mlp(in_features=2, n_classes=2, width=8, depth=2)
    assert net(x).shape == (100, 2)
    assert sum(p.numel() for p in net.parameters()) == (2 * 16 + 16) + (8 * 16 + 16) + (8 * 2 + 2)


def test_byo_study_runs_from_its_own_folder(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cfg = yaml.safe_load((ROOT / "examples" / "byo.yaml").read_text())
    exp = cfg["experiments"]["spirals_gated_mlp"]
    exp.update(steps=60, snapshot_every=30, directions_every=15)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(tmp_path, tmp_path / "study.yaml", cwd=tmp_path)
    q = ("SELECT r.point, count(DISTINCT r.run) AS runs, max(d.max_abs_drift) AS drift, "
         "max(r.n_params) AS n_params FROM runs r JOIN drift d USING (experiment, run) GROUP BY ALL ORDER BY ALL")
    rows = landscope_sql(tmp_path / "results", q)
    # width 8: 2->16 GLU 8->16 GLU 8->2; width 32: 2->64 GLU 32->64 GLU 32->2
    assert rows == [{"point": "width=32", "runs": 2, "drift": 0.0, "n_params": 192 + 2112 + 66},
                    {"point": "width=8", "runs": 2, "drift": 0.0, "n_params": 48 + 144 + 18}]
    assert (tmp_path / "reports" / "spirals_gated_mlp.html").stat().st_size > 10_000


def test_two_param_factories_give_the_problem_by_hand():
    """f_i = (x + y - c_i)^2 / 2 with c = (0, 2), exact projection onto x + y = 1, exact f_i* = 0."""
    from examples.two_param import shifted_quadratics, two_samples

    data = two_samples()
    assert data.x.tolist() == [[0.0], [1.0]] and data.f_i_star.tolist() == [0.0, 0.0]
    model = shifted_quadratics()
    with torch.no_grad():
        model.w.copy_(torch.tensor([0.5, 1.0]))  # u = 1.5
    assert model(data.x).tolist() == [1.125, 0.125]
    (p,) = model.project([model.w])
    assert p.tolist() == [0.25, 0.75] and not p.requires_grad  # u = 1, moved along (1, 1)


def test_two_param_study_runs_through_the_dag_with_identity_loss_and_projection(tmp_path):
    """examples/two_param.yaml through the whole DAG, checked against the problem's ground truth: on
    S = {x + y = 1} f = 1/2 exactly; off it, with e = x + y - 1 = sqrt(2) dist, f = 1/2 + dist^2, the gradient
    e (1, 1) points along x - Proj(x) (cos = 1) and <grad f, x - x_p> = 2 dist^2; each f_i satisfies the
    alpha-beta-condition everywhere for alpha >= 1/(2 - margin), so the measured smallest alpha is at most that."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cfg = yaml.safe_load((ROOT / "examples" / "two_param.yaml").read_text())
    cfg["experiments"]["shifted_quadratics"].update(steps=60, snapshot_every=30)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(tmp_path, tmp_path / "study.yaml", cwd=tmp_path)
    rows = landscope_sql(tmp_path / "results", "SELECT run, step, full_loss, full_loss_at_min, dist_to_min, "
                         "full_grad_dot_dir, cos_angle FROM directions ORDER BY run, step")
    assert len(rows) == 2 * 61
    moved = [r for r in rows if r["dist_to_min"] > 1e-6]
    assert len(moved) > 100
    for r in rows:
        assert r["full_loss_at_min"] == pytest.approx(0.5, abs=1e-7)  # float32 parameters
        assert r["full_loss"] == pytest.approx(0.5 + r["dist_to_min"] ** 2, abs=1e-6)
    for r in moved:
        assert r["full_grad_dot_dir"] == pytest.approx(2 * r["dist_to_min"] ** 2, rel=1e-4, abs=1e-9)
        assert r["cos_angle"] == pytest.approx(1.0, abs=1e-6) and r["cos_angle"] <= 1.0
    (summary,) = landscope_sql(tmp_path / "results", "SELECT feasible, alpha_min, beta_at_alpha_min "
                               "FROM condition_summary")
    margin = 0.1
    assert summary["feasible"] and margin <= summary["alpha_min"] <= 1 / (2 - margin) + 1e-6, summary
    assert (tmp_path / "reports" / "shifted_quadratics.html").stat().st_size > 10_000
