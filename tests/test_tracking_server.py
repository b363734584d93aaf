"""The pipeline against a real `mlflow server` on 127.0.0.1, read back through MLflow's client."""

import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
import torch
from agreement import disagreements
from project import copy_project, read_json, run

from imgpipe.checkpoint import load_checkpoint

VARIANTS = ["linear", "cnn"]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tracking server with its own temporary SQLite store and proxied artifact store."""
    store = tmp_path_factory.mktemp("server")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # up to a minute for it to start answering
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail("mlflow server exited while starting")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer within a minute")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_pipeline_records_every_variant_on_a_tracking_server(server, tmp_path):
    project = copy_project(tmp_path / "project", train__epochs=2, train__variants=VARIANTS)
    run(["dvc", "repro"], project, MLFLOW_TRACKING_URI=server)
    assert not (project / "mlflow.db").exists()  # nothing went to the embedded store

    mlflow.set_tracking_uri(server)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"{v} seed 0" for v in VARIANTS)
    assert disagreements(project, VARIANTS, client) == []
    for run_ in runs:
        variant = run_.data.tags["imgpipe.variant"]
        assert run_.info.run_id == read_json(project / f"metrics/train/{variant}/seed0.json")["mlflow_run_id"]
        assert [m.step for m in client.get_metric_history(run_.info.run_id, "epoch/val_loss")] == [1, 2]
        assert [a.path for a in client.list_artifacts(run_.info.run_id)] == ["classes", "confusion", "predictions", "report"]
        assert "report/report.md" in [a.path for a in client.list_artifacts(run_.info.run_id, "report")]
        logged = mlflow.pytorch.load_model(f"runs:/{run_.info.run_id}/model")
        checkpoint, _ = load_checkpoint(project / f"models/{variant}/seed0.pt")
        images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
        with torch.no_grad():
            assert torch.equal(logged(images), checkpoint(images))
