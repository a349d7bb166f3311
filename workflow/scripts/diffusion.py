"""Snakemake adapter: diffusion along the minimum of one run (logic in landscope.measures.diffusion)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from pathlib import Path

from landscope.jobs import job_logging
from landscope.measures.diffusion import diffusion_run
from landscope.spec import RunSpec

spec = RunSpec.from_dict(snakemake.params.spec)
with job_logging(snakemake.log[0], f"diffusion {spec.experiment}/{spec.run}") as log:
    out = diffusion_run(spec, Path(snakemake.input.manifest).parent, snakemake.params.results,
                        snakemake.params.settings, snakemake.input.get("curvature") or None)
    nan = float("nan")
    log.info("%d checkpoints after the plateau, MSD exponent %.3g (long lags %.3g: %s), %.2f s", out["checkpoints"],
             nan if out["exponent"] is None else out["exponent"],
             nan if out["exponent_long"] is None else out["exponent_long"], out["motion"], out["wall_s"])
