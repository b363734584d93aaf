"""Several seeds per variant: `dvc exp run -S train.seeds=[0,1,2]` trains only the new seeds, the report and
metrics/variants.json give mean ± std over them, and MLflow groups a variant's runs by a tag."""

import json
import statistics

import mlflow
import pytest
from project import copy_project, read_json, run

pytestmark = pytest.mark.slow


def test_more_seeds_train_only_the_new_ones_and_the_report_aggregates_them(tmp_path):
    project = copy_project(tmp_path / "project", train__epochs=1, train__variants=["linear"])
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "one seed"], project)

    done = run(["dvc", "exp", "run", "-S", "train.seeds=[0,1,2]", "-n", "three-seeds"], project)
    assert "Running stage 'train@linear-1'" in done.stdout and "Running stage 'train@linear-2'" in done.stdout
    assert "Running stage 'train@linear-0'" not in done.stdout  # seed 0's results stand

    accuracies = [read_json(project / f"metrics/test/linear/seed{seed}.json")["accuracy"] for seed in (0, 1, 2)]
    summary = read_json(project / "metrics/variants.json")["linear"]
    assert summary["seeds"] == 3
    assert summary["test_accuracy_mean"] == pytest.approx(statistics.mean(accuracies))
    assert summary["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    report = (project / "reports/report.md").read_text()
    assert "## Seeds" in report and f"| linear | 3 | " in report
    assert all(f"| linear | {seed} | " in report for seed in (0, 1, 2))
    assert "Over its 3 seeds: val accuracy" in report

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert "three-seeds" in json.dumps(shown) and "test_accuracy_mean" in json.dumps(shown)

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["linear seed 0", "linear seed 1", "linear seed 2"]
    assert len({r.data.tags["imgpipe.seed_group"] for r in runs}) == 1  # siblings across both executions
