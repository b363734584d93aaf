"""Queued experiments (`dvc queue start -j 2`) run in copies of the project, yet every MLflow run
lands in the project root's store, tagged with its experiment. Slow (minutes): run it with
`pytest -m queue`."""

import json
import time

import mlflow
import pytest
from project import copy_project, run

VARIANTS = ["linear", "cnn"]
RATES = {"lr-001": 0.001, "lr-003": 0.003, "lr-010": 0.01}
pytestmark = pytest.mark.queue


def _test_accuracies(exp_show: list) -> dict[str, dict[str, float]]:
    """{experiment name: {variant: test accuracy}} from `dvc exp show --json`."""
    found = {}

    def walk(entry):
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs", []):
                name = rev.get("name")
                metrics = (((rev.get("data") or {}).get("metrics")) or {})
                if name in RATES:
                    found[name] = {v: metrics[f"metrics/test/{v}/seed0.json"]["data"]["accuracy"] for v in VARIANTS}
                walk(rev)

    for entry in exp_show:
        walk(entry)
    return found


def test_queued_experiments_land_in_the_project_store(tmp_path):
    project = copy_project(tmp_path / "project", train__epochs=2, train__variants=VARIANTS)
    for name, lr in RATES.items():
        run(["dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}", "-n", name], project)
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(5)
    assert "Failed" not in status, status

    accuracies = _test_accuracies(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    assert sorted(accuracies) == sorted(RATES)
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))  # no run stayed in a copy
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["digits"])
    for name, lr in RATES.items():
        mine = runs[runs["tags.imgpipe.dvc_experiment"] == name]
        assert sorted(mine["tags.imgpipe.variant"]) == sorted(VARIANTS), name
        for _, row in mine.iterrows():
            variant = row["tags.imgpipe.variant"]
            assert float(row["params.train.lr"]) == lr
            assert row["metrics.test_accuracy"] == pytest.approx(accuracies[name][variant]), (name, variant)
