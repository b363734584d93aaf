"""label_issues: model problem or label problem? Lists the images of every split whose given label the models
find very unlikely, judged only by models that did not train on the image: the judging variant's trained
checkpoints (every seed's probabilities, averaged) for the validation and test images, and the same recipe
cross-fitted for the training images (label_issues.folds models, each trained on the other folds for
label_issues.epochs epochs, at most the judge's own, and, as the checkpoints are, calibrated on the validation
split). The judge is label_issues.variant, or where that is null the variant best on validation (mean over its
seeds).

Writes metrics/label_issues.csv (surest first: id, split, index, given and suggested class, their probabilities)
and metrics/label_issues.json (how many, per split and per given class, the judge and why, and the method). List
ids in the file data.exclude names to leave those images out of the next run's training.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

import dataclasses

import numpy as np

from imgpipe import params as P
from imgpipe import paths, settings
from imgpipe.data.prepared import image_ids, load_prepared
from imgpipe.device import pick_device
from imgpipe.errors import run_stage
from imgpipe.evaluation import label_issues
from imgpipe.evaluation.calibration import calibrate
from imgpipe.evaluation.results import best_over_seeds
from imgpipe.files import read_json, write_csv, write_json
from imgpipe.models.checkpoint import load_checkpoint
from imgpipe.models.inference import logits_in_chunks
from imgpipe.training.loop import train


def probabilities(model, images: np.ndarray, device) -> np.ndarray:
    return logits_in_chunks(model.to(device), images, device).softmax(1).cpu().numpy()


def cross_fitted(variant: settings.Variant, data, folds: int, device) -> np.ndarray:
    """(N, classes) probabilities of the training images, each from a model of the variant's recipe that trained on
    the other folds (benchmarks/label_issues.py measures this function on planted flips)."""
    def fold(train_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
        print(f"{variant.name}: cross-fitting, {len(train_rows)} training images for the other {len(held_rows)}", flush=True)
        part = dataclasses.replace(data, train=data.train.subset(train_rows), known_fingerprint=None)
        model = train(variant.model, variant.settings, part, variant.config).model
        calibrate(model, data.val, device)  # as the checkpoints are: a model sure of its training images says 1.0 to all
        return probabilities(model, data.train.images[held_rows], device)

    return label_issues.out_of_fold(fold, data.train.labels, folds, variant.config.seed, len(data.class_names))


def main() -> None:
    params = P.load()
    folds, seeds = P.whole_number(params, "label_issues.folds", minimum=2), P.seeds(params)
    trained = {variant: {seed: read_json(paths.train_metrics(variant, seed)) for seed in seeds} for variant in P.get(params, "train.variants")}
    name = settings.chosen_variant(params, "label_issues.variant", best_over_seeds(trained))
    if P.get(params, "label_issues.variant", None) is None:
        accuracy, loss = (np.mean([m[key] for m in trained[name].values()]) for key in ("val_accuracy", "val_loss"))
        why = f"best on validation: val accuracy {accuracy:.4f}, val loss {loss:.4f} (label_issues.variant: null)"
    else:
        why = f"label_issues.variant: {name}"
    print(f"label issues judged by {name} ({why})", flush=True)
    variant, data = settings.variant(params, name, seeds[0]), load_prepared(paths.PREPARED)
    if P.get(params, "label_issues.epochs", None) is not None:  # the cross-fitted models' own, shorter training
        epochs = min(P.whole_number(params, "label_issues.epochs"), variant.config.epochs)
        variant = dataclasses.replace(variant, config=dataclasses.replace(variant.config, epochs=epochs))
    device = pick_device(variant.config.device)
    models = [load_checkpoint(paths.checkpoint(name, seed))[0] for seed in seeds]
    judged = {split: np.mean([probabilities(model, getattr(data, split).images, device) for model in models], axis=0)
              for split in ("val", "test")}

    judged["train"] = cross_fitted(variant, data, folds, device)
    found = {split: label_issues.find_label_issues(judged[split], getattr(data, split).labels) for split in ("train", "val", "test")}
    table = sorted((row for split, issues in found.items()
                    for row in label_issues.rows(split, image_ids(paths.PREPARED, split), issues, data.class_names)),
                   key=lambda row: (-row["score"], row["id"]))  # surest first
    write_csv(paths.LABEL_ISSUES, {column: [row[column] for row in table] for column in label_issues.COLUMNS})
    write_json(paths.LABEL_ISSUES_SUMMARY, {
        "images": sum(len(getattr(data, split)) for split in found), "issues": len(table), "judged_by": name, "why": why,
        "folds": folds, "cross_fit_epochs": variant.config.epochs,
        "by_split": {split: len(issues) for split, issues in found.items()},
        "by_class": {cls: int(count) for cls, count in zip(data.class_names, sum(i.counts(len(data.class_names)) for i in found.values()))},
        "method": label_issues.METHOD,
    })
    print(f"{len(table)} possibly mislabelled images of {sum(len(getattr(data, s)) for s in found)} "
          f"({', '.join(f'{split} {len(issues)}' for split, issues in found.items())}) -> {paths.LABEL_ISSUES.relative_to(paths.ROOT)}")


if __name__ == "__main__":
    run_stage(main)
