"""The bring-your-own example (examples/byo.py + examples/byo.yaml) runs through the whole DAG."""

import json
import shutil
import subprocess

import numpy as np
import torch
import yaml

from conftest import LANDSCOPE, ROOT, SNAKEMAKE


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
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "2",
           "--configfile", str(tmp_path / "study.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    q = ("SELECT r.point, count(DISTINCT r.run) AS runs, max(d.max_abs_drift) AS drift, "
         "max(r.n_params) AS n_params FROM runs r JOIN drift d USING (experiment, run) GROUP BY ALL ORDER BY ALL")
    got = subprocess.run([*LANDSCOPE, "sql", "--results", str(tmp_path / "results"), "--format", "json", q],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    rows = json.loads(got.stdout)
    # width 8: 2->16 GLU 8->16 GLU 8->2; width 32: 2->64 GLU 32->64 GLU 32->2
    assert rows == [{"point": "width=32", "runs": 2, "drift": 0.0, "n_params": 192 + 2112 + 66},
                    {"point": "width=8", "runs": 2, "drift": 0.0, "n_params": 48 + 144 + 18}]
    assert (tmp_path / "reports" / "spirals_gated_mlp.html").stat().st_size > 10_000
