"""The bring-your-own example (examples/byo.py + examples/byo.yaml) runs through the whole DAG."""

import shutil

import numpy as np
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
