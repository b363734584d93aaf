"""Does MLflow say what DVC's metrics files say? Every number of metrics/train/<variant>/seed<seed>.json
must be the run's own metric of that name, every number of metrics/test/<variant>/seed<seed>.json
its test_<name>, and every value of the curves (metrics/curves/<variant>/seed<seed>/) its epoch/ history."""

import json
from pathlib import Path

import mlflow
import pandas as pd


def _numbers(figures: dict) -> dict[str, float]:
    return {key: value for key, value in figures.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def disagreements(project: Path, variants: list[str], client: mlflow.MlflowClient, seeds: tuple[int, ...] = (0,)) -> list[str]:
    """One line per number that differs or is missing, for every run; [] when all agree."""
    found = []
    for variant in variants:
        for seed in seeds:
            train = json.loads((project / f"metrics/train/{variant}/seed{seed}.json").read_text())
            test = json.loads((project / f"metrics/test/{variant}/seed{seed}.json").read_text())
            run_id = json.loads((project / "reports/mlflow_runs.json").read_text())["runs"][variant][str(seed)]
            logged = client.get_run(run_id).data.metrics
            expected = _numbers(train) | {f"test_{key}": value for key, value in _numbers(test).items()}
            found += [f"{variant} seed {seed}: {key} is {logged.get(key)} in MLflow, {value} in the metrics files"
                      for key, value in expected.items() if logged.get(key) != value]
            for measure in ("loss", "accuracy"):
                curve = pd.read_csv(project / f"metrics/curves/{variant}/seed{seed}/{measure}.csv")
                for split in ("train", "val"):
                    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"epoch/{split}_{measure}"))
                    written = [(int(epoch), float(value)) for epoch, value in zip(curve["epoch"], curve[split])]
                    if history != written:
                        found.append(f"{variant} seed {seed}: epoch/{split}_{measure} is {history} in MLflow, {written} in the curves")
    return found
