"""Snakemake adapter: loss surfaces of one run around x_K (logic in landscope.measures.surfaces)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from pathlib import Path

from landscope.jobs import job_logging
from landscope.measures.surfaces import surfaces_run
from landscope.spec import RunSpec

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"surfaces {spec.experiment}/{spec.run}") as log:
    out = surfaces_run(spec, Path(snakemake.input.manifest).parent, snakemake.input.minimizer,
                       snakemake.params.results, snakemake.params.settings)
    log.info("%d loss evaluations over %d path iterates in %.2f s (set-up and reading them %.2f s, "
             "evaluate's max drift %g); captured fraction of the path per plane: %s", out["evals"], out["path"],
             out["wall_s"], out["iterates_s"], out["max_drift"], out["captured"])
