"""How well the label_issues stage finds label errors of the kinds real data has, and what it costs: label noise
planted into a real dataset, each configuration of the judges side by side in one run.

    python benchmarks/label_issues.py [--data mnist|fashion|digits] [--noise neighbour:0.01,neighbour:0.05,random:0.01]
                                      [--configurations cnn:10:0:1,cnn:10:2:1] [--stability]

The dataset (mnist: the real MNIST test set, ../shared/datasets/mnist-t10k; fashion: the real Fashion-MNIST test
set, ../shared/datasets/fashion-mnist; digits: the bundled 1,797) is prepared as the pipeline prepares it, and in
every split a share of the labels is changed: `neighbour` to the class people confuse it with (4<->9, 3<->5,
7<->1 on digits; Shirt<->T-shirt and Pullover<->Coat on Fashion-MNIST), `random` to any other class (`none:0`: the data as it is). For each
configuration (judge variant : cross-fit epochs : crop padding : cross-fittings averaged), the stage's own cross_fitted
(stages/label_issues.py) judges every image, and the stage's rule flags and ranks them. Printed per noise and
configuration, against the planted truth: the flagged list's size, precision and recall, the recall within the
ranking's first 100 and first 1%, for both label-quality scores, and the seconds of cross-fitting. The data's own
label errors count against precision: a real set is not clean. --stability judges the first configuration again
with two CPU threads instead of one (other floating-point sums, as another machine's) and prints the overlap.
"""

import argparse
import dataclasses
import importlib.util
import platform
import time
from pathlib import Path

import numpy as np
import torch

from imgpipe import params as P
from imgpipe import settings
from imgpipe.config import DataConfig
from imgpipe.data.imageset import SPLITS, ImageSet
from imgpipe.data.prepare import prepare
from imgpipe.data.sources import digits
from imgpipe.data.sources.idx import read_idx
from imgpipe.device import hardware, pick_device
from imgpipe.evaluation import label_issues

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "stages" / "label_issues.py"
SHARED = ROOT.parent / "shared" / "datasets"
NEIGHBOURS = {"mnist": [(4, 9), (3, 5), (7, 1)], "digits": [(4, 9), (3, 5), (7, 1)],
              "fashion": [(6, 0), (2, 4)]}  # Shirt<->T-shirt/top, Pullover<->Coat


def stage_module():
    spec = importlib.util.spec_from_file_location("label_issues_stage", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dataset(name: str) -> ImageSet:
    if name == "digits":
        return digits(DataConfig()).splits["train"]
    folder = SHARED / {"mnist": "mnist-t10k", "fashion": "fashion-mnist"}[name]
    images, labels = (read_idx(folder / f"t10k-{kind}-idx{n}-ubyte.gz") for kind, n in (("images", 3), ("labels", 1)))
    return ImageSet(images[:, None], labels.astype(np.int64), tuple(map(str, range(10))))


def planted(labels: np.ndarray, kind: str, share: float, pairs, rng) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, indices changed): share * N labels changed, to the neighbour class or to a random other one."""
    count = 0 if kind == "none" else round(share * len(labels))
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    eligible = np.flatnonzero(np.isin(labels, list(partner))) if kind == "neighbour" else np.arange(len(labels))
    changed = np.sort(rng.choice(eligible, count, replace=False))
    noisy = labels.copy()
    if kind == "neighbour":
        noisy[changed] = [partner[int(label)] for label in labels[changed]]
    else:
        noisy[changed] = (labels[changed] + rng.integers(1, 10, count)) % 10
    return noisy, changed


def with_labels(data, labels: np.ndarray):
    """The prepared splits with the pool's labels (train, val, test, one after another) replaced."""
    ends = np.cumsum([len(getattr(data, split)) for split in SPLITS])
    parts = np.split(labels, ends[:-1])
    return dataclasses.replace(data, known_fingerprint=None, **{
        split: dataclasses.replace(getattr(data, split), labels=part) for split, part in zip(SPLITS, parts)})


def figures(scores: dict, flags: np.ndarray, ids, changed) -> str:
    flagged = np.flatnonzero(flags)
    if not len(changed):
        return f"flagged {len(flagged):4d} (the data's own)"
    hits = np.isin(flagged, changed).sum()
    top = len(ids) // 100
    out = [f"flagged {len(flagged):4d}, precision {hits / max(len(flagged), 1):.3f}, recall {hits / len(changed):.3f}"]
    for kind in label_issues.QUALITY_KINDS:
        order = label_issues.review_order(scores[kind], flags, ids)
        out.append(f"{kind}: recall top 100 {np.isin(order[:100], changed).sum() / len(changed):.3f}, "
                   f"top 1% ({top}) {np.isin(order[:top], changed).sum() / len(changed):.3f}"
                   + (f", top {len(changed)} {np.isin(order[:len(changed)], changed).sum() / len(changed):.3f}" if len(changed) != top else ""))
    return "; ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=["mnist", "fashion", "digits"])
    parser.add_argument("--noise", default="neighbour:0.01,neighbour:0.05,random:0.01", help="kind:share,...")
    parser.add_argument("--configurations", default="cnn:10:0:1", help="judge:epochs:crop_padding:repeats,...")
    parser.add_argument("--draw", type=int, default=0, help="which random draw of the noise")
    parser.add_argument("--folds", type=int, default=None, help="cross-fit folds (default: params.yaml label_issues.folds)")
    parser.add_argument("--stability", action="store_true", help="judge the first configuration again on two threads")
    args = parser.parse_args()
    params = P.load(ROOT / "params.yaml")
    folds = args.folds or P.whole_number(params, "label_issues.folds", minimum=2)
    device = pick_device("cpu")
    torch.set_num_threads(1)
    raw = dataset(args.data)
    data = prepare({"train": raw}, val_fraction=0.15, test_fraction=0.2, seed=0)
    print(f"{hardware(device)}; Python {platform.python_version()}, torch {torch.__version__}; {args.data}: "
          f"{len(raw):,} images {raw.image_shape}; {folds} folds", flush=True)
    stage = stage_module()
    pool = stage.pooled(data)
    ids = np.arange(len(pool))
    for noise in args.noise.split(","):
        kind, share = noise.split(":")
        labels, changed = planted(pool.labels, kind, float(share), NEIGHBOURS[args.data], np.random.default_rng(100 + args.draw))
        noisy = with_labels(data, labels)
        noisy_pool = dataclasses.replace(pool, labels=labels)
        for number, configuration in enumerate(args.configurations.split(",")):
            judge, epochs, padding, repeats = configuration.split(":")
            variant = settings.variant(params, judge, 0)
            variant = dataclasses.replace(variant, config=dataclasses.replace(
                variant.config, epochs=int(epochs), crop_padding=int(padding), device="cpu", threads=1))
            start = time.perf_counter()
            probabilities = stage.cross_fitted(variant, noisy, noisy_pool, folds, device, int(repeats))
            seconds = time.perf_counter() - start
            verdict = label_issues.review(probabilities, labels)
            scores = {kind: label_issues.label_quality(probabilities, labels, kind) for kind in label_issues.QUALITY_KINDS}
            print(f"{kind} {float(share):.0%} ({len(changed)}) {configuration}: "
                  f"{figures(scores, verdict.flagged, ids, changed)}; {seconds:.0f} s", flush=True)
            if args.stability and number == 0:
                torch.set_num_threads(2)
                again = label_issues.review(stage.cross_fitted(dataclasses.replace(variant, config=dataclasses.replace(
                    variant.config, threads=2)), noisy, noisy_pool, folds, device, int(repeats)), labels)
                torch.set_num_threads(1)
                first, second = set(np.flatnonzero(verdict.flagged)), set(np.flatnonzero(again.flagged))
                tops = [set(label_issues.review_order(v.quality, v.flagged, ids)[:100]) for v in (verdict, again)]
                print(f"  two threads: flagged {len(second)}, {len(first & second)} in both of {len(first | second)}; "
                      f"first 100: {len(tops[0] & tops[1])} in both", flush=True)


if __name__ == "__main__":
    main()
