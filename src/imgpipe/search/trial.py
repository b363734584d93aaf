"""One trial of a sweep: the settings Optuna draws, trained by the pipeline's own training loop, which reports
each epoch's validation figure to the pruner; a hopeless trial stops there, writing nothing. A completed trial
keeps its checkpoint (sweeps/<study>/trial-<n>.pt, written whole or not at all) and its per-image validation
hits, from which the summary estimates how much picking the best of many flatters it."""

import base64
import math
import os
import platform
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import torch

from imgpipe import settings
from imgpipe.data.prepared import Prepared
from imgpipe.errors import ConfigError, InvalidSetting
from imgpipe.models.checkpoint import save_checkpoint
from imgpipe.models.inference import logits_in_chunks
from imgpipe.models.networks import build_model
from imgpipe.search.space import SweepConfig, applied, dvc_command
from imgpipe.tracking.trials import SWEEP, TrialRun
from imgpipe.training.loop import train

RUN = "mlflow_run"  # a trial's attribute: its MLflow run


def packed(hits: np.ndarray) -> str:
    """0/1 per image as compact text (a study's storage keeps text): 10,000 images in 1,668 characters."""
    return base64.b64encode(np.packbits(hits.astype(bool))).decode()


def unpacked(text: str, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:count]


def trainable(params: dict, values: dict, sweep: SweepConfig, data: Prepared, seed: int) -> settings.Variant:
    """The variant these searched values make, checked as the train stage checks one: a recipe it accepts, a model
    that builds. Raises ConfigError with the reason alone (the caller names what was drawn)."""
    try:
        variant = settings.variant(applied(params, values), sweep.variant, seed)
        settings.require_augmentation_fits(params, sweep.variant, variant.config, data.image_shape)
        build_model(variant.model, data.image_shape, len(data.class_names), **variant.settings)
    except (ConfigError, InvalidSetting) as error:
        raise ConfigError(str(error).removeprefix("params.yaml: ")) from None  # a model's own: `kernel_size: ...`
    return variant


def run_trial(trial: optuna.Trial, sweep: SweepConfig, params: dict, data: Prepared, *, experiment: str, parent: str,
              folder: Path, seed: int, threads: int, worker: int | None) -> float:
    """Train the drawn configuration of sweep.variant; returns its objective (the kept epoch's val figure)."""
    values = {dimension.key: dimension.suggest(trial) for dimension in sweep.space}
    try:  # check_space tried each range's ends; a value inside one can still break a rule (an even kernel_size)
        variant = trainable(params, values, sweep, data, seed)
    except ConfigError as error:
        drawn = ", ".join(f"{key}={value!r}" for key, value in values.items())
        raise ConfigError(f"params.yaml: sweep.space: trial {trial.number} drew {drawn}, which makes no recipe the pipeline "
                          f"trains ({error}); list the values that do as choices") from None
    config = variant.config if variant.config.threads else replace(variant.config, threads=threads)
    if "epochs" in trial.user_attrs:  # a dead trial's retry: Optuna copied its figures, which are not this one's
        trial.set_user_attr("epochs", 0)
        trial.set_user_attr("train_seconds", 0.0)
    # The threads this trial trained with where it chose them (train.threads 0: the cores shared among the workers):
    # thread counts change floating-point sums, so the command that reruns it names them.
    ran = values if variant.config.threads else values | {f"{settings.section_of(params, sweep.variant, 'threads')}.threads": threads}
    trial.set_user_attr("command", dvc_command(params, ran))
    trial.set_user_attr("worker", f"{platform.node()}:{os.getpid()}" + ("" if worker is None else f":{worker}"))
    tags = {SWEEP: trial.study.study_name, "imgpipe.trial": str(trial.number), "imgpipe.variant": sweep.variant,
            "imgpipe.data_fingerprint": data.fingerprint}
    logged = {"trial": values, "train": vars(config), "model": {"name": variant.model, **variant.settings}}
    with TrialRun(experiment, parent, f"trial {trial.number}", logged, tags) as run:
        trial.set_user_attr(RUN, run.run_id)  # ended by the summary should this worker die with it open
        def on_epoch(row: dict) -> None:
            run.epoch(row)
            trial.set_user_attr("epochs", row["epoch"])
            trial.set_user_attr("train_seconds", row["seconds"])  # so far: a pruned trial's training time counts too
            trial.report(row[sweep.objective], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"{sweep.objective} {row[sweep.objective]:.4f} after epoch {row['epoch']}")

        try:
            result = train(variant.model, variant.settings, data, config, on_epoch=on_epoch)
        except optuna.TrialPruned:
            run.end("PRUNED")
            raise
        summary = result.summary()
        if not math.isfinite(summary[sweep.objective]):  # a diverged training: a failed trial, in Optuna and in its run
            run.end("FAIL")
            return math.nan  # Optuna fails a NaN (an inf would count as a value)
        model = result.model
        hits = (logits_in_chunks(model, data.val.images, model.mean.device).argmax(1).cpu() == torch.from_numpy(data.val.labels)).numpy()
        save_checkpoint(folder / f"trial-{trial.number}.pt", model, model_name=variant.model, model_settings=variant.settings,
                        image_shape=data.image_shape, class_names=data.class_names, config=config)
        trial.set_user_attr("epochs", summary["epochs"])
        trial.set_user_attr("val_accuracy", summary["val_accuracy"])
        trial.set_user_attr("val_loss", summary["val_loss"])
        trial.set_user_attr("val_hits", packed(hits))
        trial.set_user_attr("train_seconds", summary["train_seconds"])
        run.end("COMPLETE", {key: summary[key] for key in ("val_accuracy", "val_loss", "train_accuracy", "train_loss",
                                                           "train_seconds", "epochs", "best_epoch")})
    return summary[sweep.objective]
