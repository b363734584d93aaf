"""The registered model imgpipe-<experiment>: each execution's variant best on validation registered as a version,
which becomes the `candidate` only by beating the current one on the same validation split,
promoted to `champion` by hand (imgpipe.promote), and a registered or logged model (`models:/imgpipe-digits@champion`,
`runs:/<id>/model`) loaded as predict uses a checkpoint: a module taking uint8 images (B, C, H, W), and the
preprocessing its images need."""

import contextlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow

from imgpipe.errors import ImgpipeError
from imgpipe.tracking.runs import MODEL_URI
from imgpipe.tracking.store import redacted, store_client, store_lock, tracking_uri

if TYPE_CHECKING:
    from torch import nn

    from imgpipe.serving.preprocessing import Preprocessing

FINGERPRINT = "imgpipe.data_fingerprint"
VALIDATION = "imgpipe.validation_fingerprint"  # the validation split's own: versions compare on it
CANDIDATE, CHAMPION = "candidate", "champion"  # aliases of registered versions (MLflow's stages are deprecated)
FROM_RUN = ("imgpipe.variant", "imgpipe.seed", FINGERPRINT, VALIDATION, "imgpipe.dvc_experiment", "mlflow.source.git.commit")


def registered_name(experiment: str) -> str:
    """imgpipe-<experiment>, less what a registered model's name cannot hold: MLflow refuses '/' and ':' (an experiment
    `team/digits`, a Databricks path `/Users/me/digits`), and a quote would end the searches' quoted name early."""
    return "imgpipe-" + (re.sub(r"[/:'\"]+", "-", experiment).strip("-") or "experiment")


@dataclass(frozen=True)
class Registration:
    version: str
    candidate: bool  # whether the version holds `candidate` now
    why: str  # one line: why it took the alias, kept it, or was refused it


# What "better" means between experiments: the validation figures the pipeline chooses by (higher val accuracy,
# then lower val loss), compared only on the same validation split: the same validation fingerprint, so a model
# trained with images excluded from training competes with the one before (a version registered before that tag
# existed compares by the fingerprint of all its data).
def compared_on(a: dict, b: dict) -> str:
    """The tag two versions' figures compare by."""
    return VALIDATION if VALIDATION in a and VALIDATION in b else FINGERPRINT


def same_validation(a: dict, b: dict) -> bool:
    key = compared_on(a, b)
    return a.get(key) == b.get(key)


def _yardstick(tags: dict) -> tuple[float, float] | None:
    try:
        return float(tags["val_accuracy"]), -float(tags["val_loss"])
    except (KeyError, ValueError):
        return None


def candidacy(new: dict, current: dict | None, version: str, current_version: str | None) -> tuple[bool, str]:
    """Whether the version tagged `new` takes `candidate` from the one tagged `current`, and the line saying why:
    only by beating it on validation, on the same validation split. Test figures never count."""
    mine = _yardstick(new)
    if current is None or current_version == version:
        return True, f"version {version} is the candidate" + ("" if current is None else " (unchanged)")
    theirs = _yardstick(current)
    if theirs is None:
        return True, f"version {version} is the candidate (version {current_version} recorded no val figures to compare)"
    if not same_validation(new, current):
        key = compared_on(new, current)
        return False, (f"version {version} is not the candidate: it was scored on another validation split ({key.removeprefix('imgpipe.')} "
                       f"{new.get(key)}) than candidate version {current_version} ({current.get(key)}), so their val figures are "
                       "not comparable")
    if mine is not None and mine > theirs:
        if mine[0] == theirs[0]:
            return True, (f"version {version} is the candidate: val accuracy {mine[0]:.4f} as version {current_version}'s, "
                          f"with a lower val loss ({-mine[1]:.4f} < {-theirs[1]:.4f})")
        return True, f"version {version} is the candidate: val accuracy {mine[0]:.4f} beats version {current_version}'s {theirs[0]:.4f}"
    shown = "?" if mine is None else f"{mine[0]:.4f}"
    return False, (f"version {version} is not the candidate: its val accuracy {shown} does not beat candidate version "
                   f"{current_version}'s {theirs[0]:.4f} on the same validation split")


@store_lock()  # the comparison and the alias move are one step: parallel experiments publish one at a time
def register(experiment: str, run_id: str, figures: dict[str, float]) -> Registration:
    """Register a run's model as a version of imgpipe-<experiment>, tagged with where it came from (the run's
    variant, seed, data fingerprint, DVC experiment, commit) and `figures` (val_accuracy and val_loss among
    them), and give it the alias `candidate` if it beats the current candidate on validation (see candidacy),
    then settle the alias (see settle). A run registered before keeps its version."""
    client = store_client()
    name = registered_name(experiment)
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        version, tags = found[0].version, found[0].tags
    else:
        run_tags = client.get_run(run_id).data.tags
        tags = {key: run_tags[key] for key in FROM_RUN if key in run_tags} | {key: str(value) for key, value in figures.items()}
        version = mlflow.register_model(run_tags.get(MODEL_URI, f"runs:/{run_id}/model"), name, tags=tags).version
        # Two publishes of one training to a server (no lock) may both have found no version and both registered: the
        # first version stands, the later goes. The later's publish sees the first, having registered after it.
        twins = sorted(client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"), key=lambda v: int(v.version))
        for twin in twins[1:]:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # the other publish removed it already
                client.delete_model_version(name, twin.version)
        if twins:
            version, tags = twins[0].version, twins[0].tags
    current = _candidate(client, name)
    takes, why = candidacy(tags, current and current.tags, str(version), current and str(current.version))
    if takes:
        client.set_registered_model_alias(name, CANDIDATE, version)
    holder = settle(client, name)
    if holder is not None and str(holder.version) != str(version):  # the candidate is another version, maybe moved meanwhile
        beats, why = candidacy(tags, holder.tags, str(version), str(holder.version))
        if beats:  # (only a holder without val figures, moved there meanwhile)
            why = f"version {version} is not the candidate: version {holder.version} took it meanwhile"
        takes = False
    return Registration(str(version), takes, why)


NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # MLflow's codes for a model, version or alias it lacks


def _candidate(client, name: str):
    try:
        return client.get_model_version_by_alias(name, CANDIDATE)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code in NOT_FOUND:  # no candidate yet
            return None
        raise  # a store that failed to answer: not "no candidate", which would move the alias


def settle(client, name: str, rounds: int = 10):
    """The candidate once it stays: moved, until then, to the best version on its validation split.

    A tracking server serializes nothing between two publishes (the store lock is the embedded store's file): a
    worse experiment may compare with the candidate before a better one replaces it, and move the alias after.
    Each publish therefore looks again, at every version, once it has moved the alias or declined to: the last to
    look sees every version registered before, so the candidate ends on the best (a tie keeps the one holding it),
    whatever the order. Returns the version holding the alias (None: no candidate yet)."""
    holder = _candidate(client, name)
    for _ in range(rounds):
        if holder is None or _yardstick(holder.tags) is None:
            return holder
        rivals = [v for v in client.search_model_versions(f"name = '{name}'")
                  if same_validation(v.tags, holder.tags) and _yardstick(v.tags) is not None]
        best = max(rivals, key=lambda v: _yardstick(v.tags))
        if _yardstick(best.tags) <= _yardstick(holder.tags):
            return holder
        client.set_registered_model_alias(name, CANDIDATE, best.version)
        holder = _candidate(client, name)
    return holder


def load(uri: str, device: str = "auto") -> tuple["nn.Module", "Preprocessing"]:
    """The model at an MLflow URI and its preprocessing (its temperature: the network applies it already), computing on
    `device` (auto: where the served model would, IMGPIPE_SERVE_DEVICE's choice)."""
    from imgpipe.serving.model import SERVE_DEVICE, ImageClassifier  # here: torch's import, for a logged model only

    store_client()  # the store the stages use (MLFLOW_TRACKING_URI, else the project's mlflow.db)
    served_on = os.environ.get(SERVE_DEVICE)
    try:
        import mlflow.pyfunc

        if device != "auto":  # the served model places itself, as it loads, where this variable says
            os.environ[SERVE_DEVICE] = device
        model = mlflow.pyfunc.load_model(uri)
    except Exception as error:  # MLflow raises many kinds: no such model or alias, store unreachable
        raise ImgpipeError(redacted(f"{uri}: cannot load it from MLflow at {tracking_uri()} "
                                    f"({type(error).__name__}: {' '.join(str(error).split())[:200]})")) from None
    finally:
        if served_on is None:
            os.environ.pop(SERVE_DEVICE, None)
        else:
            os.environ[SERVE_DEVICE] = served_on

    try:
        served = model.unwrap_python_model()
    except mlflow.exceptions.MlflowException:  # another flavour: an older imgpipe logged torch's own format
        served = None
    if not isinstance(served, ImageClassifier):
        raise ImgpipeError(f"{uri}: not a model this imgpipe logged (an older one's, or another kind); give its "
                           "checkpoint instead (models/<variant>/seed<seed>.pt)")
    return served.network, served.preprocessing
