"""MLflow tracking: one run per variant holding its params, per-epoch curves, test metrics and model.

Runs go to the embedded store at the project root (sqlite:///mlflow.db, artifacts in mlruns/),
which `mlflow ui` opens from there, unless MLFLOW_TRACKING_URI names another store or a server.
"""

import os
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.models import infer_signature

import imgpipe
from imgpipe import paths

EMBEDDED_STORE = f"sqlite:///{paths.MLFLOW_DB}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or EMBEDDED_STORE


def _client():
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient()


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Keep artifacts beside the embedded store, not in whatever folder the stage was started from.
    location = paths.MLFLOW_ARTIFACTS.as_uri() if tracking_uri() == EMBEDDED_STORE else None
    return client.create_experiment(name, artifact_location=location)


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


def log_training(experiment: str, run_name: str, *, params: dict, history: list[dict], metrics: dict,
                 model, example: np.ndarray, tags: dict[str, str]) -> str:
    """Record a finished training as a new run; returns its id for evaluate to add test metrics to."""
    client = _client()
    with mlflow.start_run(experiment_id=_experiment_id(client, experiment), run_name=run_name, tags=tags) as run:
        mlflow.log_params(flatten(params))
        now = int(time.time() * 1000)
        curves = [Metric(key, float(value), now, row["epoch"]) for row in history for key, value in row.items() if key != "epoch"]
        for start in range(0, len(curves), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run.info.run_id, metrics=curves[start:start + 1000])
        # Final values of the curves are their last step already; log only the other summaries.
        mlflow.log_metrics({key: value for key, value in metrics.items() if key not in history[0]})
        model = model.cpu().eval()
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            # The pickled model refers to imgpipe's classes: ship the package with it, and name the
            # requirements rather than let MLflow spend seconds inferring them.
            code_paths=[str(Path(imgpipe.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
        )
        return run.info.run_id


def log_evaluation(run_id: str, metrics: dict[str, float], artifacts: list[Path]) -> None:
    """Add test metrics and files to the variant's training run."""
    _client()
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        for artifact in artifacts:
            mlflow.log_artifact(str(artifact))
