"""Snakemake adapter: find or fetch one dataset, verified, and write its record (landscope.problem.sources)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

import json
from pathlib import Path

from landscope.jobs import job_logging
from landscope.problem.sources import fetch_dataset
from landscope.store import atomic_write_bytes

dataset = snakemake.wildcards.dataset
with job_logging(snakemake.log[0], f"fetch_data {dataset}") as log:
    record = fetch_dataset(dataset, snakemake.params.data_dir)
    atomic_write_bytes(Path(snakemake.output.record), json.dumps(record, indent=1).encode())
    log.info("%s %s: %s", dataset, "found" if record["found"] else "fetched and verified", record["path"])
