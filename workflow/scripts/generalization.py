"""Snakemake adapter: the generalization tables (landscope.measures.generalization) and
reports/generalization.html (landscope.report.generalization)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.measures.generalization import write_generalization_tables
from landscope.report.generalization import write_generalization_page

with job_logging(snakemake.log[0], "generalization"):
    write_generalization_tables(snakemake.params.results, snakemake.params.experiments, snakemake.params.runs)
    write_generalization_page(snakemake.params.results, snakemake.output.page)
