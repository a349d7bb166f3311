import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_study(experiment: dict, name: str = "t", **top):
    from landscope.config import load_study

    return load_study({"device": "cpu", **top, "experiments": {name: experiment}})


@pytest.fixture
def spec_factory():
    def factory(**exp):
        base = {"model": {"name": "logistic_regression"}, "dataset": {"name": "digits", "n_train": 200},
                "batch_size": 16, "steps": 12, "snapshot_every": 4, "seeds": [0],
                "optimizer": {"name": "sgd", "lr": 0.5}}
        base.update(exp)
        return make_study(base).experiments["t"].runs[0]
    return factory


def run_pipeline(spec, root: Path):
    """Train, snapshot, select x_K and replay every segment of one run (no Snakemake)."""
    from landscope.trajectory import replay, train

    results = root / "results"
    ckpt = root / "ckpt"
    train.train_run(spec, ckpt)
    train.snapshot_and_select(spec, ckpt, ckpt / "minimizer.pt", results)
    drifts = [replay.replay_segment(spec, ckpt, ckpt / "minimizer.pt", j, results)["drift"]
              for j in range(spec.n_segments)]
    return results, ckpt, drifts


PYTHON = sys.executable
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
LANDSCOPE = [sys.executable, "-m", "landscope.cli"]


def _rule_texts() -> list[str]:
    smk = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    return [(ROOT / "Snakefile").read_text(), *(p.read_text() for p in smk)]


def local_rules() -> set[str]:
    """The rules the workflow declares local (its `localrules:` blocks), and `all`."""
    out = {"all"}
    for text in _rule_texts():
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", text, flags=re.MULTILINE):
            out |= set(re.findall(r"\w+", block))
    return out


def torch_rules() -> set[str]:
    """The rules whose jobs may run on a GPU (resources gpu=get_gpu)."""
    out = set()
    for text in _rule_texts():
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, flags=re.MULTILINE | re.DOTALL):
            if "gpu=get_gpu" in body:
                out.add(name)
    return out


def chain_rules() -> list[str]:
    """The rules of a trajectory's chain, grouped by the cluster preset (profiles/cluster: groups), sorted."""
    import yaml

    groups = yaml.safe_load((ROOT / "profiles" / "cluster" / "config.yaml").read_text())["groups"]
    return sorted(g.split("=")[0] for g in groups)


def snakemake_cmd(workdir: Path, configfile, *args, cores: int | None = 2) -> list[str]:
    """The repository's Snakefile run in ``workdir`` on ``configfile`` (``cores=None``: let a
    ``--workflow-profile`` in ``args`` decide)."""
    return [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            *(["--cores", str(cores)] if cores else []), "--configfile", str(configfile), *args]


def job_stats(text: str) -> Counter:
    """The 'Job stats' table Snakemake prints before running: rule -> number of jobs."""
    block = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^(\w+)\s+(\d+)$", block, flags=re.MULTILINE)
    return Counter({rule: int(n) for rule, n in rows if rule != "total"})


def run_snakemake(workdir: Path, configfile, *args, cores: int | None = 2, timeout: float = 900,
                  check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    """Run Snakemake to completion; with ``check``, a failure raises with the tails of its output."""
    out = subprocess.run(snakemake_cmd(workdir, configfile, *args, cores=cores), capture_output=True,
                         text=True, timeout=timeout, cwd=cwd)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}")
    return out


def landscope_sql(results: Path, query: str, fmt: str = "json", cwd=None):
    """`landscope sql` on a results folder: rows as dicts (json) or the printed text."""
    out = subprocess.run([*LANDSCOPE, "sql", "--results", str(results), "--format", fmt, query],
                         capture_output=True, text=True, timeout=60, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if fmt == "json" else out.stdout


# A bring-your-own model that diverges (used by the divergence tests of several modules)
EXPLODING_MODULE = '''
import torch
from torch import nn


class Exploding(nn.Module):
    """Logits exp(w x): a large step size makes them overflow to inf, and the loss NaN."""

    def __init__(self, in_features, n_classes, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes)

    def forward(self, x):
        return torch.exp(self.linear(x))


def make(**kw):
    return Exploding(**kw)
'''
