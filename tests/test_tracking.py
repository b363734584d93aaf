"""What a training run records in MLflow, against a real store in a temporary folder: conftest's one store
for the test run (creating one takes a second or two), an experiment of its own for each test."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from warm_python import warm_env

from imgpipe import paths
from imgpipe.errors import ImgpipeError
from imgpipe.models.networks import Classifier, build_model
from imgpipe.serving.preprocessing import Preprocessing
from imgpipe.tracking import registry, runs
from imgpipe.tracking import store as tracking_store


@pytest.fixture
def store(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    return mlflow.MlflowClient(mlflow_store)


def _log(experiment, training="0123456789abcdef"):
    """A linear model's training whose first epoch is the most accurate on validation: its weights are kept."""
    curves = {"train_loss": [0.9, 0.4], "train_accuracy": [0.7, 0.9], "val_loss": [0.5, 0.6], "val_accuracy": [0.9, 0.8]}
    metrics = {"val_accuracy": 0.9, "val_loss": 0.5, "train_accuracy": 0.7, "train_loss": 0.9, "parameters": 650,
               "train_seconds": 2.5, "images_per_second": 100.0, "epochs": 2, "best_epoch": 1,
               "model": "linear", "device": "cpu", "started": "2026-11-23T10:00:00.000+00:00"}
    model = Classifier(build_model("linear", (1, 8, 8), 10), (0.5,), (0.25,))
    datasets = runs.dataset_inputs("digits", "00ff00ff00ff00ff", paths.PREPARED, {"train": 8, "validation": 2})
    run_id = runs.log_training(experiment, "linear", training=training, params={"train": {"epochs": 2}}, curves=curves,
                                   metrics=metrics, model=model, example=np.zeros((2, 1, 8, 8), dtype=np.uint8),
                                   tags={"imgpipe.variant": "linear"}, datasets=datasets,
                                   preprocessing=Preprocessing.of({"class_names": list("0123456789"), "image_shape": [1, 8, 8], "background": [255, 255, 255]}))
    return run_id, metrics, model


def test_a_run_shows_the_kept_epoch_not_the_last_one(store, experiment):
    run_id, metrics, model = _log(experiment)
    run = store.get_run(run_id)
    assert run.data.metrics == {"val_accuracy": 0.9, "val_loss": 0.5, "train_accuracy": 0.7, "train_loss": 0.9,  # not epoch 2's
                                "parameters": 650, "train_seconds": 2.5, "images_per_second": 100.0, "epochs": 2,
                                "best_epoch": 1, "epoch/train_loss": 0.4, "epoch/train_accuracy": 0.9,  # curves: their last step
                                "epoch/val_loss": 0.6, "epoch/val_accuracy": 0.8}
    assert "started" not in run.data.metrics and run.data.params == {"train.epochs": "2"}
    assert [(m.step, m.value) for m in store.get_metric_history(run_id, "epoch/val_accuracy")] == [(1, 0.9), (2, 0.8)]
    assert sorted(i.tags[0].value for i in run.inputs.dataset_inputs) == ["train", "validation"]
    # The run lasts as long as its training did, from when it started.
    started = 1_795_428_000_000  # 2026-11-23T10:00:00Z in milliseconds
    assert (run.info.start_time, run.info.end_time, run.info.status) == (started, started + 2500, "FINISHED")
    assert run.info.run_name == "linear" and run.data.tags["imgpipe.variant"] == "linear"
    assert store.get_experiment_by_name(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model().network
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(logged(images), model(images))


def test_a_training_is_found_by_its_digest(store, experiment, tmp_path):
    assert runs.find_runs(experiment, ["0123456789abcdef"]) == {}  # no experiment yet
    run_id, _, _ = _log(experiment)
    other, _, _ = _log(experiment, training="fedcba9876543210")
    # A run a publish began and never finished (its store went away): not found, and deleted, so a rerun records it once.
    begun = store.create_run(store.get_experiment_by_name(experiment).experiment_id, tags={runs.TRAINING: "0000000000000000"})
    assert runs.find_runs(experiment, ["0123456789abcdef", "fedcba9876543210", "0000000000000000"]) == {
        "0123456789abcdef": run_id, "fedcba9876543210": other}
    assert store.get_run(begun.info.run_id).info.lifecycle_stage == "deleted"
    checkpoint, metrics = tmp_path / "seed0.pt", tmp_path / "seed0.json"
    checkpoint.write_bytes(b"weights")
    metrics.write_text('{"train_seconds": 1.0}')
    digest = runs.training_digest(checkpoint, metrics)
    metrics.write_text('{"train_seconds": 1.1}')  # trained again: new timings, a new run
    assert runs.training_digest(checkpoint, metrics) != digest


@pytest.fixture
def another_process():
    """The pid of a live process on this machine, other than this one: a publish recording a run, as its tag tells."""
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def _publisher(pid: int, started: str | None = None, machine: str | None = None) -> str:
    """A PUBLISHER tag: by default that of process `pid` on this machine."""
    return f"{runs._machine() if machine is None else machine} {pid} {runs._started(pid) if started is None else started}"


def _being_recorded(store, experiment: str, digest: str, publisher: str, finish_after: float | None = None,
                    status: str | None = None) -> str:
    """An unfinished run of a training, as a publish in the middle of recording it leaves it (or ended `status`);
    recorded whole by another thread `finish_after` seconds on, as that publish would."""
    run_id = store.create_run(tracking_store.experiment_id(store, experiment), tags={runs.TRAINING: digest, runs.PUBLISHER: publisher}).info.run_id
    if status is not None:
        store.set_terminated(run_id, status)

    def finish():
        store.set_tag(run_id, runs.MODEL_URI, "models:/m-0")
        store.set_terminated(run_id, "FINISHED")

    if finish_after is not None:
        threading.Timer(finish_after, finish).start()
    return run_id


def test_a_run_another_publish_is_recording_is_waited_for_and_an_abandoned_one_deleted(store, experiment, monkeypatch,
                                                                                         another_process, capsys):
    """Experiments beside each other publish to one store: a run that another live publish (this machine's, or another
    machine's within its lease) is recording is not deleted from under it; one whose publish is over is."""
    monkeypatch.setattr(runs, "WAIT_SECONDS", 0.05)
    monkeypatch.setattr(runs, "LEASE_SECONDS", 1.0)  # counted from when this process first sees the run
    ended = subprocess.Popen(["true"])
    ended.wait()
    live = {"a" * 16: _being_recorded(store, experiment, "a" * 16, _publisher(another_process), finish_after=0.5),
            "b" * 16: _being_recorded(store, experiment, "b" * 16, _publisher(another_process, machine="elsewhere"), finish_after=0.5)}
    over = {"c" * 16: _publisher(ended.pid, started="1"),  # its process ended
            "d" * 16: _publisher(another_process, started="1"),  # its pid names another process now
            "e" * 16: _publisher(os.getpid()),  # this process began it and gave up on it
            "f" * 16: _publisher(another_process, machine="elsewhere"),  # another machine's: its lease runs out
            "g" * 16: "an older imgpipe's"}
    over = [_being_recorded(store, experiment, digest, publisher) for digest, publisher in over.items()]
    over += [_being_recorded(store, experiment, "h" * 16, _publisher(another_process), status="FAILED"),  # its publish failed
             _being_recorded(store, experiment, "i" * 16, _publisher(another_process), status="FINISHED")]  # without its model
    assert runs.find_runs(experiment, [d * 16 for d in "abcdefghi"]) == live
    assert [store.get_run(run_id).info.lifecycle_stage for run_id in over] == ["deleted"] * 7
    said = capsys.readouterr().out
    assert all(f"{run_id} of this training is being recorded by another publish" in said for run_id in (live["a" * 16], over[3]))


def test_on_the_embedded_store_an_unfinished_run_is_never_waited_for(store, experiment, monkeypatch, mlflow_store,
                                                                      another_process, capsys):
    """There publishes take turns (store_lock): a run seen unfinished was left by one that ended without finishing it."""
    monkeypatch.setattr(paths, "MLFLOW_DB", Path(mlflow_store.removeprefix("sqlite:///")))
    monkeypatch.setattr(tracking_store, "EMBEDDED_STORE", mlflow_store)
    monkeypatch.setattr(runs, "LEASE_SECONDS", 0.5)  # a wait, if it waited, would end
    left = _being_recorded(store, experiment, "a" * 16, _publisher(another_process))
    assert runs.find_runs(experiment, ["a" * 16]) == {} and store.get_run(left).info.lifecycle_stage == "deleted"
    assert "being recorded by another publish" not in capsys.readouterr().out


def test_a_training_another_publish_records_meanwhile_is_recorded_once(store, experiment, monkeypatch, another_process):
    """Two publishes that both found no run for a training: the one that comes second uses the first's run, whether it
    looks once the first has begun (it waits for it), or both begin one together (it steps back and waits)."""
    monkeypatch.setattr(runs, "WAIT_SECONDS", 0.05)
    first = _being_recorded(store, experiment, "0123456789abcdef", _publisher(another_process), finish_after=0.5)
    assert _log(experiment)[0] == first
    create_run = mlflow.MlflowClient.create_run
    rivals = []

    def together(client, experiment_id, **kwargs):  # a rival's run is stored between this publish's look and its own
        monkeypatch.setattr(mlflow.MlflowClient, "create_run", create_run)
        rivals.append(_being_recorded(client, experiment, "fedcba9876543210", _publisher(another_process), finish_after=0.5))
        return create_run(client, experiment_id, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "create_run", together)
    assert _log(experiment, training="fedcba9876543210")[0] == rivals[0]
    for digest, run_id in (("0123456789abcdef", first), ("fedcba9876543210", rivals[0])):
        assert _runs_of(store, experiment, digest) == [run_id]


def _runs_of(store, experiment: str, digest: str) -> list[str]:
    return [run.info.run_id for run in store.search_runs([store.get_experiment_by_name(experiment).experiment_id],
                                                         filter_string=f"tags.`{runs.TRAINING}` = '{digest}'")]


RACER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_tracking import _log
Path(sys.argv[1]).touch()  # ready
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
print(_log({experiment!r}, training="5" * 16)[0])
"""


def test_two_publishes_racing_to_record_one_training_record_it_once(store, experiment, mlflow_store, tmp_path):
    """Two real processes, let go at once, each told to record the same training: one run, which both return."""
    script, go = tmp_path / "racer.py", tmp_path / "go"
    script.write_text(RACER.format(tests=str(Path(__file__).parent), experiment=experiment))
    tracking_store.experiment_id(store, experiment)
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow_store, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    racers = [subprocess.Popen(["python", str(script), str(tmp_path / f"ready{i}"), str(go)], cwd=tmp_path, env=warm_env(env),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(racer.poll() is None for racer in racers), [r.communicate() for r in racers]
        time.sleep(0.01)
    go.touch()
    done = [racer.communicate(timeout=120) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), done
    recorded = {out.split()[-1] for out, _ in done}
    assert len(recorded) == 1 and _runs_of(store, experiment, "5" * 16) == list(recorded), done
    assert store.get_run(recorded.pop()).info.status == "FINISHED"


def test_an_experiment_made_before_gets_its_kind(store, mlflow_store):
    experiment_id = store.create_experiment("older", artifact_location=tracking_store.artifacts_beside(mlflow_store))
    client = tracking_store.store_client()
    assert tracking_store.experiment_id(client, "older") == experiment_id
    assert store.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_runs_page_asks_the_ui_for_its_model_training_view(store, experiment, mlflow_store):
    experiment_id = store.create_experiment(experiment, artifact_location=tracking_store.artifacts_beside(mlflow_store))
    assert tracking_store.runs_page(experiment).endswith(f"/#/experiments/{experiment_id}?workflowType=machine_learning")


def test_a_model_another_imgpipe_logged_is_refused_in_one_line(store, experiment, mlflow_store):
    """Before serving, runs held torch's own format: predict asks for the checkpoint instead."""
    import mlflow.pytorch

    # Not set_experiment: it would stay the process's active experiment, for the tests after this one.
    with mlflow.start_run(experiment_id=store.create_experiment(experiment, artifact_location=tracking_store.artifacts_beside(mlflow_store))):
        # Its requirements named: else MLflow infers them by loading the model in a new Python process (5 CPU-seconds).
        logged = mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", input_example=np.zeros((2, 2), dtype=np.float32),
                                          pip_requirements=["torch"])
    with pytest.raises(ImgpipeError, match=r"not a model this imgpipe logged .*; give its checkpoint instead"):
        registry.load(logged.model_uri)


def test_a_sqlite_stores_artifacts_stay_beside_it_not_in_the_working_folder(store, experiment, mlflow_store, tmp_path, monkeypatch):
    """MLflow's default for a SQLite store is ./mlruns of whatever folder the process runs in (a checkout's own)."""
    monkeypatch.chdir(tmp_path)
    run_id, _, _ = _log(experiment)
    beside = (Path(mlflow_store.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    assert store.get_run(run_id).info.artifact_uri.startswith(beside + "/")
    assert not (tmp_path / "mlruns").exists()
    assert tracking_store.artifacts_beside("http://127.0.0.1:5000") is None  # a server decides for itself
