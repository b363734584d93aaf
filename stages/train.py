"""train: fit one variant, e.g. `python stages/train.py cnn`; dvc.yaml runs it for every train.variants entry.

Writes models/<variant>.pt, metrics/curves/<variant>/ and metrics/train/<variant>.json, then
records the run in MLflow.
"""

import sys

from imgpipe import params as P
from imgpipe import paths, tracking
from imgpipe.checkpoint import save_checkpoint
from imgpipe.errors import ImgpipeError, run_stage
from imgpipe.files import write_json
from imgpipe.prepare import fingerprint, load_prepared
from imgpipe.train import train, write_curves


def main() -> None:
    if len(sys.argv) != 2:
        raise ImgpipeError("usage: python stages/train.py VARIANT (one of params.yaml train.variants)")
    name = sys.argv[1]
    params = P.load()
    variant = P.variant(params, name)
    data = load_prepared(paths.PREPARED)
    with P.reported_as(f"models.{name}"):
        result = train(variant.model, variant.settings, data, variant.config, resume=paths.resume_state(name))

    save_checkpoint(paths.checkpoint(name), result.model, model_name=variant.model, model_settings=variant.settings,
                    image_shape=data.image_shape, class_names=data.class_names, config=variant.config,
                    background=P.data_config(params).background)
    write_curves(paths.curves(name), result.history)
    metrics = result.summary()
    record = {**metrics, "model": variant.model, "device": result.device, "mlflow_run_id": None}
    experiment, optional = P.tracking(params)
    data_fingerprint = fingerprint(data)
    splits = {"train": data.train, "validation": data.val, "test": data.test}
    try:
        with tracking.reported(optional):
            record["mlflow_run_id"] = tracking.log_training(
                experiment,
                run_name=name,
                params={"data": P.get(params, "data"), "train": vars(variant.config), "model": {"name": variant.model, **variant.settings}},
                history=result.history,
                metrics=metrics,
                model=result.model,
                example=data.val.images[:2],
                tags=tracking.run_tags(name, result.device, data_fingerprint, params),
                datasets=tracking.dataset_inputs(P.get(params, "data.dataset"), data_fingerprint, paths.PREPARED.relative_to(paths.ROOT),
                                                 {context: len(split) for context, split in splits.items()}),
            )
    finally:  # the metrics are the stage's own output: written whatever became of tracking
        write_json(paths.train_metrics(name), record)
    print(f"{name}: val accuracy {metrics['val_accuracy']:.4f} (epoch {result.best_epoch}), {metrics['parameters']:,} parameters, "
          f"{result.seconds:.1f} s on {result.device} (MLflow run {record['mlflow_run_id']})")


if __name__ == "__main__":
    run_stage(main)
