"""train: fit one variant with one seed, e.g. `python stages/train.py cnn 0`; dvc.yaml runs it for every
entry of train.variants and train.seeds.

Writes models/<variant>/seed<seed>.pt, metrics/curves/<variant>/seed<seed>/ and
metrics/train/<variant>/seed<seed>.json, then records the run in MLflow.
"""

import sys

from imgpipe import params as P
from imgpipe import paths, provenance, tracking
from imgpipe.checkpoint import save_checkpoint
from imgpipe.errors import ImgpipeError, run_stage
from imgpipe.files import write_json
from imgpipe.prepare import load_prepared
from imgpipe.train import train, write_curves


def main() -> None:
    if len(sys.argv) != 3:
        raise ImgpipeError("usage: python stages/train.py VARIANT SEED (one of params.yaml train.variants and train.seeds)")
    name, seed = sys.argv[1], P.seed_argument(sys.argv[2])
    params = P.load()
    variant = P.variant(params, name, seed)
    data = load_prepared(paths.PREPARED)
    with P.reported_as(f"models.{name}"):
        result = train(variant.model, variant.settings, data, variant.config, resume=paths.resume_state(name, seed))

    save_checkpoint(paths.checkpoint(name, seed), result.model, model_name=variant.model, model_settings=variant.settings,
                    image_shape=data.image_shape, class_names=data.class_names, config=variant.config,
                    background=P.data_config(params).background)
    write_curves(paths.curves(name, seed), result.history)
    metrics = result.summary()
    record = {**metrics, "model": variant.model, "device": result.device, "mlflow_run_id": None}
    experiment, optional = P.tracking(params)
    data_fingerprint = data.fingerprint
    splits = {"train": data.train, "validation": data.val, "test": data.test}
    # Runs that differ only in their seed share this, also when `dvc exp run` adds seeds to an earlier run's.
    unseeded = {key: value for key, value in vars(variant.config).items() if key != "seed"}
    seed_group = f"{name}-" + provenance.params_hash({"model": variant.model, "settings": variant.settings,
                                                      "train": unseeded, "data": data_fingerprint})
    try:
        with tracking.reported(optional):
            record["mlflow_run_id"] = tracking.log_training(
                experiment,
                run_name=f"{name} seed {seed}",
                params={"data": P.get(params, "data"), "train": vars(variant.config), "model": {"name": variant.model, **variant.settings}},
                history=result.history,
                metrics=metrics,
                model=result.model,
                example=data.val.images[:2],
                tags=tracking.run_tags(name, seed, seed_group, result.device, data_fingerprint, params),
                datasets=tracking.dataset_inputs(P.get(params, "data.dataset"), data_fingerprint, paths.PREPARED.relative_to(paths.ROOT),
                                                 {context: len(split) for context, split in splits.items()}),
            )
    finally:  # the metrics are the stage's own output: written whatever became of tracking
        write_json(paths.train_metrics(name, seed), record)
    print(f"{name} seed {seed}: val accuracy {metrics['val_accuracy']:.4f} (epoch {result.best_epoch}), {metrics['parameters']:,} parameters, "
          f"{result.seconds:.1f} s on {result.device} (MLflow run {record['mlflow_run_id']})")


if __name__ == "__main__":
    run_stage(main)
