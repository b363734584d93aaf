"""Does MLflow say what DVC's metrics files say? Every number of metrics/train/<variant>/seed<seed>.json
must be the run's own metric of that name, and every number of metrics/test/<variant>/seed<seed>.json
its test_<name>."""

import json
from pathlib import Path

import mlflow


def _numbers(figures: dict) -> dict[str, float]:
    return {key: value for key, value in figures.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def disagreements(project: Path, variants: list[str], client: mlflow.MlflowClient, seeds: tuple[int, ...] = (0,)) -> list[str]:
    """One line per number that differs or is missing, for every run; [] when all agree."""
    found = []
    for variant in variants:
        for seed in seeds:
            train = json.loads((project / f"metrics/train/{variant}/seed{seed}.json").read_text())
            test = json.loads((project / f"metrics/test/{variant}/seed{seed}.json").read_text())
            logged = client.get_run(train["mlflow_run_id"]).data.metrics
            expected = _numbers(train) | {f"test_{key}": value for key, value in _numbers(test).items()}
            found += [f"{variant} seed {seed}: {key} is {logged.get(key)} in MLflow, {value} in the metrics files"
                      for key, value in expected.items() if logged.get(key) != value]
    return found
