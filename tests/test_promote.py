"""Promotion: `champion` moves to the candidate (or a named version) after its figures are shown beside the
current champion's; a version trained on other data is refused unless asked for. Against a fork of the shared
pipeline's own MLflow store, whose report registered its candidate."""

import pytest
from project import fork

from imgpipe import promote


@pytest.fixture
def registry(pipeline, tmp_path, monkeypatch):
    project = fork(pipeline, tmp_path / "project")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return promote.store.store_client()


def test_the_candidate_becomes_champion_and_other_data_needs_consent(registry, capsys):
    candidate = registry.get_model_version_by_alias("imgpipe-digits", "candidate")
    assert promote.main(["--experiment", "digits"]) == 0
    out = capsys.readouterr().out
    assert f"promoting version {candidate.version}: variant {candidate.tags['imgpipe.variant']}, seed 0, val_accuracy " in out
    assert "champion  none yet" in out and out.strip().endswith(f"imgpipe-digits@champion is version {candidate.version}")
    assert registry.get_model_version_by_alias("imgpipe-digits", "champion").version == candidate.version

    other = registry.create_model_version("imgpipe-digits", candidate.source, run_id=candidate.run_id,
                                          tags=candidate.tags | {"imgpipe.validation_fingerprint": "0000000000000000"})
    assert promote.main(["--experiment", "digits", "--version", str(other.version)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: version {other.version} was scored on another validation split (validation_fingerprint "
                            "0000000000000000)")
    assert "--allow-other-data" in error and "\n" not in error
    assert registry.get_model_version_by_alias("imgpipe-digits", "champion").version == candidate.version  # unchanged

    assert promote.main(["--experiment", "digits", "--version", str(other.version), "--allow-other-data"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"is version {other.version} (was version {candidate.version})")
    assert registry.get_model_version_by_alias("imgpipe-digits", "champion").version == other.version


def test_an_unknown_experiment_fails_in_one_line(registry, capsys):
    assert promote.main(["--experiment", "pets"]) == 1
    assert capsys.readouterr().err.strip() == "error: imgpipe-pets has no candidate; run the pipeline first (dvc repro)"


def test_an_unreachable_store_is_named_not_taken_for_a_missing_candidate(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert promote.main(["--experiment", "digits"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: the MLflow store at http://127.0.0.1:9: ") and "\n" not in error
    assert "no candidate" not in error
