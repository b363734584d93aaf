"""How well the label_issues stage's cross-fitting finds labels flipped on purpose, and what it costs, for
several judges and cross-fit lengths side by side in one run.

    python benchmarks/label_issues.py [--flips 30] [--draws 2]    (about 3 minutes on a 2-core CPU)

The bundled digits, prepared as the pipeline prepares them; in the training split --flips labels are changed
to another class (--draws times, each its own random draw). For each configuration, the stage's own
cross_fitted (stages/label_issues.py: label_issues.folds models, each trained on the other folds with the
variant's params.yaml recipe for the given epochs, calibrated on validation) judges the training images, and
confident learning lists the issues. Printed per configuration, over the draws: the planted flips found
(recall), how many of the list's first `flips` entries are planted (precision at the flips' count), the list's
length, their true class suggested, and the seconds of cross-fitting. The default pipeline's choice is the
cheapest configuration whose recall and precision stay within a flip or two of the best.
"""

import argparse
import dataclasses
import importlib.util
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from imgpipe import params as P
from imgpipe import settings
from imgpipe.config import DataConfig
from imgpipe.data.imageset import ImageSet
from imgpipe.data.prepare import prepare
from imgpipe.data.sources import digits
from imgpipe.device import hardware, pick_device
from imgpipe.evaluation.label_issues import find_label_issues

STAGE = Path(__file__).resolve().parents[1] / "stages" / "label_issues.py"
CONFIGURATIONS = [("cnn", 30), ("cnn", 10), ("cnn", 5), ("mlp", 30), ("mlp", 10), ("linear", 10)]  # (judge, cross-fit epochs)


def stage_module():
    spec = importlib.util.spec_from_file_location("label_issues_stage", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def busy_seconds() -> float:
    """CPU-seconds the whole machine has spent: less this process's, what others took meanwhile."""
    return sum(map(int, Path("/proc/stat").read_text().split()[1:4])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=30, help="labels flipped in the training split per draw")
    parser.add_argument("--draws", type=int, default=2, help="independent random draws of the flips")
    parser.add_argument("--folds", type=int, default=None, help="cross-fit folds (default: params.yaml label_issues.folds)")
    parser.add_argument("--configurations", help="judge:epochs,... (default: " +
                        ",".join(f"{j}:{e}" for j, e in CONFIGURATIONS) + ")")
    args = parser.parse_args()
    configurations = ([(part.split(":")[0], int(part.split(":")[1])) for part in args.configurations.split(",")]
                      if args.configurations else CONFIGURATIONS)
    params = P.load()
    folds = args.folds or P.whole_number(params, "label_issues.folds", minimum=2)
    device = pick_device("cpu")
    print(f"{hardware(device)}; Python {platform.python_version()}, torch {torch.__version__}; "
          f"{folds} folds, {args.flips} flips x {args.draws} draws")
    stage = stage_module()
    data = prepare(digits(DataConfig()).splits, val_fraction=0.15, test_fraction=0.2, seed=0)
    others_before, ours_before = busy_seconds(), time.process_time()
    for judge, epochs in configurations:
        variant = settings.variant(params, judge, 0)
        variant = dataclasses.replace(variant, config=dataclasses.replace(variant.config, epochs=epochs, device="cpu"))
        found, precise, lengths, suggested, seconds = [], [], [], [], []
        for draw in range(args.draws):
            rng = np.random.default_rng(100 + draw)
            flipped = rng.choice(len(data.train), args.flips, replace=False)
            labels = data.train.labels.copy()
            labels[flipped] = (labels[flipped] + rng.integers(1, 10, args.flips)) % 10
            noisy = dataclasses.replace(data, train=ImageSet(data.train.images, labels, data.class_names), known_fingerprint=None)
            start = time.perf_counter()
            probabilities = stage.cross_fitted(variant, noisy, folds, device)
            seconds.append(time.perf_counter() - start)
            issues = find_label_issues(probabilities, labels)
            planted = np.isin(issues.index, flipped)
            found.append(int(planted.sum()))
            precise.append(int(planted[:args.flips].sum()))
            lengths.append(len(issues))
            suggested.append(int((issues.suggested[planted] == data.train.labels[issues.index[planted]]).sum()))
        print(f"{judge:>6} {epochs:2d} epochs: found {statistics.mean(found):5.1f}/{args.flips} {found}, "
              f"planted among the first {args.flips}: {statistics.mean(precise):5.1f} {precise}, list {statistics.mean(lengths):5.1f}, "
              f"true class suggested {statistics.mean(suggested):5.1f}; {statistics.median(seconds):5.1f} s "
              f"[{min(seconds):.1f}-{max(seconds):.1f}]", flush=True)
    others = busy_seconds() - others_before - (time.process_time() - ours_before)
    print(f"other processes used about {max(others, 0):.0f} CPU-seconds meanwhile")


if __name__ == "__main__":
    main()
