"""The team setup: the pipeline's tracking, registry, promotion and serving against a real `mlflow server`
on 127.0.0.1, on PostgreSQL where it is installed (tests/servers.py), read back through MLflow's client.
Only the publish stage talks to MLflow: `dvc repro` retrains a fork of the shared pipeline on 2 processes
(train.devices: 2, the CPU's gloo) with the server as its store; then `champion` is promoted and a real
`mlflow models serve` answers image files."""

import base64
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from agreement import disagreements
from conftest import PIPELINE_VARIANTS as VARIANTS
from datafiles import png_header, write_image_folder
from project import edit_params, fork, read_json, run, stage_env
from servers import serve_model

from imgpipe import promote
from imgpipe.data.imageset import load_splits
from imgpipe.evaluation.results import best_over_seeds
from imgpipe.models.checkpoint import load_checkpoint
from imgpipe.predict import main as predict_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained(pipeline, tracking_server, tmp_path_factory):
    """A fork of the shared pipeline retrained by `dvc repro` data-parallel, on 2 processes (train.devices: 2,
    gloo on the CPU), with the server as its store: the team's setup, and a multi-process training's record.
    Returns the fork and what `dvc repro` printed."""
    project = fork(pipeline, tmp_path_factory.mktemp("on-server") / "project")
    embedded = (project / "mlflow.db").read_bytes()
    # The label_issues stage reruns whatever it is told (it reads every train setting), and nothing here reads its list:
    # judged by the centroid, fitted in one pass, it skips cross-fitting the cnn (some 1.7 CPU-seconds).
    edit_params(project, train__devices=2, train__device="cpu", label_issues__variant="centroid")
    # LOGLEVEL: torchrun's own log (torch.distributed.elastic) says which workers it started and how they ended.
    done = run(["dvc", "repro"], project, MLFLOW_TRACKING_URI=tracking_server.url, LOGLEVEL="INFO")
    assert done.stdout.count("processes under torchrun") == 0 and f"MLflow runs table: {tracking_server.url}/#/experiments/" in done.stdout
    assert (project / "mlflow.db").read_bytes() == embedded  # nothing went to the embedded store
    return project, done


@pytest.fixture(scope="module")
def project(retrained):
    return retrained[0]


def test_two_processes_trained_the_cnn(retrained, pipeline):
    """What differs from the shared pipeline's one-process run, whose training settings are the same but train.devices.
    (Nothing a rank does is recorded: one run, rank 0's files. What it shows: torchrun started two workers that
    both finished, one of them wrote, and the CNN's training took another path than one process's, to the same place.)"""
    project, done = retrained
    # torchrun (for the CNN alone: the centroid is fitted on one process) started ranks 0 and 1, and both succeeded.
    assert done.stderr.count("global_ranks=[0, 1]") == done.stderr.count("global_world_sizes=[2, 2]") == 1, done.stderr[-3000:]
    assert done.stderr.count("Local worker group finished (WorkerState.SUCCEEDED)") == 1, done.stderr[-3000:]
    # Rank 0 alone reports and writes: one summary line each, as on one process.
    trained = [line.split(":")[0] for line in done.stdout.splitlines() if re.match(r"\S+ seed 0: val accuracy [0-9.]+ \(epoch", line)]
    assert sorted(trained) == [f"{variant} seed 0" for variant in sorted(VARIANTS)]
    figures = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
    one, two = ({variant: read_json(root / f"metrics/train/{variant}/seed0.json") for variant in VARIANTS} for root in (pipeline, project))
    # Each process trained on its share of every batch: the run records both shares, together the whole split.
    (whole,), (first, second) = one["cnn"]["images_per_rank"], two["cnn"]["images_per_rank"]
    assert first + second == whole and 0 <= first - second <= whole // 64 + 1
    # On one process a training repeats its figures bit for bit here: the centroid, fitted on one process whatever
    # train.devices says, is the control...
    assert {key: two["centroid"][key] for key in figures} == {key: one["centroid"][key] for key in figures}
    # ...the CNN's gradients were summed over two shares of every batch, which rounds otherwise: other figures,
    # of the same training (test_distributed compares the weights closely, in fp32).
    assert {key: two["cnn"][key] for key in figures} != {key: one["cnn"][key] for key in figures}
    assert two["cnn"]["val_accuracy"] == pytest.approx(one["cnn"]["val_accuracy"], abs=0.06)
    assert two["cnn"]["train_loss"] == pytest.approx(one["cnn"]["train_loss"], rel=0.2)


def test_pipeline_records_every_variant_on_a_tracking_server(project, tracking_server):
    mlflow.set_tracking_uri(tracking_server.url)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    # One run per variant, never one per rank, holding rank 0's figures (agreement checks every number).
    assert sorted(r.info.run_name for r in runs) == sorted(f"{v} seed 0" for v in VARIANTS)
    assert {r.data.params["train.devices"] for r in runs} == {"2"}
    assert disagreements(project, VARIANTS, client) == []
    recorded = read_json(project / "reports/mlflow_runs.json")
    assert recorded["tracking_uri"] == tracking_server.url
    for run_ in runs:
        variant = run_.data.tags["imgpipe.variant"]
        assert run_.info.run_id == recorded["runs"][variant]["0"]
        epochs = read_json(project / f"metrics/train/{variant}/seed0.json")["epochs"]
        assert [m.step for m in client.get_metric_history(run_.info.run_id, "epoch/val_loss")] == list(range(1, epochs + 1))
        assert [a.path for a in client.list_artifacts(run_.info.run_id)] == ["classes", "confusion", "predictions", "report"]
        assert "report/report.md" in [a.path for a in client.list_artifacts(run_.info.run_id, "report")]
        logged = mlflow.pyfunc.load_model(f"runs:/{run_.info.run_id}/model").unwrap_python_model().network
        checkpoint, _ = load_checkpoint(project / f"models/{variant}/seed0.pt")
        images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
        with torch.no_grad():
            assert torch.equal(logged(images), checkpoint(images))


def _post(url: str, payload: dict) -> list[dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)["predictions"]


def test_the_candidate_is_promoted_and_served_to_image_files(project, tracking_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    candidate = read_json(project / "reports/mlflow_runs.json")["candidate"]
    trained = {variant: {0: read_json(project / f"metrics/train/{variant}/seed0.json")} for variant in VARIANTS}
    assert candidate["variant"] == best_over_seeds(trained)  # chosen on validation
    assert promote.main(["--experiment", "digits"]) == 0
    client = mlflow.MlflowClient(tracking_server.url)
    champion = client.get_model_version_by_alias("imgpipe-digits", "champion")
    assert champion.version == candidate["version"] == client.get_model_version_by_alias("imgpipe-digits", "candidate").version
    assert champion.tags["imgpipe.variant"] == candidate["variant"]

    test = load_splits(project / "data/prepared")["test"]
    files = sorted(write_image_folder(tmp_path / "images", test.images, test.labels, test.class_names).rglob("*.png"),
                   key=lambda path: int(path.stem))
    evaluated = pd.read_csv(project / f"metrics/predictions/{candidate['variant']}/seed0.csv")
    expected = [test.class_names[i] for i in evaluated["predicted"]]
    assert len(files) == len(expected) == len(test.images)

    process, url = serve_model("models:/imgpipe-digits@champion", tmp_path, tracking_server.url)
    try:
        encoded = [{"image": base64.b64encode(path.read_bytes()).decode()} for path in files]
        served = _post(url, {"dataframe_records": encoded})
        assert [row["predicted"] for row in served] == expected
        assert all(0 < row["confidence"] <= 1 and row["top2_confidence"] <= row["confidence"] for row in served)
        # Pixel arrays, (N, C, H, W) as prepare stores them, get the same answer.
        assert _post(url, {"inputs": test.images[:20].tolist()}) == served[:20]
        good = encoded[0]["image"]
        bad_requests = {  # each answered with HTTP 400 and one line naming the image: no stack trace, no echoed payload
            "image 1: not a readable image file (cannot identify image file)":
                {"dataframe_records": [{"image": good}, {"image": base64.b64encode(b"not a picture").decode()}]},
            "image 0: too many pixels (10000x8000, more than 50,000,000)":
                {"dataframe_records": [{"image": base64.b64encode(png_header(10_000, 8_000)).decode()}]},
            "image 2: not base64 text (send each image file base64-encoded)":
                {"dataframe_records": [{"image": good}, {"image": good}, {"image": "this is not base64!"}]},
        }
        for message, payload in bad_requests.items():
            with pytest.raises(urllib.error.HTTPError) as refused:
                _post(url, payload)
            assert refused.value.code == 400 and json.load(refused.value)["message"] == message
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(url, {"inputs": [[[0] * 8] * 8, [[300] + [0] * 7] + [[0] * 8] * 7]})
        assert refused.value.code == 400
        assert json.load(refused.value)["message"].startswith("image 1: pixels must be whole numbers 0..255, found 300")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_runs_travel_through_s3_to_a_machine_that_knows_only_the_server(project, tracking_server, s3_server, tmp_path, monkeypatch):
    """The server keeps its artifacts in the S3 bucket (conftest), and only it holds the bucket's credentials: a
    folder with nothing but the server's address classifies images with the registered model, as the checkpoint does.
    (In this process, which has no credentials either: a process of its own, `mlflow models serve`, loads the same
    version from the server in the test above.)"""
    assert tracking_server.artifacts == f"s3://{s3_server.bucket}/mlflow"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & os.environ.keys() and not (Path.home() / ".aws").exists()
    stored = s3_server.keys("mlflow/")
    assert any(key.endswith("/MLmodel") for key in stored) and any(key.endswith("program.pt2") for key in stored)
    test = load_splits(project / "data/prepared")["test"]
    images = write_image_folder(tmp_path / "images", test.images[:20], test.labels[:20], test.class_names)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    assert predict_main(["--model", "models:/imgpipe-digits@candidate", str(images), "--output", str(elsewhere / "registered.csv")]) == 0
    variant = read_json(project / "reports/mlflow_runs.json")["candidate"]["variant"]
    assert predict_main(["--model", str(project / f"models/{variant}/seed0.pt"), str(images), "--output", str(elsewhere / "checkpoint.csv")]) == 0
    assert (elsewhere / "registered.csv").read_text() == (elsewhere / "checkpoint.csv").read_text()


def test_the_server_keeps_runs_and_registry_in_postgresql(project, tracking_server):
    if not tracking_server.on_postgresql:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql): the server ran on SQLite")
    import psycopg

    with psycopg.connect(tracking_server.store) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs JOIN experiments USING (experiment_id) WHERE experiments.name = 'digits'")
        assert cursor.fetchone()[0] == len(VARIANTS)
        cursor.execute("SELECT alias FROM registered_model_aliases WHERE name = 'imgpipe-digits'")
        assert "candidate" in {alias for (alias,) in cursor.fetchall()}


def test_a_publish_the_server_died_in_fails_in_one_line_and_its_rerun_completes_it_once(pipeline, tracking_server, tmp_path):
    """The server killed once the first run is recorded, before the second is: the stage fails in one line; with the
    server back, `dvc repro` reruns the publish alone (nothing trains) and completes the records, no run or version twice."""
    import subprocess
    import time

    project = fork(pipeline, tmp_path / "project")
    edit_params(project, tracking__experiment="publish-rerun")  # runs and a registered model of its own on the server
    client = mlflow.MlflowClient(tracking_server.url)
    env = stage_env(MLFLOW_TRACKING_URI=tracking_server.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    publish = subprocess.Popen(["python", "stages/publish.py"], cwd=project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while publish.poll() is None and time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("publish-rerun")
            if experiment and any(run.info.status == "FINISHED" for run in client.search_runs([experiment.experiment_id])):
                break
            time.sleep(0.02)
        assert publish.poll() is None, "the publish ended before the server could be killed between its runs"
        finished = [run.info.run_name for run in client.search_runs([experiment.experiment_id]) if run.info.status == "FINISHED"]
        tracking_server.kill_server()
        stdout, stderr = publish.communicate(timeout=120)
    finally:
        tracking_server.restart_server()
    assert len(finished) == 1 and publish.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow tracking at {tracking_server.url} failed (") and lines[0].endswith(
        "the stage's outputs are saved; fix the store or set tracking.optional: true"), stderr

    done = run(["dvc", "repro"], project, MLFLOW_TRACKING_URI=tracking_server.url)
    assert "Running stage 'publish'" in done.stdout and "Running stage 'train@" not in done.stdout, done.stdout
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"{v} seed 0" for v in VARIANTS)  # each once
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics and "imgpipe.evaluation" in r.data.tags
               and r.data.tags.get("imgpipe.model_uri") for r in runs)
    assert next(r for r in runs if r.info.run_name == finished[0]).info.run_id in done.stdout  # the first run kept, not redone
    versions = client.search_model_versions("name = 'imgpipe-publish-rerun'")
    assert len(versions) == 1 and client.get_model_version_by_alias("imgpipe-publish-rerun", "candidate").version == versions[0].version
