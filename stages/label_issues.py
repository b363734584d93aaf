"""label_issues: model problem or label problem? Ranks every image of every split by how likely its given label is
wrong, judged only by models that neither trained on the image nor picked anything by its label: the judge's recipe
cross-fitted over the whole pool (label_issues.folds models, each trained for label_issues.epochs epochs, at most the
judge's own, on the other folds less an eighth of them, on which it picks its kept epoch and fits its temperature).
The judge is label_issues.variant, or where that is null the variant best on validation (mean over its seeds).

Writes metrics/label_issues.csv (the images confident learning flags, then the label_issues.review most suspicious
others, in that order; id, split, index, given and suggested class, their probabilities, label quality, flagged) and
metrics/label_issues.json (how many, per split and per given class, the judge and why, and the method). List ids in
the file data.exclude names to leave those images out of the next run's training.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

import dataclasses

import numpy as np

from imgpipe import params as P
from imgpipe import paths, settings
from imgpipe.data.imageset import SPLITS, ImageSet
from imgpipe.data.prepared import Prepared, image_ids, load_prepared
from imgpipe.device import pick_device
from imgpipe.errors import ConfigError, run_stage
from imgpipe.evaluation import label_issues
from imgpipe.evaluation.calibration import calibrate
from imgpipe.evaluation.results import best_over_seeds
from imgpipe.files import read_json, write_csv, write_json
from imgpipe.models.inference import logits_in_chunks
from imgpipe.training.loop import train


def pooled(data: Prepared) -> ImageSet:
    """Every split's images, one after another (train, val, test)."""
    return ImageSet(np.concatenate([getattr(data, split).images for split in SPLITS]),
                    np.concatenate([getattr(data, split).labels for split in SPLITS]), data.class_names, data.class_labels)


def cross_fitted(variant: settings.Variant, data: Prepared, pool: ImageSet, folds: int, device, repeats: int = 1) -> np.ndarray:
    """(N, classes) probabilities of the pool's images, each from models of the variant's recipe that neither
    trained on it nor picked their epoch or temperature on it (label_issues.judging_folds), averaged over `repeats`
    cross-fittings, each with its own folds and seed (benchmarks/label_issues.py measures this on planted noise)."""
    def judge(fold: label_issues.Fold, config) -> np.ndarray:
        print(f"{variant.name}: cross-fitting, {len(fold.train)} training images ({len(fold.calibration)} to calibrate on) "
              f"for the other {len(fold.judged)}", flush=True)
        part = dataclasses.replace(data, train=pool.subset(fold.train), val=pool.subset(fold.calibration),
                                   test=pool.subset(fold.judged[:0]), known_fingerprint=None)  # it is shown no image it judges
        model = train(variant.model, variant.settings, part, config).model
        calibrate(model, part.val, device)  # a model sure of its training images says 1.0 to all
        return logits_in_chunks(model.to(device), pool.images[fold.judged], device).softmax(1).cpu().numpy()

    configs = [dataclasses.replace(variant.config, seed=variant.config.seed + repeat) for repeat in range(repeats)]
    return np.mean([label_issues.out_of_fold(lambda fold: judge(fold, config), pool.labels, folds, config.seed, len(data.class_names))
                    for config in configs], axis=0)


def main() -> None:
    params = P.load()
    folds, seeds = P.whole_number(params, "label_issues.folds", minimum=2), P.seeds(params)
    review, repeats = P.whole_number(params, "label_issues.review", minimum=0), P.whole_number(params, "label_issues.repeats")
    kind = P.one_of(params, "label_issues.quality", label_issues.QUALITY_KINDS)
    trained = {variant: {seed: read_json(paths.train_metrics(variant, seed)) for seed in seeds} for variant in P.get(params, "train.variants")}
    name = settings.chosen_variant(params, "label_issues.variant", best_over_seeds(trained))
    if P.get(params, "label_issues.variant", None) is None:
        accuracy, loss = (np.mean([m[key] for m in trained[name].values()]) for key in ("val_accuracy", "val_loss"))
        why = f"best on validation: val accuracy {accuracy:.4f}, val loss {loss:.4f} (label_issues.variant: null)"
    else:
        why = f"label_issues.variant: {name}"
    print(f"label issues judged by {name}'s recipe ({why})", flush=True)
    variant, data = settings.variant(params, name, seeds[0]), load_prepared(paths.PREPARED)
    if P.get(params, "label_issues.epochs", None) is not None:  # the cross-fitted models' own, shorter training
        epochs = min(P.whole_number(params, "label_issues.epochs"), variant.config.epochs)
        variant = dataclasses.replace(variant, config=dataclasses.replace(variant.config, epochs=epochs))
    pool = pooled(data)
    if folds > len(pool):  # each fold judges at least one image
        raise ConfigError(f"params.yaml: label_issues.folds: must be at most the {len(pool)} prepared images, got {folds}")
    splits = np.concatenate([np.full(len(getattr(data, split)), split) for split in SPLITS])
    indices = np.concatenate([np.arange(len(getattr(data, split))) for split in SPLITS])
    ids = np.concatenate([image_ids(paths.PREPARED, split) for split in SPLITS])

    with P.reported_as(settings.section_of(params, name, "device")):  # as the train stage: one line naming the key
        device = pick_device(variant.config.device)
    with P.reported_as(f"models.{name}"):
        probabilities = cross_fitted(variant, data, pool, folds, device, repeats)
    verdict = label_issues.review(probabilities, pool.labels, kind)
    listed = verdict.listed(ids, review)
    write_csv(paths.LABEL_ISSUES, label_issues.rows(listed, verdict, ids, splits, indices, pool.labels, data.class_names))
    flagged = int(verdict.flagged.sum())
    by_split = {split: int(verdict.flagged[splits == split].sum()) for split in SPLITS}
    write_json(paths.LABEL_ISSUES_SUMMARY, {
        "images": len(pool), "issues": flagged, "listed": len(listed), "review": review, "quality": kind,
        "judged_by": name, "why": why, "folds": folds, "repeats": repeats, "cross_fit_epochs": variant.config.epochs,
        "by_split": by_split,
        "by_class": {cls: int(count) for cls, count in
                     zip(data.class_names, np.bincount(pool.labels[verdict.flagged], minlength=len(data.class_names)))},
        "method": label_issues.method(kind),
    })
    print(f"{flagged} possibly mislabelled images of {len(pool)} ({', '.join(f'{s} {n}' for s, n in by_split.items())}), "
          f"then the {len(listed) - flagged} most suspicious others -> {paths.LABEL_ISSUES.relative_to(paths.ROOT)}")


if __name__ == "__main__":
    run_stage(main)
