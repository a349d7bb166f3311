"""Snakemake adapter: results/landscope.duckdb (logic in landscope.store)."""
from landscope.jobs import job_logging
from landscope.store import write_database

with job_logging(snakemake.log[0], "database"):
    write_database(snakemake.params.results, snakemake.output[0])
