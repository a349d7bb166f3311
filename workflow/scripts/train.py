"""Snakemake adapter: train one run (or import its recording), snapshot it, choose x_K (landscope.trajectory.train)."""
from pathlib import Path

from landscope.jobs import job_logging
from landscope.spec import RunSpec
from landscope.trajectory.train import produce_run

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"train {spec.experiment}/{spec.run}") as log:
    chosen = produce_run(spec, Path(snakemake.output.manifest).parent, snakemake.params.results,
                         snakemake.output.minimizer, progress=True)
    log.info("x_K = checkpoint step %d (%s), full loss %.6g", chosen["step"], chosen["method"], chosen["full_loss"])
