"""What a training run records in MLflow, against a real store in a temporary folder: conftest's one store
for the test run (creating one takes a second or two), an experiment of its own for each test."""

import os
import subprocess
import sys
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
from imgpipe.tracking import claims, registry, runs
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


def test_with_async_logging_a_batch_the_store_refuses_fails_the_run_not_finishes_it(store, experiment, monkeypatch):
    """MLFLOW_ENABLE_ASYNC_LOGGING sends batches from a thread that only logs a refusal: the run ended FINISHED without
    its figures, and a rerun took it for recorded."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "true")
    log_batch = SqlAlchemyStore.log_batch

    def refused(self, run_id, metrics, params, tags):
        if metrics:
            raise MlflowException("the store refused the batch")
        return log_batch(self, run_id, metrics, params, tags)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", refused)
    with pytest.raises(MlflowException, match="the store refused the batch"):
        _log(experiment)
    (run,) = store.search_runs([store.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED" and not run.data.metrics


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


def _publisher(pid: int, start: str | None = None, machine: str | None = None) -> str:
    """A PUBLISHER tag: by default that of process `pid` on this machine."""
    return f"{claims.machine() if machine is None else machine} {pid} {claims.started(pid) if start is None else start}"


def _being_recorded(store, experiment: str, digest: str, publisher: str, status: str | None = None) -> str:
    """An unfinished run of a training, as a publish in the middle of recording it leaves it (or ended `status`)."""
    run_id = store.create_run(tracking_store.experiment_id(store, experiment),
                              tags={runs.TRAINING: digest, claims.PUBLISHER: publisher}).info.run_id
    if status is not None:
        store.set_terminated(run_id, status)
    return run_id


def _while_waiting(monkeypatch, store, finish: list[str], beat: list[str] = (), after: int = 3) -> list[int]:
    """While this process waits for runs in progress, their publishes go on: every pause, the runs in `beat` bump their
    heartbeat, and at the `after`th, the runs in `finish` are finished. Returns the count of pauses, as it grows."""
    pauses = [0]

    def pause():
        pauses[0] += 1
        for run_id in beat:
            store.set_tag(run_id, claims.HEARTBEAT, str(pauses[0]))
        if pauses[0] == after:
            for run_id in finish:
                store.set_tag(run_id, runs.MODEL_URI, "models:/m-0")
                store.set_terminated(run_id, "FINISHED")
        time.sleep(0.02)

    monkeypatch.setattr(claims, "pause", pause)
    return pauses


def test_a_run_another_publish_is_recording_is_waited_for_and_an_abandoned_one_deleted(store, experiment, monkeypatch,
                                                                                         another_process, capsys):
    """Experiments beside each other publish to one store: a run another live publish is recording (this machine's,
    or another machine's whose heartbeat goes on) is not deleted from under it; one whose publish is over is."""
    monkeypatch.setattr(claims, "STALE_SECONDS", 0.2)  # on this process's clock, from when it first sees the heartbeat
    monkeypatch.setattr(claims, "LEASE_SECONDS", 5.0)  # were a run waited for that should not be, the test would end
    ended = subprocess.Popen(["true"])
    ended.wait()
    live = {"a" * 16: _being_recorded(store, experiment, "a" * 16, _publisher(another_process)),
            "b" * 16: _being_recorded(store, experiment, "b" * 16, _publisher(another_process, machine="elsewhere"))}
    stale = _being_recorded(store, experiment, "c" * 16, _publisher(another_process, machine="elsewhere"))  # no heartbeat
    over = {"d" * 16: _publisher(ended.pid, start="1"),  # its process ended
            "e" * 16: _publisher(another_process, start="1"),  # its pid names another process now
            "f" * 16: _publisher(os.getpid()),  # this process began it and gave up on it
            "g" * 16: "an older imgpipe's"}
    over = [_being_recorded(store, experiment, digest, publisher) for digest, publisher in over.items()]
    over.append(_being_recorded(store, experiment, "h" * 16, _publisher(another_process), status="FAILED"))
    pauses = _while_waiting(monkeypatch, store, finish=list(live.values()), beat=[live["b" * 16]], after=20)
    assert runs.find_runs(experiment, [d * 16 for d in "abcdefgh"]) == live
    assert pauses[0] == 20  # it waited for the live ones until they were finished
    assert [store.get_run(run_id).info.lifecycle_stage for run_id in [stale, *over]] == ["deleted"] * 6
    waited = {line.split()[2] for line in capsys.readouterr().out.splitlines() if "being recorded by another publish" in line}
    assert waited == {*live.values(), stale}  # the others were not waited for: their publish is plainly over


def test_on_the_embedded_store_an_unfinished_run_is_never_waited_for(store, experiment, monkeypatch, mlflow_store,
                                                                      another_process, capsys):
    """There publishes take turns (store_lock): a run seen unfinished was left by one that ended without finishing it."""
    monkeypatch.setattr(paths, "MLFLOW_DB", Path(mlflow_store.removeprefix("sqlite:///")))
    monkeypatch.setattr(claims, "LEASE_SECONDS", 1.0)  # were it waited for, the test would end
    left = _being_recorded(store, experiment, "a" * 16, _publisher(another_process))
    pauses = _while_waiting(monkeypatch, store, finish=[])
    assert runs.find_runs(experiment, ["a" * 16]) == {} and store.get_run(left).info.lifecycle_stage == "deleted"
    assert pauses[0] == 0 and "being recorded by another publish" not in capsys.readouterr().out


def test_a_training_another_publish_records_meanwhile_is_recorded_once(store, experiment, monkeypatch, another_process):
    """Two publishes that both found no run for a training: the one that comes second uses the first's run, whether it
    looks once the first has begun (it waits for it), or both begin one together (it steps back and waits)."""
    first = _being_recorded(store, experiment, "0123456789abcdef", _publisher(another_process))
    _while_waiting(monkeypatch, store, finish=[first])
    assert _log(experiment)[0] == first
    monkeypatch.setattr(claims, "WAIT_SECONDS", 0.05)  # the step back's first bound
    create_run = mlflow.MlflowClient.create_run
    rivals = []

    def together(client, experiment_id, **kwargs):  # a rival's run is stored between this publish's look and its own
        monkeypatch.setattr(mlflow.MlflowClient, "create_run", create_run)
        rivals.append(_being_recorded(client, experiment, "fedcba9876543210", _publisher(another_process)))
        _while_waiting(monkeypatch, store, finish=rivals)
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
import mlflow
sys.path.insert(0, {tests!r})
from test_tracking import _log

create_run = mlflow.MlflowClient.create_run

def together(*args, **kwargs):  # both have looked and found nothing: both begin a run at once
    mlflow.MlflowClient.create_run = create_run
    Path(sys.argv[1] + ".looked").touch()
    while not Path(sys.argv[2] + ".looked").exists():
        time.sleep(0.001)
    return create_run(*args, **kwargs)

mlflow.MlflowClient.create_run = together
print(_log({experiment!r}, training="5" * 16)[0])
"""


def test_two_publishes_racing_to_record_one_training_record_it_once(store, experiment, mlflow_store, tmp_path):
    """Two real processes told to record the same training, which both look, find nothing and begin a run at once:
    one run is recorded, and both return it."""
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(tests=str(Path(__file__).parent), experiment=experiment))
    tracking_store.experiment_id(store, experiment)
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow_store, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    racers = [subprocess.Popen(["python", str(script), str(tmp_path / f"racer{i}"), str(tmp_path / f"racer{1 - i}")], cwd=tmp_path,
                               env=warm_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
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


def test_an_experiment_another_publish_makes_meanwhile_is_taken_not_a_failure(store, monkeypatch):
    """Two publishes to a server, the experiment new: both find none, the second's create is refused as existing."""
    made, lookup = [], store.get_experiment_by_name

    def late(name):
        if not made:  # this publish looked before the other made it
            made.append(store.create_experiment(name))
            return None
        return lookup(name)

    monkeypatch.setattr(store, "get_experiment_by_name", late)
    assert tracking_store.experiment_id(store, "made-meanwhile") == made[0]


def test_a_database_named_directly_keeps_its_artifacts_in_the_project_not_where_the_process_started():
    """MLflow's default ./mlruns is the current folder: a queued experiment's copy, deleted after it."""
    assert tracking_store.artifacts_beside("postgresql+psycopg2://mlflow@db-host/mlflow") == (paths.PROJECT_ROOT / "mlruns").as_uri()
    assert tracking_store.artifacts_beside("mysql://mlflow@db-host/mlflow") == (paths.PROJECT_ROOT / "mlruns").as_uri()
    assert tracking_store.artifacts_beside("sqlite:////srv/mlflow/store.db") == "file:///srv/mlflow/mlruns"
    assert tracking_store.artifacts_beside("http://mlflow-host:5000") is None  # the server's own artifact root


def test_a_run_whose_store_fails_while_it_looks_for_rivals_ends_failed_not_running(store, experiment, monkeypatch):
    from mlflow.exceptions import MlflowException

    runs_of = runs._runs_of

    def failing(client, experiment_id, digest):  # once this publish's run is made: between it and the look for rivals
        if store.search_runs([experiment_id]):
            raise MlflowException("the store went away")
        return runs_of(client, experiment_id, digest)

    monkeypatch.setattr(runs, "_runs_of", failing)
    with pytest.raises(MlflowException, match="went away"):
        _log(experiment)
    (run,) = store.search_runs([store.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"


def test_a_trial_run_whose_params_fail_ends_failed_and_leaves_no_active_run(store, experiment, monkeypatch):
    from mlflow.exceptions import MlflowException

    from imgpipe.tracking import trials

    parent = trials.parent_run(experiment, "study", {})

    def failing(*args):
        raise MlflowException("params refused")

    monkeypatch.setattr(trials, "log_params", failing)
    with pytest.raises(MlflowException, match="params refused"):
        with trials.TrialRun(experiment, parent, "trial 0", {"train": {"lr": 0.1}}, {}):
            pass
    assert mlflow.active_run() is None
    (run,) = store.search_runs([store.get_experiment_by_name(experiment).experiment_id], "tags.`mlflow.parentRunId` != ''")
    assert run.info.status == "FAILED"


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


def test_a_study_summarised_again_shows_its_new_winners_figures(store, experiment):
    from imgpipe.tracking import trials

    parent = trials.parent_run(experiment, "digits-cnn", {})
    trials.finish_parent(parent, {"test_accuracy": 0.95, "best_val_accuracy": 0.97}, {"imgpipe.best_trial": "3"}, "first")
    trials.finish_parent(parent, {"test_accuracy": 0.93, "best_val_accuracy": 0.98}, {"imgpipe.best_trial": "7"}, "second")
    run = store.get_run(parent)  # the later winner's test figure, lower though it is, beside its tag
    assert (run.data.metrics["test_accuracy"], run.data.tags["imgpipe.best_trial"]) == (0.93, "7")
    assert [(m.step, m.value) for m in store.get_metric_history(parent, "test_accuracy")] == [(0, 0.95), (1, 0.93)]


def test_a_password_in_the_tracking_uri_is_never_printed_or_committed(monkeypatch):
    """MLflow takes https://user:token@host; the failure line (and reports/mlflow_runs.json, through shown_uri) show
    the user and the host, not the token."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cr3t@127.0.0.1:9")
    assert tracking_store.shown_uri() == "http://alice:***@127.0.0.1:9"
    with pytest.raises(ImgpipeError) as error:
        with tracking_store.reported(optional=False):
            raise ConnectionError("API request to http://alice:s3cr3t@127.0.0.1:9/api/2.0/mlflow/runs/create failed")
    assert "s3cr3t" not in str(error.value) and "http://alice:***@127.0.0.1:9/api/2.0" in str(error.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com:5000")  # no password: as it is
    assert tracking_store.shown_uri() == "https://mlflow.example.com:5000"


def test_a_bug_is_not_waved_through_as_a_tracking_failure():
    """tracking.optional lets a store's failure go by with a warning, not an error of imgpipe's own code."""
    with pytest.raises(KeyError):
        with tracking_store.reported(optional=True):
            raise KeyError("val_accuracy")
    with tracking_store.reported(optional=True):  # a store's failure: a warning, and on
        raise mlflow.exceptions.MlflowException("API request failed")


def test_a_trial_run_a_dead_worker_left_running_is_ended_failed(store, experiment):
    """The sweep's summary ends the runs of trials the study failed for a silent heartbeat: the worker that would have
    ended them is gone; a run already ended stays as it is."""
    from imgpipe.tracking import trials

    client = tracking_store.store_client()
    experiment_id = tracking_store.experiment_id(client, experiment)
    dead, done = (client.create_run(experiment_id).info.run_id for _ in range(2))
    client.set_terminated(done, "FINISHED")
    assert trials.close_abandoned([dead, done]) == 1
    assert client.get_run(dead).info.status == "FAILED" and client.get_run(dead).data.tags[trials.STATE] == "FAIL"
    assert client.get_run(done).info.status == "FINISHED"
