"""Snakemake adapter: train one run (logic in landscope.trajectory)."""
from pathlib import Path

from landscope.config import RunSpec
from landscope.jobs import job_logging
from landscope.trajectory import train_run

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"train {spec.experiment}/{spec.run}"):
    train_run(spec, Path(snakemake.output.manifest).parent, snakemake.params.results, progress=True)
