"""Snakemake adapter: reports/index.html (logic in landscope.report.index)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.report.index import STUDY_PAGES, write_index

with job_logging(snakemake.log[0], "report_index"):
    write_index(snakemake.params.results, snakemake.params.experiments, snakemake.output[0],
                skipped=snakemake.params.skipped,
                links=STUDY_PAGES)
