"""Snakemake adapter: full-batch measurements at every checkpoint (logic in landscope.measure)."""
from pathlib import Path

from landscope.config import RunSpec
from landscope.jobs import job_logging
from landscope.measure import snapshot_run

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"snapshot {spec.experiment}/{spec.run}"):
    snapshot_run(spec, Path(snakemake.input.manifest).parent, snakemake.params.results)
