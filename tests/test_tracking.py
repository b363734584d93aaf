"""What a training run records in MLflow, against a real store in a temporary folder."""

import numpy as np
import pytest
import torch

from imgpipe import tracking
from imgpipe.models import Classifier, build_model


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tracking.mlflow.MlflowClient(uri)


def test_a_run_shows_the_kept_epoch_not_the_last_one(store):
    history = [  # epoch 1 is the most accurate on validation: its weights are the ones kept
        {"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.7, "val_loss": 0.5, "val_accuracy": 0.9, "seconds": 1.0},
        {"epoch": 2, "train_loss": 0.4, "train_accuracy": 0.9, "val_loss": 0.6, "val_accuracy": 0.8, "seconds": 2.0},
    ]
    summary = {key: history[0][key] for key in ("val_accuracy", "val_loss", "train_accuracy", "train_loss")}
    summary |= {"parameters": 650, "train_seconds": 2.0, "images_per_second": 100.0, "epochs": 2, "best_epoch": 1}
    model = Classifier(build_model("linear", (1, 8, 8), 10), (0.5,), (0.25,))
    datasets = tracking.dataset_inputs("digits", "00ff00ff00ff00ff", tracking.paths.PREPARED, {"train": 8, "validation": 2})
    run_id = tracking.log_training("digits", "linear", params={"train": {"epochs": 2}}, history=history, metrics=summary,
                                   model=model, example=np.zeros((2, 1, 8, 8), dtype=np.uint8), tags={}, datasets=datasets)
    run = store.get_run(run_id)
    assert {key: run.data.metrics[key] for key in summary} == summary  # not epoch 2's 0.8
    assert [m.value for m in store.get_metric_history(run_id, "epoch/val_accuracy")] == [0.9, 0.8]
    assert sorted(i.tags[0].value for i in run.inputs.dataset_inputs) == ["train", "validation"]
    experiment = store.get_experiment_by_name("digits")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    logged = tracking.mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(logged(images), model(images))


def test_an_experiment_made_before_gets_its_kind(store):
    experiment_id = store.create_experiment("older")
    client = tracking._client()
    assert tracking._experiment_id(client, "older") == experiment_id
    assert store.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_runs_page_asks_the_ui_for_its_model_training_view(store):
    experiment_id = store.create_experiment("digits")
    assert tracking.runs_page("digits").endswith(f"/#/experiments/{experiment_id}?workflowType=machine_learning")
