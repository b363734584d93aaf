"""What a stage that fails under `dvc repro` leaves: the previous results, byte for byte.

DVC deletes a stage's outputs before running it unless they are `persist: true`; the stages replace
their outputs atomically and only once they have finished, so a stage stopped by bad settings or
input changes nothing.
"""

import shutil

import pytest
import torch
import yaml
from project import REPO, edited_params, fork, run

pytestmark = pytest.mark.slow
OUTPUT_FOLDERS = ("data", "models", "metrics", "reports")


def _outputs(project) -> dict[str, bytes]:
    """Every file the pipeline wrote, hidden ones too (a leftover temporary file is a change), and dvc.lock."""
    return {str(path.relative_to(project)): path.read_bytes()
            for folder in OUTPUT_FOLDERS for path in sorted((project / folder).rglob("*")) if path.is_file()} \
        | {"dvc.lock": (project / "dvc.lock").read_bytes()}


@pytest.fixture(scope="module")
def project(pipeline, tmp_path_factory):
    return fork(pipeline, tmp_path_factory.mktemp("failed") / "project")


def test_every_stage_output_is_persistent():
    """Without `persist: true` DVC deletes the output before running the stage, whatever becomes of the run."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                assert (options or {}).get("persist") is True, f"dvc.yaml {name}: {kind} {path} needs persist: true"


BAD_CSV = "label,pixel1,pixel2,pixel3,pixel4\n1,0,255,3,4\n2,0,12,x,4\n"
# The first stage, whose data/raw DVC would bring back from its cache; train, with a cached checkpoint beside
# uncached metrics and curves; the last stage, whose report and figures are all uncached.
FAILURES = {  # stage: (params.yaml changes, the stage's error)
    "fetch": ({"data__dataset": "csv", "data__path": "{csv}"}, "error: {csv} line 3, column 'pixel3': 'x' is not a number"),
    "train@centroid-0": ({"train__epochs": 0}, "error: params.yaml: train.epochs: must be a whole number >= 1, got 0"),
    # A setting the stage checks late (after the figures are drawn): its new figures must not be swapped in.
    "report": ({"report__samples_per_class": 3, "tracking__optional": 1},
               "error: params.yaml: tracking.optional: must be true or false, got 1"),
}


@pytest.mark.parametrize("stage", FAILURES)
def test_failed_stage_leaves_the_previous_results(project, tmp_path, stage):
    csv = tmp_path / "signs.csv"
    csv.write_text(BAD_CSV)
    changes, error = FAILURES[stage]
    changes = {key: value.format(csv=csv) if isinstance(value, str) else value for key, value in changes.items()}
    before = _outputs(project)
    with edited_params(project, **changes):
        done = run(["dvc", "repro"], project, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[0] == error.format(csv=csv)  # the stage's one line, then DVC's naming the stage
    assert len(lines) == 2 and lines[1].startswith(f"ERROR: failed to reproduce '{stage}'"), done.stderr
    after = _outputs(project)
    assert sorted(after) == sorted(before)
    # dvc.lock still describes them, byte for byte as they are: with the setting put back there is nothing to rerun
    # (the fork was up to date: test_pipeline checks `dvc status` on the pipeline it is a copy of).
    assert [path for path in before if after[path] != before[path]] == []


def test_a_training_that_fails_after_its_last_epoch_reruns_without_training(pipeline, tmp_path):
    """The checkpoint cannot be written (a file stands where its folder goes, as a full disk would fail it): the
    stage fails in one line, and its finished training's state survives; the rerun saves it without an epoch."""
    project = fork(pipeline, tmp_path / "project")
    folder, resume = project / "models/cnn", project / "models/.resume/cnn/seed0.pt"
    shutil.rmtree(folder)
    folder.write_text("in the way")
    with edited_params(project, train__epochs=1):  # other settings than the fork's (2 epochs): a real training
        failed = run(["python", "stages/train.py", "cnn", "0"], project, check=False)
        assert failed.returncode != 0 and failed.stderr.strip().splitlines()[-1] == f"error: {folder}: File exists", failed.stderr
        assert resume.exists()
        trained = {name.removeprefix("net."): weight for name, weight in
                   torch.load(resume, weights_only=True)["state"]["best_weights"].items() if name.startswith("net.")}
        folder.unlink()
        rerun = run(["python", "stages/train.py", "cnn", "0"], project)
    checkpoint = folder / "seed0.pt"
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]  # the finished training's weights, not new ones
    assert trained and saved.keys() == trained.keys() and all(torch.equal(saved[name], trained[name]) for name in saved)
    assert f"cnn: its training finished after epoch 1 in {resume}" in rerun.stdout
    assert "cnn epoch 1/1" in failed.stdout and " epoch " not in rerun.stdout.replace("finished after epoch 1", "")
    assert checkpoint.is_file() and not resume.exists()
