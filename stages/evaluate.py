"""evaluate: score one trained variant on the test split, e.g. `python stages/evaluate.py cnn`.

Writes metrics/test/<variant>.json and metrics/predictions/<variant>.csv (the confusion-matrix plot),
and adds the test metrics to the variant's MLflow run.
"""

import sys

import pandas as pd

from imgpipe import params as P
from imgpipe import paths, tracking
from imgpipe.checkpoint import load_checkpoint
from imgpipe.device import pick_device
from imgpipe.errors import ImgpipeError, run_stage
from imgpipe.evaluate import evaluate
from imgpipe.files import atomic_path, read_json, write_json
from imgpipe.prepare import load_prepared


def main() -> None:
    if len(sys.argv) != 2:
        raise ImgpipeError("usage: python stages/evaluate.py VARIANT (one of params.yaml train.variants)")
    name = sys.argv[1]
    test = load_prepared(paths.PREPARED).test
    model, _ = load_checkpoint(paths.checkpoint(name))
    device = pick_device("auto")
    result = evaluate(model.to(device), test, device)

    names = list(test.class_names)
    with atomic_path(paths.predictions(name)) as tmp:
        pd.DataFrame({
            "actual": [names[i] for i in test.labels],
            "predicted": [names[i] for i in result["predicted"]],
        }).to_csv(tmp, index=False)
    metrics = {"accuracy": result["accuracy"], "loss": result["loss"], "images": len(test)}
    write_json(paths.test_metrics(name), metrics)
    run_id = read_json(paths.train_metrics(name))["mlflow_run_id"]
    if run_id is None:
        print(f"{name}: training was not tracked (tracking.optional), so neither is its evaluation")
    else:
        with tracking.reported(P.tracking(P.load())[1]):
            tracking.log_evaluation(run_id, {"test_accuracy": result["accuracy"], "test_loss": result["loss"]},
                                    artifacts=[paths.predictions(name)])
    print(f"{name}: test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} on {len(test)} images")


if __name__ == "__main__":
    run_stage(main)
