"""MLflow runs: one per trained variant and seed, holding its params, per-epoch curves, test metrics,
model and report. A run is made once per training (its checkpoint and metrics file): a publish that runs
again finds the run it made before.

Every run is tagged with the DVC experiment that made it, the git commit, the data's fingerprint
and the device; the runs of one pipeline execution share the tag `imgpipe.execution`.
"""

import contextlib
import hashlib
import json
import random
import tempfile
import time
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from imgpipe import provenance
from imgpipe.tracking import claims
from imgpipe.tracking.store import experiment_id, store_client, store_lock


def dataset_inputs(name: str, data_fingerprint: str, folder: Path, images: dict[str, int]) -> list[DatasetInput]:
    """The prepared splits as MLflow dataset inputs, which fill the runs table's Dataset column: one
    per split, named after the dataset and split, the data fingerprint as digest, the split's role
    as context. images: context (train, validation, test) -> how many images the split holds."""
    return [
        DatasetInput(
            Dataset(name=f"{name}-{context}", digest=data_fingerprint, source_type="local",
                    source=json.dumps({"uri": folder.as_posix(), "split": context}), profile=json.dumps({"images": count})),
            tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)],
        )
        for context, count in images.items()
    ]


def run_tags(variant: str, seed: int, seed_group: str, device: str, data_fingerprint: str, params: dict,
             precision: str = "", hardware: str = "", resumed_after_epochs: list[int] = (),
             validation_fingerprint: str = "") -> dict[str, str]:
    """Where a run came from: DVC experiment, git commit and state, data, device (with the arithmetic and the
    hardware it ran in: the same settings give other last digits elsewhere), its execution, and the epochs after which
    torchrun's restarts resumed it, if any (the count is the metric `restarts`).
    seed_group names the runs that differ only in their seed, whichever execution made them."""
    commit = provenance.git_commit()
    experiment = provenance.dvc_experiment()
    # The runs of one `dvc repro` or `dvc exp run` share this: same experiment, or same code and params.
    execution = experiment or f"{commit[:8] or 'nogit'}-{provenance.params_hash(params)}"
    tags = {
        "imgpipe.variant": variant,
        "imgpipe.seed": str(seed),
        "imgpipe.seed_group": seed_group,  # group by it in the UI to see a variant's runs over its seeds
        "imgpipe.device": device,
        "imgpipe.data_fingerprint": data_fingerprint,
        "imgpipe.execution": execution,
    }
    if validation_fingerprint:  # the split its val figures were measured on: what the registry compares versions by
        tags["imgpipe.validation_fingerprint"] = validation_fingerprint
    tags |= {key: value for key, value in (("imgpipe.precision", precision), ("imgpipe.hardware", hardware)) if value}
    if resumed_after_epochs:
        tags["imgpipe.resumed_after_epochs"] = ", ".join(map(str, resumed_after_epochs))
    if experiment:
        tags["imgpipe.dvc_experiment"] = experiment
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["imgpipe.git_dirty"] = str(provenance.git_dirty()).lower()
    return tags


def run_name(variant: str, seed: int) -> str:
    """`cnn seed 0`; in a DVC experiment after it, `lr-003: cnn seed 0`, so a grid's runs tell themselves apart."""
    experiment = provenance.dvc_experiment()
    return f"{experiment}: {variant} seed {seed}" if experiment else f"{variant} seed {seed}"


CURVE = "epoch/"  # prefix of the per-epoch metrics; the MLflow UI groups their charts under it


def numeric(figures: dict) -> dict[str, float]:
    """The numbers of a metrics file (MLflow metrics are numbers; names and ids are not)."""
    return {key: value for key, value in figures.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """{'data': {'dataset': 'digits'}} -> {'data.dataset': 'digits'}"""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def log_params(client, run_id: str, params: dict) -> None:
    """Nested settings as dotted params, in batches (MLflow takes at most 100 params per batch)."""
    logged = [Param(key, str(value)) for key, value in flatten(params).items()]
    # synchronous here and for every figure and tag a run is judged complete by: under MLFLOW_ENABLE_ASYNC_LOGGING a
    # batch the store refuses is only logged, and the run would be finished (so never recorded again) without it.
    for start in range(0, len(logged), 100):
        client.log_batch(run_id, params=logged[start:start + 100], synchronous=True)


MODEL_URI = "imgpipe.model_uri"  # tag: where the run's logged model is, for the registry
TRAINING = "imgpipe.training"  # tag: the digest of the training a run records (see training_digest)


def training_digest(*files: Path) -> str:
    """What identifies one training: its checkpoint and metrics file. Training again makes a new
    metrics file (its timings), so a new digest and a new run; a report run again makes neither."""
    digest = hashlib.blake2b(digest_size=8)
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@store_lock()
def find_runs(experiment: str, trainings: list[str]) -> dict[str, str]:
    """The runs already made for these trainings (digests): digest -> run id. Only finished ones; one that another
    publish is recording (an experiment beside this one, on a store they share) is waited for; one whose publish
    stopped (the store went away in the middle of it) is deleted, for a rerun to record the training anew, once."""
    client = store_client()
    found = client.get_experiment_by_name(experiment)
    if found is None or not trainings:
        return {}
    return _recorded(client, found.experiment_id, trainings, claims.Watch())


def _runs_of(client, experiment_id: str, digest: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`{TRAINING}` = '{digest}'")


def _recorded(client, experiment_id: str, digests: list[str], watch: "claims.Watch") -> dict[str, str]:
    """The finished run of each training that has one: digest -> run id. Runs other publishes are recording are waited
    for (they may finish them, or end without finishing them), all at once; those whose publish is over are deleted."""
    recorded, waiting, announced = {}, list(digests), set()
    while True:
        in_progress = []
        for digest in waiting:
            runs = _runs_of(client, experiment_id, digest)
            finished = [run for run in runs if run.info.status == "FINISHED"]
            if finished:
                recorded[digest] = finished[0].info.run_id
                continue
            for run in runs:
                if watch.in_progress(run):
                    in_progress.append((digest, run))
                else:
                    print(f"MLflow run {run.info.run_id} was begun and not finished (its publish stopped): deleted, to record it again")
                    client.delete_run(run.info.run_id)
        waiting = sorted({digest for digest, _ in in_progress})
        if not waiting:
            return recorded
        for _, run in in_progress:
            if run.info.run_id not in announced:
                announced.add(run.info.run_id)
                print(f"MLflow run {run.info.run_id} of this training is being recorded by another publish "
                      f"(process {run.data.tags[claims.PUBLISHER].split()[1]}): waiting for it")
        claims.pause()


def _milliseconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _skip_module_scan(packages: dict[str, str]) -> None:
    """MLflow checks the requirements a model names against the installed versions, and first maps the
    files of every installed distribution to its modules: about 2 s with torch's CUDA wheels, for the
    packages named here. Give it that map for them (module -> package) (once per process, before its own, if its
    internals are still where MLflow 3 keeps them); the versions are still checked."""
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", False) is None:
        requirements_utils._MODULES_TO_PACKAGES = {module: [package] for module, package in packages.items()}


@store_lock()
def log_training(experiment: str, run_name: str, *, training: str, params: dict, curves: dict[str, list[float]],
                 metrics: dict, model, example: np.ndarray, tags: dict[str, str], datasets: list[DatasetInput],
                 preprocessing) -> str:
    """Record a finished training as a new run tagged with its digest (`training`); returns its id.

    `metrics` are the run's figures as metrics/train/<variant>/seed<seed>.json has them (those of the
    kept weights), including `started` (ISO time) and `train_seconds`, which become the run's start and
    end. `curves`: name -> one value per epoch, as the DVC plots hold them (train_loss, val_accuracy, ...);
    they go under `epoch/`, one step per epoch. The two cannot share names: MLflow shows a metric's
    last step as its value, and the last epoch is not always the one whose weights are kept.
    The model is logged as imgpipe.serving's pyfunc (`example`: a few of its uint8 input images, to trace it),
    with its `preprocessing`: what predict and `mlflow models serve` need to read images for it.
    """
    client = store_client()
    started = _milliseconds(metrics["started"])
    ended = started + int(metrics["train_seconds"] * 1000)
    experiment = experiment_id(client, experiment)
    # Another publish may have recorded it, or begun to, since this one looked (on a store without store_lock): its
    # run is used. Two that begin one together both see the other's once theirs is stored (a run is stored with its
    # tags at once), and both step back, each for a random while, and look again: the first back records it.
    watch, step_back = claims.Watch(), claims.WAIT_SECONDS
    while True:
        if recorded := _recorded(client, experiment, [training], watch):
            return recorded[training]
        run_id = client.create_run(experiment, start_time=started, run_name=run_name,
                                   tags=tags | {TRAINING: training, claims.PUBLISHER: claims.publisher()}).info.run_id
        try:
            rivals = [run for run in _runs_of(client, experiment, training)
                      if run.info.run_id != run_id and (run.info.status == "FINISHED" or watch.in_progress(run))]
            if not rivals:
                break
            client.delete_run(run_id)
        except BaseException:  # the store failed between the two: the run must not stay RUNNING for good
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
            raise
        time.sleep(random.uniform(0, step_back))
        step_back *= 2
    try:
        with claims.heartbeat(client, run_id):
            _record(client, run_id, params=params, curves=curves, metrics=metrics, ended=ended, model=model,
                    example=example, datasets=datasets, preprocessing=preprocessing)
    except BaseException:
        with contextlib.suppress(Exception):  # given up: the publishes beside it need not wait for it
            client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _record(client, run_id: str, *, params: dict, curves: dict[str, list[float]], metrics: dict, ended: int, model,
            example: np.ndarray, datasets: list[DatasetInput], preprocessing) -> None:
    log_params(client, run_id, params)
    client.log_inputs(run_id, datasets=datasets)
    points = [Metric(f"{CURVE}{name}", float(value), ended, epoch)
              for name, values in curves.items() for epoch, value in enumerate(values, start=1)]
    points += [Metric(key, float(value), ended, 0) for key, value in numeric(metrics).items()]
    for start in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=points[start:start + 1000], synchronous=True)
    from imgpipe.serving import export  # here: torch's import, which a publish whose runs exist already skips

    _skip_module_scan(export.distributions())
    with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=export.LOADER,
            artifacts=export.artifacts(model, example, preprocessing, Path(folder)),
            code_paths=[str(export.copy_code(Path(folder) / "code"))],  # the served code alone: loads anywhere
            pip_requirements=export.requirements(),  # derived from what that code imports
        )
        # Before start_run's end marks the run finished: a finished run has its model.
        client.set_tag(run_id, MODEL_URI, logged.model_uri, synchronous=True)  # MLflow 3 keeps models apart from run artifacts: models:/m-...
    client.set_terminated(run_id, "FINISHED", end_time=ended)  # the run lasts as long as its training did
    mlflow.flush_async_logging()  # with MLFLOW_ENABLE_ASYNC_LOGGING, stored before the stage ends (os._exit)


EVALUATION = "imgpipe.evaluation"  # tag: the digest of the test metrics a run's evaluation added, set once all of it is


@store_lock()
def publish_evaluation(run_id: str, metrics: dict[str, float], artifacts: dict[str, Path], tags: dict[str, str]) -> bool:
    """Add test metrics, tags and files (artifacts: folder in the run -> file or folder here) to a
    variant's training run, unless the run holds this evaluation already (its EVALUATION tag, set last: a publish
    stopped halfway adds it all again, the same files in the same places): a variant that this execution did not
    retrain or re-evaluate keeps what its own execution recorded. Returns whether anything was added."""
    client = store_client()
    digest = hashlib.blake2b(json.dumps({key: float(value) for key, value in metrics.items()}, sort_keys=True).encode(),
                             digest_size=8).hexdigest()
    if client.get_run(run_id).data.tags.get(EVALUATION) == digest:
        return False
    # Through the client, not start_run: reopening the run would move its end time to now, and the
    # UI's Duration would count the wait for the other variants and the report.
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
                     tags=[RunTag(key, value) for key, value in tags.items()], synchronous=True)
    for folder, path in artifacts.items():
        if Path(path).is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=folder)
        else:
            client.log_artifact(run_id, str(path), artifact_path=folder)
    client.set_tag(run_id, EVALUATION, digest, synchronous=True)
    mlflow.flush_async_logging()  # with MLFLOW_ENABLE_ASYNC_LOGGING, stored before the stage ends (os._exit)
    return True


