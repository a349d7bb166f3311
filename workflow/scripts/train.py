"""Snakemake adapter: train one run, snapshot its checkpoints, choose x_K (logic in landscope)."""
from pathlib import Path

from landscope.spec import RunSpec
from landscope.jobs import job_logging
from landscope.trajectory.snapshot import select_minimizer, snapshot_run
from landscope.trajectory.record import finish_recording
from landscope.trajectory.train import train_run

spec = RunSpec.from_dict(snakemake.params.spec)
ckpt = Path(snakemake.output.manifest).parent
results = snakemake.params.results
with job_logging(snakemake.log[0], f"train {spec.experiment}/{spec.run}") as log:
    if spec.source == "recorded":  # your own loop trained it (landscope.Recorder): import, do not train
        finish_recording(spec, ckpt, results)
    else:
        train_run(spec, ckpt, results, progress=True)
    snaps = snapshot_run(spec, ckpt, results)
    chosen = select_minimizer(spec, ckpt, snaps, snakemake.output.minimizer, results)
    log.info("x_K = checkpoint step %d (%s), full loss %.6g", chosen["step"], chosen["method"], chosen["full_loss"])
