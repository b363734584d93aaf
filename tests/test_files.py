import pytest

from imgpipe.files import atomic_path, write_json


def test_failed_write_keeps_the_earlier_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"accura')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_folder_is_swapped_in_whole(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.npz").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.npz").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
