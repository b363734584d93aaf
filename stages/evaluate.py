"""evaluate: score every trained variant and seed on the test split, in one process: `python stages/evaluate.py`.

Writes, each as <variant>/seed<seed>: metrics/test/ (accuracy, loss, top-k, macro precision/recall/F1,
95% intervals of accuracy and macro-F1, expected calibration error before and after temperature scaling,
images/s and the device it was measured on, checkpoint size), metrics/predictions/ (per image; the
confusion-matrix plot), metrics/classes/ (per class), metrics/confusion/ (the count table) and
metrics/reliability/ (confidence bins: the reliability diagram) and metrics/saliency/ (where the model looked, in a few
right and the most confident wrong test images: the report's overlays). The publish stage adds them to the run's MLflow run (one
MLflow start-up for all runs).

One process for all (torch starts once: 2 s a model saved). A model whose checkpoint, data, settings and this
code are those its results were made from keeps them (metrics/evaluated.json records what each was made from):
an experiment that retrains one variant re-scores that one, as a stage per model would. Results of variants and
seeds no longer trained are removed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

import numpy as np
import torch

from imgpipe import lineage, paths
from imgpipe import params as P
from imgpipe.data.prepared import load_prepared
from imgpipe.device import describe, pick_device
from imgpipe.errors import ImgpipeError, run_stage
from imgpipe.evaluation import freshness
from imgpipe.evaluation.evaluate import (
    class_table,
    confusion_table,
    evaluate,
    examples_to_explain,
    predictions_table,
    reliability_table,
)
from imgpipe.evaluation.saliency import saliency
from imgpipe.evaluation.stats import most_confused
from imgpipe.files import prune, read_json, write_arrays, write_csv, write_json
from imgpipe.models.checkpoint import load_checkpoint


def main() -> None:
    if len(sys.argv) != 1:
        raise ImgpipeError("usage: python stages/evaluate.py (it scores every variant and seed of params.yaml train.variants and train.seeds)")
    params = P.load()
    trainings = [(name, seed) for name in P.get(params, "train.variants") for seed in P.seeds(params)]
    settings = {"top_k": P.whole_number(params, "evaluate.top_k"), "explained": P.whole_number(params, "evaluate.explained", minimum=0)}
    prepared = load_prepared(paths.PREPARED)
    # Where the test images/s is measured: evaluate.device, else where training runs (train.device).
    setting = "evaluate" if P.get(params, "evaluate.device", None) is not None else "train"
    with P.reported_as(setting):
        device = pick_device(P.get(params, f"{setting}.device"))
    settings["device"] = describe(device)  # where images/s is measured: another device scores again
    code = f"{lineage.code_version(Path(__file__))} {freshness.libraries()}"  # an upgraded torch scores again
    before = read_json(paths.EVALUATED) if paths.EVALUATED.is_file() else {}
    record = {}
    for name, seed in trainings:
        training, checkpoint, files = f"{name}/seed{seed}", paths.checkpoint(name, seed), paths.evaluation_files(name, seed)
        key = freshness.made_from(checkpoint, prepared.fingerprint, settings, code) if checkpoint.is_file() else None
        if key is not None and freshness.still_current(before, training, key, files):
            print(f"{name} seed {seed}: test results kept (its model, data, settings, code and libraries are those they were made from)")
            record[training] = before[training]
        else:
            score(name, seed, prepared.test, device, settings)
            record[training] = freshness.entry(key, files)
    keep = {path for name, seed in trainings for path in paths.evaluation_files(name, seed)}
    for folder in paths.EVALUATION_FOLDERS:
        prune(folder, keep)
    write_json(paths.EVALUATED, record)


def score(name: str, seed: int, test, device: torch.device, settings: dict) -> None:
    """Evaluate one variant and seed and write its files."""
    model, _ = load_checkpoint(paths.checkpoint(name, seed))
    result = evaluate(model.to(device), test, device, top_k=settings["top_k"])
    write_csv(paths.predictions(name, seed), predictions_table(test, result))
    write_csv(paths.class_scores(name, seed), class_table(test.class_names, result))
    write_csv(paths.confusion(name, seed), confusion_table(test.class_names, result.confusion))
    write_csv(paths.reliability(name, seed), reliability_table(result))
    shown = examples_to_explain(test.labels, result, settings["explained"])
    heat, method = saliency(model, torch.from_numpy(test.images[shown]).to(device), torch.from_numpy(result.predicted[shown]))
    write_arrays(paths.saliency(name, seed), index=shown, heat=(heat.cpu().numpy() * 255).round().astype(np.uint8),
                 method=np.array(method))
    metrics = {**result.metrics, "model_bytes": paths.checkpoint(name, seed).stat().st_size, "device": describe(device)}
    write_json(paths.test_metrics(name, seed), metrics)
    pairs = "; ".join(f"{a} as {p} ({n}x)" for a, p, n in most_confused(result.confusion, test.class_names, 3))
    print(f"{name} seed {seed}: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, loss {metrics['loss']:.4f} "
          f"on {len(test)} images, ECE {metrics['ece_before_scaling']:.4f} -> {metrics['ece']:.4f} by temperature scaling, "
          f"{metrics['images_per_second']:,.0f} images/s on {metrics['device']}; "
          f"most confused: {pairs or 'none'}")


if __name__ == "__main__":
    run_stage(main)
