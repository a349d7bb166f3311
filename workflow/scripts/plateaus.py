"""Snakemake adapter: plateau-escape events of one experiment (logic in landscope.measures.plateaus)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.measures.plateaus import plateaus_experiment

with job_logging(snakemake.log[0], f"plateaus {snakemake.wildcards.experiment}") as log:
    n = plateaus_experiment(snakemake.params.results, snakemake.wildcards.experiment, snakemake.params.runs,
                            snakemake.params.settings)
    log.info("%d plateau(s) in %d run(s)", n, len(snakemake.params.runs))
