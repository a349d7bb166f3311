"""Snakemake adapter: train one trajectory (or import its recording) (landscope.trajectory.train)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from pathlib import Path

from landscope.jobs import job_logging
from landscope.spec import RunSpec
from landscope.trajectory.train import train_or_import

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"train {spec.experiment}/{spec.run}") as log:
    manifest = train_or_import(spec, Path(snakemake.output.manifest).parent, progress=True)
    log.info("%s, %d checkpoints, %.2f s", manifest["status"], len(manifest["checkpoints"]), manifest["train_wall_s"])
