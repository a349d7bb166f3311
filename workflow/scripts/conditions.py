"""Snakemake adapter: conditions of one experiment (logic in landscope.measures.conditions)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from landscope.jobs import job_logging
from landscope.measures.conditions import experiment_conditions
from landscope.spec import ExperimentSpec

exp = ExperimentSpec.from_dict(snakemake.params.experiment)
with job_logging(snakemake.log[0], f"conditions {exp.name}") as log:
    out = experiment_conditions(exp, snakemake.params.results, snakemake.input.steps,
                                snakemake.input.directions, snakemake.input.drift)
    for row in out["points"]:
        log.info("%s: feasible=%s alpha_min=%.4g beta_at_alpha_min=%.4g (%s) nonvanishing_term=%.4g",
                 row["point"], row["feasible"], row["alpha_min"], row["beta_at_alpha_min"], row["binding"] or "-",
                 row["nonvanishing_term"])
