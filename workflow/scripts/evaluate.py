"""Snakemake adapter: replay one segment, measure every step, keep the iterates the surfaces need
(logic in landscope.trajectory.replay)."""
from landscope.jobserver import hand_over

hand_over()  # in `landscope run`, the job runs in its warm job server (landscope.jobserver)

from pathlib import Path

from landscope.jobs import job_logging
from landscope.spec import RunSpec
from landscope.trajectory.replay import replay_segment

spec = RunSpec.from_dict(snakemake.params.spec)
segment = int(snakemake.wildcards.segment)
with job_logging(snakemake.log[0], f"evaluate {spec.experiment}/{spec.run} segment {segment}") as log:
    out = replay_segment(spec, Path(snakemake.input.manifest).parent, snakemake.input.minimizer, segment,
                         snakemake.params.results, path_points=snakemake.params.path_points, progress=True)
    log.info("drift %.3e, %.2f s, %d path iterates kept", out["drift"], out["wall_s"], out["path_iterates"])
