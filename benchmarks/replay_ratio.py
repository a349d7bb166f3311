"""Replay (all per-step quantities) vs training on the same run, in-process, same machine and run.

Usage: python benchmarks/replay_ratio.py [--width 256] [--steps 3000] [--out benchmarks/out/replay.json]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from landscope import measure, trajectory
from landscope.config import load_study


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/out/replay.json")
    args = ap.parse_args()
    study = load_study({"device": "cpu", "experiments": {"b": {
        "model": {"name": "mlp", "width": args.width, "depth": 3}, "dataset": {"name": "digits"},
        "optimizer": {"name": "sgd", "lr": 0.09}, "batch_size": 64, "steps": args.steps,
        "snapshot_every": args.every}}})
    spec = study.experiments["b"].runs[0]
    with tempfile.TemporaryDirectory() as tmp:
        ck, res = Path(tmp) / "ck", Path(tmp) / "res"
        t0 = time.perf_counter()
        trajectory.train_run(spec, ck, res)
        train_s = time.perf_counter() - t0
        snaps = measure.snapshot_run(spec, ck, res)
        measure.select_minimizer(spec, ck, snaps, ck / "minimizer.pt", res)
        t0 = time.perf_counter()
        for j in range(spec.n_segments):
            trajectory.replay_segment(spec, ck, ck / "minimizer.pt", j, res)
        replay_s = time.perf_counter() - t0
    out = {"model": f"mlp 64-{args.width}-{args.width}-10", "steps": args.steps, "train_s": round(train_s, 3),
           "replay_s": round(replay_s, 3), "replay_over_train": round(replay_s / train_s, 3)}
    print(f"{out['model']}, {args.steps} steps: train {train_s:.2f} s, replay {replay_s:.2f} s, "
          f"ratio {replay_s / train_s:.2f}x (includes full-batch directions at each checkpoint)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
