"""Snakemake adapter: curvature of one run's checkpoints (logic in landscope.measures.curvature)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from pathlib import Path

from landscope.jobs import job_logging
from landscope.measures.curvature import curvature_run
from landscope.spec import RunSpec

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"curvature {spec.experiment}/{spec.run}") as log:
    out = curvature_run(spec, Path(snakemake.input.manifest).parent, snakemake.input.minimizer,
                        snakemake.params.results, snakemake.params.settings)
    log.info("%d checkpoints in %.2f s (stationarity %.2f s, flatness radius %.2f s, LLC %.2f s)",
             out["rows"], out["wall_s"], out["stationarity_s"], out["flatness_s"], out["llc_s"])
