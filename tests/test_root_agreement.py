"""After `make run` (dvc repro in the project itself), MLflow's store and the metrics files agree."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from agreement import disagreements
from mlflow.exceptions import MlflowException

ROOT = Path(__file__).resolve().parents[1]


def test_the_projects_own_runs_agree_with_its_metrics_files():
    store = ROOT / "mlflow.db"
    if not store.exists():
        pytest.skip("the project has no MLflow store yet: run `make run` first")
    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    variants, seeds = train["variants"], train["seeds"]
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = ROOT / "reports/mlflow_runs.json"
    for variant in variants:
        for seed in seeds:
            run_id = json.loads(runs.read_text())["runs"][variant][str(seed)]
            try:
                client.get_run(run_id)
            except MlflowException:  # the committed file names a run of the machine that committed it
                pytest.skip(f"{runs.name} names run {run_id}, which this store does not hold: run `make run` first")
    assert disagreements(ROOT, variants, client, seeds) == []
