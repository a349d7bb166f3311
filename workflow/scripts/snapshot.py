"""Snakemake adapter: full-batch measurements at every checkpoint of one trajectory (landscope.trajectory.snapshot)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from pathlib import Path

from landscope.jobs import job_logging
from landscope.spec import RunSpec
from landscope.trajectory.snapshot import snapshot_run

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"snapshot {spec.training_key()}"):
    snapshot_run(spec, Path(snakemake.input.manifest).parent)
