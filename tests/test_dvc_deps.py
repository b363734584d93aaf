"""dvc.yaml's deps against the code: every stage depends on exactly the modules of src/imgpipe that its
script imports, directly or not, so `dvc repro` reruns whatever a code change touches, and nothing else."""

import textwrap
from pathlib import Path

import pytest
import yaml

from imgpipe import lineage
from imgpipe.serving import export

REPO = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _script(stage: dict) -> Path:
    """The stage script its cmd runs: `python stages/train.py ${item.variant}` -> stages/train.py."""
    words = stage["cmd"].split()
    assert words[0] == "python", f"unexpected cmd {stage['cmd']!r}"
    return REPO / words[1]


def _declared_modules(stage: dict) -> set[str]:
    """The stage's deps inside src/imgpipe, folders expanded to their .py files."""
    declared = set()
    for dep in stage["deps"]:
        path = REPO / dep
        if path.is_relative_to(lineage.PACKAGE):
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            declared.update(file.relative_to(REPO).as_posix() for file in files)
    return declared


def _differences(stage: dict) -> tuple[set[str], set[str]]:
    needed = {path.relative_to(REPO).as_posix() for path in lineage.closure(_script(stage))}
    if "src/imgpipe/serving/export.py" in needed:  # it copies the served model's loader and its closure, by path
        needed |= {path.relative_to(REPO).as_posix() for path in export.code_files()}
    declared = _declared_modules(stage)
    return needed - declared, declared - needed


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_stage_depends_on_every_module_it_runs(name):
    stage = PIPELINE[name]
    script = _script(stage).relative_to(REPO).as_posix()
    assert script in stage["deps"], f"dvc.yaml: stage {name} must list its script {script} in deps"
    missing, extra = _differences(stage)
    assert not missing, f"dvc.yaml: stage {name} runs these modules but does not list them in deps: {sorted(missing)}"
    assert not extra, f"dvc.yaml: stage {name} lists modules its script never imports (needless reruns): {sorted(extra)}"


def test_a_removed_dependency_is_caught():
    """The comparison itself can fail: drop one module from train's deps and it is named."""
    stage = dict(PIPELINE["train"], deps=[dep for dep in PIPELINE["train"]["deps"] if dep != "src/imgpipe/models/inference.py"])
    missing, _ = _differences(stage)
    assert "src/imgpipe/models/inference.py" in missing  # train keeps the epoch that inference.score ranks best


def test_closure_follows_every_kind_of_import(tmp_path, monkeypatch):
    package = tmp_path / "imgpipe"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "from imgpipe import b\n",
        "b.py": "def f():\n    from imgpipe.sub import c  # inside a function still counts\n",
        "sub/__init__.py": "from .d import x\n",
        "sub/c.py": "import imgpipe.sub.e\nimport os\n",
        "sub/d.py": "x = 1\n",
        "sub/e.py": "from .. import f\n",
        "f.py": "",
        "unused.py": "",
    }
    for name, text in sources.items():
        (package / name).write_text(textwrap.dedent(text))
    monkeypatch.setattr(lineage, "PACKAGE", package)
    script = tmp_path / "script.py"
    script.write_text("import sys\nfrom imgpipe.a import thing\n")
    found = {path.relative_to(package).as_posix() for path in lineage.closure(script)}
    # Everything but unused.py; the script itself lies outside the package.
    assert found == {"__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py", "sub/d.py", "sub/e.py", "f.py"}


def test_code_version_changes_with_any_module_training_or_a_stage_runs(tmp_path, monkeypatch):
    package = tmp_path / "imgpipe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text("from imgpipe import score\n")
    (package / "score.py").write_text("def score(): return 1\n")
    (package / "other.py").write_text("")
    monkeypatch.setattr(lineage, "PACKAGE", package)
    before = lineage.code_version("imgpipe.train")
    (package / "other.py").write_text("changed = True\n")
    assert lineage.code_version("imgpipe.train") == before  # not imported by training
    script = tmp_path / "stage.py"  # a stage script, outside the package: its own source counts too
    script.write_text("from imgpipe.train import x\n")
    script_before = lineage.code_version(script)
    (package / "score.py").write_text("def score(): return 2\n")
    assert lineage.code_version("imgpipe.train") != before
    assert lineage.code_version(script) != script_before
    script_after = lineage.code_version(script)
    script.write_text("from imgpipe.train import x  # edited\n")
    assert lineage.code_version(script) != script_after


def test_the_train_stage_reruns_when_any_training_setting_changes():
    """Each setting of TrainConfig that changes the weights is a param of the train stage: one left out would leave
    models trained the old way while `dvc repro` calls them up to date (the seed is the stage's own matrix item). The
    settings of how it runs that give the same weights are not: more restarts retrained every model."""
    from dataclasses import fields

    from imgpipe.config import SAME_WEIGHTS, TrainConfig

    params = set(PIPELINE["train"]["params"])
    assert {f"train.{field.name}" for field in fields(TrainConfig) if field.name not in ("seed", *SAME_WEIGHTS)} <= params
    assert not {f"train.{name}" for name in SAME_WEIGHTS} & params
