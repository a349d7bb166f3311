"""Snakemake adapter: choose x_K (logic in landscope.measure)."""
from pathlib import Path

from landscope.config import RunSpec
from landscope.jobs import job_logging
from landscope.measure import select_minimizer

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"select_minimizer {spec.experiment}/{spec.run}") as log:
    chosen = select_minimizer(spec, Path(snakemake.input.manifest).parent, snakemake.input.snapshots,
                              snakemake.output.minimizer, snakemake.params.results)
    log.info("x_K = checkpoint step %d (%s), full loss %.6g", chosen["step"], chosen["method"], chosen["full_loss"])
