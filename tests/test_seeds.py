"""Several seeds per variant: `dvc exp run -S train.seeds=[0,1]` trains only the new seed, the report and
metrics/variants.json give mean ± std over them, and MLflow groups a variant's runs by a tag."""

import json
import statistics

import mlflow
import pytest
from project import fork, read_json, run

pytestmark = pytest.mark.slow


def test_more_seeds_train_only_the_new_ones_and_the_report_aggregates_them(pipeline, tmp_path):
    project = fork(pipeline, tmp_path / "project")  # centroid and cnn, trained with seed 0
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "one seed"], project)

    done = run(["dvc", "exp", "run", "-S", "train.seeds=[0,1]", "-n", "two-seeds"], project)
    assert "Running stage 'train@cnn-1'" in done.stdout and "Running stage 'train@centroid-1'" in done.stdout
    assert "Running stage 'train@cnn-0'" not in done.stdout  # seed 0's results stand

    accuracies = [read_json(project / f"metrics/test/cnn/seed{seed}.json")["accuracy"] for seed in (0, 1)]
    summary = read_json(project / "metrics/variants.json")["cnn"]
    assert summary["seeds"] == 2
    assert summary["test_accuracy_mean"] == pytest.approx(statistics.mean(accuracies))
    assert summary["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    report = (project / "reports/report.md").read_text()
    assert "## Seeds" in report and "| cnn | 2 | " in report
    assert all(f"| cnn | {seed} | " in report for seed in (0, 1))
    assert "Over its 2 seeds: val accuracy" in report

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert "two-seeds" in json.dumps(shown) and "test_accuracy_mean" in json.dumps(shown)

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["centroid seed 0", "cnn seed 0",
                                                    "two-seeds: centroid seed 1", "two-seeds: cnn seed 1"]
    groups = {r.data.tags["imgpipe.seed_group"] for r in runs if r.data.tags["imgpipe.variant"] == "cnn"}
    assert len(groups) == 1  # siblings across both executions
