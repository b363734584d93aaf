"""`dvc exp run` on a fork of the shared pipeline (conftest's `pipeline`: centroid and cnn, trained with seed 0).

One experiment, read by every test here (a DVC experiment costs a training, an evaluation, the label issues, the
report and the publish stage: one of them, not one per test): it changes a setting of the centroid alone (its
distance, and an epochs key params.yaml lacks, given with `+`) and adds seed 1. What reruns, what MLflow and
`dvc exp show` record of it, and the report's mean ± std over the seeds are each checked against the baseline.
"""

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from conftest import PIPELINE_VARIANTS as VARIANTS
from project import fork, read_json, run

pytestmark = pytest.mark.slow

NAME = "l1-two-seeds"


@dataclass(frozen=True)
class Experiment:
    project: Path  # the fork, with the experiment's results applied to its workspace
    stdout: str  # what `dvc exp run` printed: the stages it ran and what they said


@pytest.fixture(scope="module")
def l1_two_seeds(pipeline, tmp_path_factory) -> Experiment:
    project = fork(pipeline, tmp_path_factory.mktemp("experiment") / "project")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline results"], project)
    done = run(["dvc", "exp", "run", "-S", "models.centroid.distance=l1", "-S", "+models.centroid.epochs=2",
                "-S", "train.seeds=[0,1]", "-n", NAME], project)
    return Experiment(project, done.stdout)


def test_an_experiment_reruns_only_what_its_settings_affect(l1_two_seeds):
    """The centroid's seed 0 trains again (its settings changed), each variant's seed 1 trains (it is new), and the
    cnn's seed 0 stands: neither its training nor its evaluation reruns (the evaluate stage keeps its results)."""
    stdout = l1_two_seeds.stdout
    new = (("centroid", 0), ("centroid", 1), ("cnn", 1))
    assert all(f"Running stage 'train@{v}-{s}'" in stdout for v, s in new)
    assert "Running stage 'train@cnn-0'" not in stdout
    assert all(f"{v} seed {s}: test accuracy" in stdout for v, s in new)
    assert "cnn seed 0: test results kept" in stdout and "cnn seed 0: test accuracy" not in stdout
    assert "Running stage 'report'" in stdout


def test_dvc_compares_the_experiment_with_its_baseline(l1_two_seeds, pipeline):
    project = l1_two_seeds.project
    shown = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    assert f'"{NAME}"' in shown and "test_accuracy_mean" in shown
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", NAME, "--all", "--json"], project).stdout)
    assert {f"metrics/test/{v}/seed0.json" for v in VARIANTS} <= set(diff)
    centroid = diff["metrics/test/centroid/seed0.json"]["accuracy"]
    assert centroid["old"] == read_json(pipeline / "metrics/test/centroid/seed0.json")["accuracy"]  # the baseline's
    assert centroid["new"] == read_json(project / "metrics/test/centroid/seed0.json")["accuracy"]  # the experiment's
    assert centroid["diff"] != 0  # the l1 distance reached the centroid's training and scoring
    assert diff["metrics/test/cnn/seed0.json"]["accuracy"]["diff"] == 0


def test_mlflow_records_the_new_trainings_alone(l1_two_seeds):
    """A run per training the experiment made, named and tagged after it; the baseline's runs keep their own report.
    Runs that differ only in their seed share a seed group, across executions; other settings make another group."""
    project, stdout = l1_two_seeds.project, l1_two_seeds.stdout
    new = [("centroid", 0), ("centroid", 1), ("cnn", 1)]
    assert all(f"{v} seed {s}: training recorded as MLflow run" in stdout for v, s in new)
    assert "cnn seed 0: training recorded" not in stdout
    assert "centroid seed 0: evaluation and report added" in stdout and "cnn seed 0: evaluation and report added" not in stdout

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(["centroid seed 0", "cnn seed 0"] + [f"{NAME}: {v} seed {s}" for v, s in new])
    tagged = [r for r in runs if r.data.tags.get("imgpipe.dvc_experiment") == NAME]
    assert sorted((r.data.tags["imgpipe.variant"], int(r.data.tags["imgpipe.seed"])) for r in tagged) == new
    distances = {r.info.run_name: r.data.params["model.distance"] for r in runs if r.data.tags["imgpipe.variant"] == "centroid"}
    assert distances == {"centroid seed 0": "l2", f"{NAME}: centroid seed 0": "l1", f"{NAME}: centroid seed 1": "l1"}
    groups: dict[str, dict[str, set[str]]] = {}
    for r in runs:
        groups.setdefault(r.data.tags["imgpipe.variant"], {}).setdefault(r.data.tags["imgpipe.seed_group"], set()).add(r.info.run_name)
    assert list(groups["cnn"].values()) == [{"cnn seed 0", f"{NAME}: cnn seed 1"}]  # across both executions
    assert sorted(map(sorted, groups["centroid"].values())) == [["centroid seed 0"], [f"{NAME}: centroid seed 0", f"{NAME}: centroid seed 1"]]

def test_the_report_aggregates_the_seeds(l1_two_seeds):
    project = l1_two_seeds.project
    accuracies = [read_json(project / f"metrics/test/cnn/seed{seed}.json")["accuracy"] for seed in (0, 1)]
    summary = read_json(project / "metrics/variants.json")["cnn"]
    assert summary["seeds"] == 2
    assert summary["test_accuracy_mean"] == pytest.approx(statistics.mean(accuracies))
    assert summary["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    report = (project / "reports/report.md").read_text()
    assert "## Seeds" in report and "| cnn | 2 | " in report
    assert all(f"| cnn | {seed} | " in report for seed in (0, 1))
    assert "Over its 2 seeds: val accuracy" in report
    # The detailed sections show each variant's seed best on validation (the headline's, for the one it puts forward).
    for variant in VARIANTS:
        train = {seed: read_json(project / f"metrics/train/{variant}/seed{seed}.json") for seed in (0, 1)}
        shown = max(train, key=lambda seed: (train[seed]["val_accuracy"], -train[seed]["val_loss"]))
        test = read_json(project / f"metrics/test/{variant}/seed{shown}.json")["accuracy"]
        (row,) = [line for line in report.splitlines() if line.startswith(f"| {variant} | {train[shown]['model']} | ")]
        assert re.search(rf"\| (\*\*)?{test:.4f}(\*\*)? \(", row), (variant, shown, row)  # its test accuracy (bold if best)
