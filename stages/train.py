"""train: fit one variant with one seed, e.g. `python stages/train.py cnn 0`; dvc.yaml runs it for every
entry of train.variants and train.seeds.

Writes models/<variant>/seed<seed>.pt (its temperature fitted on the validation split: imgpipe.evaluation.calibration),
metrics/curves/<variant>/seed<seed>/ and metrics/train/<variant>/seed<seed>.json; the publish stage records
them in MLflow. With train.devices above 1 it starts that many ranks of itself under torchrun (or, started by an outer torchrun or srun,
joins that group); rank 0 writes the files.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

from datetime import datetime, timezone

from imgpipe import params as P
from imgpipe import paths, settings
from imgpipe.data.prepared import load_prepared
from imgpipe.device import pick_device
from imgpipe.errors import ConfigError, ImgpipeError, run_stage
from imgpipe.evaluation.calibration import calibrate
from imgpipe.files import write_json
from imgpipe.models.checkpoint import save_checkpoint
from imgpipe.models.networks import build_model, fitted_by_name
from imgpipe.training import distributed, gpus
from imgpipe.training.loop import train, write_curves


def main() -> None:
    if len(sys.argv) != 3:
        raise ImgpipeError("usage: python stages/train.py VARIANT SEED (one of params.yaml train.variants and train.seeds)")
    name, seed = sys.argv[1], P.seed_argument(sys.argv[2])
    params = P.load()
    if seed not in P.seeds(params):  # dvc.yaml declares only these seeds' outputs
        raise ConfigError(f"train {name}: seed {seed} is not one of params.yaml train.seeds {P.seeds(params)}")
    variant = settings.variant(params, name, seed)
    background = settings.data_config(params).background  # a bad data: setting fails now, not after the training
    with P.reported_as(settings.section_of(params, name, "device")):  # fail now, naming the key, if the device is absent
        device_type = pick_device(variant.config.device).type
    data = load_prepared(paths.PREPARED)
    settings.require_augmentation_fits(params, name, variant.config, data.image_shape)
    processes = distributed.device_count(variant.config.devices, device_type)
    if not distributed.launched():  # this stage starts the ranks: one per visible GPU at most
        with P.reported_as(settings.section_of(params, name, "devices")):
            distributed.require_visible(processes, device_type)
    if processes > 1 and fitted_by_name(variant.model):
        print(f"{name}: fitted in one pass, on one process (train.devices: {variant.config.devices} is for gradient training)")
        processes = 1
    world = distributed.launched_world() if distributed.launched() else processes
    if world > 1 and not fitted_by_name(variant.model) and variant.config.batch_size < 2 * world:
        raise ConfigError(f"params.yaml: {settings.section_of(params, name, 'batch_size')}.batch_size: {variant.config.batch_size} "
                          f"leaves some of the {world} processes fewer than 2 images of each batch (batch norm needs 2); "
                          f"use {2 * world} or more, or fewer train.devices")
    if processes > 1 and not distributed.launched():  # start the ranks, each of which runs this script
        with P.reported_as(f"models.{name}"):  # a bad setting fails here, in one line, not on every rank at every restart
            net = build_model(variant.model, data.image_shape, len(data.class_names), **variant.settings)
            if callable(getattr(net, "load_pretrained", None)):  # a zoo model's weights: a bad file, or the download once
                net.load_pretrained()
        restarts = variant.config.max_restarts
        status = distributed.launch(processes, [__file__, name, str(seed)], restarts)
        if status != 0:
            raise ImgpipeError(f"train {name} seed {seed}: {processes} processes under torchrun failed (exit {status}, after "
                               f"up to {restarts} restart(s), train.max_restarts); the failing rank's error is above")
        return
    if device_type == "cuda" and not distributed.launched():
        gpus.use_a_free_gpu()  # parallel queued experiments (dvc queue start -j N) spread over the GPUs
    group = distributed.join(device_type) if distributed.launched() else distributed.SINGLE
    started = datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # the MLflow run's start
    with P.reported_as(f"models.{name}"):
        result = train(variant.model, variant.settings, data, variant.config, resume=paths.resume_state(name, seed), group=group)
    distributed.leave()
    if not group.leader:
        return  # rank 0 writes the files; every rank holds the same result

    # Temperature scaling, fitted on the validation split (the centroids keep their own scale: T = 1).
    calibration = calibrate(result.model, data.val, result.model.mean.device)
    save_checkpoint(paths.checkpoint(name, seed), result.model, model_name=variant.model, model_settings=variant.settings,
                    image_shape=data.image_shape, class_names=data.class_names, config=variant.config,
                    background=background)
    write_curves(paths.curves(name, seed), result.history)
    metrics = result.summary() | {"temperature": calibration.temperature, "val_nll_before_scaling": calibration.nll_before,
                                  "val_nll_after_scaling": calibration.nll_after}
    write_json(paths.train_metrics(name, seed), {**metrics, "model": variant.model, "device": result.device, "started": started})
    paths.resume_state(name, seed).unlink(missing_ok=True)  # only now: a failure above reruns in seconds, from the finished state
    print(f"{name} seed {seed}: val accuracy {metrics['val_accuracy']:.4f} (epoch {result.best_epoch}), {metrics['parameters']:,} parameters, "
          f"{result.seconds:.1f} s on {result.device}; temperature {calibration.temperature:.3f} "
          f"(val NLL {calibration.nll_before:.4f} -> {calibration.nll_after:.4f})")


if __name__ == "__main__":
    run_stage(main)
