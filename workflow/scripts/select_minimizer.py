"""Snakemake adapter: choose one run's x_K and publish its trajectory's rows (landscope.trajectory.train.finish_run)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from pathlib import Path

from landscope.jobs import job_logging
from landscope.spec import RunSpec
from landscope.trajectory.train import finish_run

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"select_minimizer {spec.experiment}/{spec.run}") as log:
    chosen = finish_run(spec, Path(snakemake.input.manifest).parent, snakemake.output.minimizer,
                        snakemake.params.results)
    log.info("x_K = checkpoint step %d (%s), full loss %.6g", chosen["step"], chosen["method"], chosen["full_loss"])
