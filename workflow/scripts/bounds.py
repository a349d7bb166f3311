"""Snakemake adapter: what each condition promises, against what happened (logic in landscope.measures.bounds)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.measures.bounds import experiment_bounds
from landscope.spec import ExperimentSpec

exp = ExperimentSpec.from_dict(snakemake.params.experiment)
with job_logging(snakemake.log[0], f"bounds {exp.name}") as log:
    out = experiment_bounds(exp, snakemake.params.results, snakemake.input.constants, snakemake.input.runs,
                            snakemake.input.steps, snakemake.input.directions, snakemake.input.curvature)
    for row in out["rows"]:
        if row["run"] == "all":
            log.info("%s %s: constant=%s bound=%s achieved=%s%s", row["point"], row["condition"], row["constant"],
                     row["bound"], row["achieved"], "" if row["applicable"] else f" (not applicable: {row['why_not']})")
