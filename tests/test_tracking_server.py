"""The pipeline's tracking against a real `mlflow server` on 127.0.0.1, read back through MLflow's client.
Only the report stage talks to MLflow: it runs again, in a fork of the shared pipeline, with the server as
its store."""

import sys

import mlflow
import pytest
import torch
from agreement import disagreements
from conftest import PIPELINE_VARIANTS as VARIANTS
from project import fork, read_json, run

from imgpipe.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_pipeline_records_every_variant_on_a_tracking_server(pipeline, tracking_server, tmp_path):
    project = fork(pipeline, tmp_path / "project")
    embedded = (project / "mlflow.db").read_bytes()
    done = run([sys.executable, "stages/report.py"], project, MLFLOW_TRACKING_URI=tracking_server)
    assert f"MLflow runs table: {tracking_server}/#/experiments/" in done.stdout
    assert (project / "mlflow.db").read_bytes() == embedded  # nothing went to the embedded store

    mlflow.set_tracking_uri(tracking_server)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"{v} seed 0" for v in VARIANTS)
    assert disagreements(project, VARIANTS, client) == []
    recorded = read_json(project / "reports/mlflow_runs.json")
    assert recorded["tracking_uri"] == tracking_server
    for run_ in runs:
        variant = run_.data.tags["imgpipe.variant"]
        assert run_.info.run_id == recorded["runs"][variant]["0"]
        epochs = read_json(project / f"metrics/train/{variant}/seed0.json")["epochs"]
        assert [m.step for m in client.get_metric_history(run_.info.run_id, "epoch/val_loss")] == list(range(1, epochs + 1))
        assert [a.path for a in client.list_artifacts(run_.info.run_id)] == ["classes", "confusion", "predictions", "report"]
        assert "report/report.md" in [a.path for a in client.list_artifacts(run_.info.run_id, "report")]
        logged = mlflow.pytorch.load_model(f"runs:/{run_.info.run_id}/model")
        checkpoint, _ = load_checkpoint(project / f"models/{variant}/seed0.pt")
        images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
        with torch.no_grad():
            assert torch.equal(logged(images), checkpoint(images))
