"""Snakemake adapter: one experiment's HTML report (logic in landscope.report.page)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.report.page import write_experiment_report

experiment = snakemake.wildcards.experiment
with job_logging(snakemake.log[0], f"report {experiment}"):
    write_experiment_report(snakemake.params.results, experiment, snakemake.output[0],
                            title=snakemake.params.title, runs=snakemake.params.runs,
                            figure=snakemake.params.figure, scale_note=snakemake.params.scale_note,
                            setup=snakemake.params.setup)
