"""Your own PyTorch training loop, measured by landscope: record it, then run the pipeline on it.

From the repository root (examples/own_loop.yaml describes the loop, with `source: recorded`):

    python examples/own_loop.py                                  # trains both seeds, recording them
    snakemake --cores all --configfile examples/own_loop.yaml   # measures them -> reports/own_loop.html

The loop below is an ordinary one: its own DataLoader order, torch's CosineAnnealingLR, the loss
written out. The three lines marked ``landscope`` are all it takes to record it. The pipeline then
replays every segment with the recorded batches and learning rates and fails if the replay does
not land exactly on the next checkpoint, so what it measures is this loop's trajectory.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from landscope import Recorder, recorded_runs


def tanh_mlp(in_features: int, n_classes: int, width: int = 32) -> nn.Module:
    """The model factory the config names (examples.own_loop:tanh_mlp): the replay rebuilds it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, n_classes))


def train(spec, results: str = "results") -> None:
    """One run (one seed) of your loop. ``spec`` carries the config's values for this run."""
    torch.manual_seed(spec.seed)
    model = tanh_mlp(in_features=64, n_classes=10, **{k: v for k, v in spec.model.items() if k != "name"})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # the Recorder checks: as in the config
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.steps)
    with Recorder(spec, model=model, optimizer=opt, results=results) as rec:  # landscope
        x, y = rec.data.x, rec.data.y  # the dataset the config names, as the replay will see it
        # shuffled mini-batches of sample positions; its own generator keeps torch's global one for the model
        order = DataLoader(range(len(x)), batch_size=spec.batch_size, shuffle=True, drop_last=True,
                           generator=torch.Generator().manual_seed(spec.seed))
        step = 0
        while step < spec.steps:
            for idx in order:
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                rec.step(idx, loss)  # landscope: after optimizer.step()
                step += 1
                if step == spec.steps:
                    break
    print(f"recorded {spec.experiment}/{spec.run}: {spec.steps} steps, last batch loss {loss.item():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="examples/own_loop.yaml")
    ap.add_argument("--experiment", default="own_loop")
    ap.add_argument("--results", default="results")
    args = ap.parse_args()
    for spec in recorded_runs(args.config, args.experiment):  # landscope: one per seed (and sweep point)
        train(spec, args.results)


if __name__ == "__main__":
    main()
