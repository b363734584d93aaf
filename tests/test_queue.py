"""Experiments from the queue: a grid in DVC's own syntax (`-S 'train.lr=a,b' -S 'train.batch_size=c,d'`) drained
by two workers (`dvc queue start -j 2`). Each experiment runs in a copy of the project and must run that copy's
code: the code is marked before queuing and marked otherwise in the workspace after, in ways that show in the
results, and every experiment must show the queued mark. Every experiment's runs land in the project root's MLflow store, named after it, and
the registry's candidate ends on the experiment best on validation, whichever published last."""

import hashlib
import json
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from project import copy_project, run

GRID = {"train.lr": (0.003, 0.03), "train.batch_size": (32, 64)}
VARIANT = "linear"  # one small variant keeps four whole pipelines to about a minute on two workers
MARKED = ("src/imgpipe/files.py", "src/imgpipe/serving/preprocessing.py")


def _mark_code(project, mark: str) -> None:
    """Code whose effects show: every JSON file written gains {"code": mark}, and the served code a comment."""
    files, served = (project / path for path in MARKED)
    original = run(["git", "show", f"HEAD:{MARKED[0]}"], project).stdout if mark == "workspace" else files.read_text()
    files.write_text(original + f"\n\n_write_json = write_json\n\n\ndef write_json(path, data):\n    _write_json(path, {{**data, 'code': {mark!r}}})\n")
    served.write_text(served.read_text().split("# code: ")[0] + f"# code: {mark}\n")


@pytest.fixture(scope="module")
def drained(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("queue") / "project", train__epochs=1, train__variants=[VARIANT],
                           label_issues__variant=VARIANT, label_issues__folds=2)
    _mark_code(project, "queued")  # code no other copy of imgpipe has (an installed one, say)
    run(["git", "commit", "-qam", "the code the experiments are queued with"], project)
    queued = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    grid = [arg for key, values in GRID.items() for arg in ("-S", f"{key}={','.join(map(str, values))}")]
    run(["dvc", "exp", "run", "--queue", *grid], project)
    _mark_code(project, "workspace")
    run(["git", "commit", "-qam", "the workspace moves on before the queue runs"], project)

    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(5)  # each look is a DVC process: on 2 cores, frequent looks slow the experiments they wait for
    assert "Failed" not in status, status + "".join(run(["dvc", "queue", "logs", line.split()[0]], project, check=False).stdout
                                                    for line in status.splitlines() if "Failed" in line)
    # The experiments hang off the commit they were queued from, no longer the workspace's HEAD.
    return project, queued, _experiments(json.loads(run(["dvc", "exp", "show", "--json", "--rev", queued], project).stdout))


def _experiments(exp_show: list) -> dict[str, dict]:
    """{experiment name: {"rev", "params", "train", "test"}} from `dvc exp show --json`."""
    found = {}

    def walk(entry):
        for experiment in entry.get("experiments") or []:
            for rev in experiment.get("revs", []):
                data = rev.get("data") or {}
                if rev.get("name") and data.get("metrics"):
                    metrics = data["metrics"]
                    found[rev["name"]] = {"rev": rev["rev"], "params": data["params"]["params.yaml"]["data"],
                                          "train": metrics[f"metrics/train/{VARIANT}/seed0.json"]["data"],
                                          "test": metrics[f"metrics/test/{VARIANT}/seed0.json"]["data"]}
                walk(rev)

    for entry in exp_show:
        walk(entry)
    return found


def test_a_grid_in_dvc_syntax_runs_every_combination_on_two_workers(drained):
    _, _, experiments = drained
    combinations = sorted((e["params"]["train"]["lr"], e["params"]["train"]["batch_size"]) for e in experiments.values())
    assert combinations == sorted((lr, batch) for lr in GRID["train.lr"] for batch in GRID["train.batch_size"])
    assert all(0 < e["test"]["accuracy"] <= 1 for e in experiments.values())


def test_each_experiment_ran_the_code_it_was_queued_with(drained, tmp_path):
    project, queued, experiments = drained
    queued_code = {path: run(["git", "show", f"{queued}:{path}"], project).stdout for path in MARKED}
    for name, experiment in experiments.items():
        assert experiment["train"]["code"] == "queued" and experiment["test"]["code"] == "queued", name  # its outputs
        lock = yaml.safe_load(run(["git", "show", f"{experiment['rev']}:dvc.lock"], project).stdout)
        deps = {dep["path"]: dep["md5"] for dep in lock["stages"][f"train@{VARIANT}-0"]["deps"]}
        assert deps[MARKED[0]] == hashlib.md5(queued_code[MARKED[0]].encode()).hexdigest(), name  # its dvc.lock

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["digits"])
    assert set(runs["tags.mlflow.source.git.commit"]) == {queued}  # its tags
    for model_uri in runs["tags.imgpipe.model_uri"]:  # its logged model's code
        model = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / model_uri.rsplit("/", 1)[1])))
        assert (model / "code/imgpipe/serving/preprocessing.py").read_text() == queued_code[MARKED[1]]
        assert queued_code[MARKED[1]].endswith("# code: queued\n")


def test_every_experiment_records_its_runs_in_the_root_store_named_after_it(drained):
    project, _, experiments = drained
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["digits"])
    assert sorted(runs["tags.imgpipe.dvc_experiment"]) == sorted(experiments)
    for _, row in runs.iterrows():
        experiment = experiments[row["tags.imgpipe.dvc_experiment"]]
        assert row["tags.mlflow.runName"] == f"{row['tags.imgpipe.dvc_experiment']}: {VARIANT} seed 0"
        assert float(row["params.train.lr"]) == experiment["params"]["train"]["lr"]
        assert row["metrics.test_accuracy"] == pytest.approx(experiment["test"]["accuracy"])
        assert row["metrics.val_accuracy"] == pytest.approx(experiment["train"]["val_accuracy"])


def test_the_candidate_is_the_experiment_best_on_validation_whichever_published_last(drained):
    project, _, experiments = drained
    best = max(experiments, key=lambda name: (experiments[name]["train"]["val_accuracy"], -experiments[name]["train"]["val_loss"]))
    candidate = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_model_version_by_alias("imgpipe-digits", "candidate")
    assert float(candidate.tags["val_accuracy"]) == experiments[best]["train"]["val_accuracy"]
    assert float(candidate.tags["val_loss"]) == experiments[best]["train"]["val_loss"]
