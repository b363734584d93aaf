"""Training throughput on 1 and on N processes (torchrun + DistributedDataParallel), same data, seed and
global batch:

    python benchmarks/distributed_speed.py [--processes 1 2] [--model cnn] [--images 20000] [--epochs 2]
                                           [--device cpu]      (with .venv/bin first on PATH)

Trains the model on random MNIST-size images (1x28x28, 10 classes) under `torchrun --standalone
--nproc-per-node N` for each N (1 included, so every figure pays the same start-up), and prints per
N the training images/s of the whole group (imgpipe.training.loop's own figure: epochs x images / seconds of
training and validation), the speed-up over 1 process, and how far the final weights are from 1
process's. On CPUs each rank gets cores/N threads; on GPUs one device each (--device cuda).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from imgpipe.config import TrainConfig
from imgpipe.data.imageset import ImageSet
from imgpipe.data.prepare import prepare
from imgpipe.data.prepared import save_prepared
from imgpipe.training.distributed import torchrun_command

RANK = """
import dataclasses, json, sys, torch
import numpy as np
from pathlib import Path
from imgpipe.training import distributed
from imgpipe.config import TrainConfig
from imgpipe.data.prepared import load_prepared
from imgpipe.training.loop import train

folder, model, config, out = Path(sys.argv[1]), sys.argv[2], TrainConfig(**json.loads(sys.argv[3])), Path(sys.argv[4])
group = distributed.join(config.device)
data = load_prepared(folder)
# An epoch on a few images first, off the clock, on every side: torch._dynamo's import (at the first optimizer step on
# one process, in DistributedDataParallel's construction on several) and the first kernels land on neither side.
few = dataclasses.replace(data, train=data.train.subset(np.arange(min(512, len(data.train)))))
train(model, {}, few, dataclasses.replace(config, epochs=1), group=group)
result = train(model, {}, data, config, group=group)
distributed.leave()
if group.leader:
    torch.save({"weights": result.model.state_dict(), "images_per_second": result.images_per_second,
                "seconds": result.seconds}, out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"# {platform.processor() or platform.machine()}, {cores} cores; Python {platform.python_version()}, torch {torch.__version__}")
    print(f"# {args.model}, {args.images} random 1x28x28 images, global batch {args.batch_size}, {args.epochs} epochs, {args.device}")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_prepared(prepare({"train": ImageSet(images, labels, tuple(map(str, range(10))))}, 0.1, 0.1, seed=0), folder / "prepared")
        (folder / "rank.py").write_text(RANK)
        results = {}
        for processes in args.processes:
            threads = max(1, cores // processes) if args.device == "cpu" else 0
            config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=args.device, threads=threads)
            out = folder / f"{processes}.pt"
            done = subprocess.run(torchrun_command(processes, [str(folder / "rank.py"), str(folder / "prepared"), args.model,
                                                               json.dumps(asdict(config)), str(out)], log_dir=str(folder / "torchrun")),
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
            results[processes] = torch.load(out)
        base = results[args.processes[0]]
        print(f"{'processes':>9}  {'threads':>7}  {'images/s':>9}  {'speed-up':>8}  {'max |weight difference|':>23}")
        for processes, result in results.items():
            difference = max((result["weights"][k] - base["weights"][k]).abs().max().item() for k in base["weights"])
            threads = max(1, cores // processes) if args.device == "cpu" else "-"
            print(f"{processes:>9}  {threads:>7}  {result['images_per_second']:>9,.0f}  "
                  f"{result['images_per_second'] / base['images_per_second']:>7.2f}x  {difference:>23.2e}")


if __name__ == "__main__":
    main()
