"""Snakemake adapter: reports/table2.html (logic in landscope.report.table2)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.report.table2 import write_table2

with job_logging(snakemake.log[0], "table2"):
    write_table2(snakemake.params.results, snakemake.params.sequences, snakemake.output[0])
