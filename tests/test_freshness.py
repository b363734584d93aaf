"""When the evaluate stage may keep a model's test results: only when every input and every file is as recorded."""

from pathlib import Path

from imgpipe.evaluation import freshness
from imgpipe.files import prune

SETTINGS = {"top_k": 3, "explained": 8, "device": None}


def _result(folder: Path) -> tuple[Path, list[Path]]:
    checkpoint = folder / "model.pt"
    checkpoint.write_bytes(b"weights")
    files = [folder / "test.json", folder / "saliency.npz"]
    for path in files:
        path.write_bytes(path.name.encode())
    return checkpoint, files


def test_a_result_is_kept_only_while_its_inputs_and_files_are_as_recorded(tmp_path):
    checkpoint, files = _result(tmp_path)
    key = freshness.made_from(checkpoint, "data", SETTINGS, "code")
    record = {"cnn/seed0": freshness.entry(key, files)}
    assert freshness.still_current(record, "cnn/seed0", key, files)
    assert not freshness.still_current(record, "cnn/seed1", key, files)  # never recorded
    others = [freshness.made_from(checkpoint, "other data", SETTINGS, "code"),
              freshness.made_from(checkpoint, "data", SETTINGS | {"top_k": 5}, "code"),
              freshness.made_from(checkpoint, "data", SETTINGS, "other code")]
    checkpoint.write_bytes(b"retrained")
    others.append(freshness.made_from(checkpoint, "data", SETTINGS, "code"))
    assert len({key, *others}) == 5 and not any(freshness.still_current(record, "cnn/seed0", other, files) for other in others)

    files[1].write_bytes(b"edited by hand")
    assert not freshness.still_current(record, "cnn/seed0", key, files)
    files[1].unlink()
    assert not freshness.still_current(record, "cnn/seed0", key, files)
    assert not freshness.still_current({"cnn/seed0": freshness.entry(key, files)}, "cnn/seed0", key, files)  # missing


def test_the_libraries_a_result_was_scored_with_are_named_by_version(monkeypatch):
    import numpy
    import torch

    named = freshness.libraries()
    assert f"numpy=={numpy.__version__}" in named and f"torch=={torch.__version__.split('+')[0]}" in named
    monkeypatch.setattr(freshness.metadata, "version", lambda name: "9.9" if name == "torch" else "1.0")
    assert freshness.libraries() != named  # an upgrade is another key: the evaluate stage scores again


def test_prune_removes_what_is_not_kept_and_the_folders_left_empty(tmp_path):
    keep = {tmp_path / "cnn/seed0.json"}
    for name in ("cnn/seed0.json", "cnn/seed1.json", "mlp/seed0.json", "mlp/.gitignore", "old/seed0.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    prune(tmp_path, keep)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["cnn", "cnn/seed0.json", "mlp", "mlp/.gitignore"]
