"""After `dvc repro`, MLflow's store and the metrics files agree, and the agreement check (tests/agreement.py)
reports every number that does not. Checked on the shared pipeline run (conftest's `pipeline`: the project's
code and params.yaml, shrunk, after `dvc repro`), which a clean clone builds, unlike the project's own outputs."""

import json
import shutil

import mlflow
import pandas as pd
import pytest
import yaml
from agreement import disagreements

pytestmark = pytest.mark.slow  # the shared pipeline run


def _client(project) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def test_the_pipelines_runs_agree_with_its_metrics_files(pipeline):
    train = yaml.safe_load((pipeline / "params.yaml").read_text())["train"]
    variants, seeds = train["variants"], tuple(train["seeds"])
    runs = json.loads((pipeline / "reports/mlflow_runs.json").read_text())["runs"]
    assert {variant: sorted(runs[variant]) for variant in variants} == {variant: [str(s) for s in seeds] for variant in variants}
    assert disagreements(pipeline, variants, _client(pipeline), seeds) == []


def test_every_kind_of_difference_is_reported(pipeline, tmp_path):
    """The same run's files, changed where MLflow cannot know: a training figure, a test figure, a figure MLflow
    never got, and one point of a curve. Each is one line naming the run, the figure and both values."""
    for folder in ("metrics/train", "metrics/test", "metrics/curves", "reports"):
        shutil.copytree(pipeline / folder, tmp_path / folder)
    train_file, test_file = tmp_path / "metrics/train/cnn/seed0.json", tmp_path / "metrics/test/centroid/seed0.json"
    train, test = json.loads(train_file.read_text()), json.loads(test_file.read_text())
    val_accuracy, accuracy = train["val_accuracy"], test["accuracy"]
    train_file.write_text(json.dumps(train | {"val_accuracy": val_accuracy + 0.25, "unlogged": 3}))
    test_file.write_text(json.dumps(test | {"accuracy": accuracy / 2}))
    curve_file = tmp_path / "metrics/curves/cnn/seed0/loss.csv"
    curve = pd.read_csv(curve_file)
    logged = [(int(epoch), float(value)) for epoch, value in zip(curve["epoch"], curve["val"])]
    curve.loc[len(curve) - 1, "val"] = 9.5
    curve.to_csv(curve_file, index=False)

    found = disagreements(tmp_path, ["centroid", "cnn"], _client(pipeline))
    assert found == [
        f"centroid seed 0: test_accuracy is {accuracy} in MLflow, {accuracy / 2} in the metrics files",
        f"cnn seed 0: val_accuracy is {val_accuracy} in MLflow, {val_accuracy + 0.25} in the metrics files",
        "cnn seed 0: unlogged is None in MLflow, 3 in the metrics files",
        f"cnn seed 0: epoch/val_loss is {logged} in MLflow, {logged[:-1] + [(logged[-1][0], 9.5)]} in the curves",
    ]
