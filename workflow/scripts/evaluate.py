"""Snakemake adapter: replay one segment and measure every step (logic in landscope.trajectory.replay)."""
from pathlib import Path

from landscope.spec import RunSpec
from landscope.jobs import job_logging
from landscope.trajectory.replay import replay_segment

spec = RunSpec.from_dict(snakemake.params.spec)
segment = int(snakemake.wildcards.segment)
with job_logging(snakemake.log[0], f"evaluate {spec.experiment}/{spec.run} segment {segment}") as log:
    out = replay_segment(spec, Path(snakemake.input.manifest).parent, snakemake.input.minimizer,
                         segment, snakemake.params.results, progress=True)
    log.info("drift %.3e, %.2f s", out["drift"], out["wall_s"])
