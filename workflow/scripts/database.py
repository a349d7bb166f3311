"""Snakemake adapter: results/landscope.duckdb (logic in landscope.store)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.store import write_database

with job_logging(snakemake.log[0], "database"):
    write_database(snakemake.params.results, snakemake.output[0])
