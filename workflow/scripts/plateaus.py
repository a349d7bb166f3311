"""Snakemake adapter: plateau-escape events of one experiment (logic in landscope.flatness)."""
from landscope.measures.plateaus import plateaus_experiment
from landscope.jobs import job_logging

with job_logging(snakemake.log[0], f"plateaus {snakemake.wildcards.experiment}") as log:
    n = plateaus_experiment(snakemake.params.results, snakemake.wildcards.experiment, snakemake.params.runs,
                            snakemake.params.settings)
    log.info("%d plateau(s) in %d run(s)", n, len(snakemake.params.runs))
