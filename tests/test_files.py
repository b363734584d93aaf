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
        assert [p.name for p in target.iterdir()] == ["old.npz"]  # the old folder whole until the new one is done
    assert [p.name for p in target.iterdir()] == ["new.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_a_folder_swap_killed_between_its_renames_is_undone_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".prepared.old-{dead}").mkdir()  # the old folder, moved aside...
    (tmp_path / f".prepared.old-{dead}" / "old.npz").write_text("old")
    (tmp_path / f".prepared.tmp-{dead}").mkdir()  # ...and the new one, not yet in its place, when the process died
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "prepared"):
            raise RuntimeError("this write fails too")
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # the old folder back, nothing left beside it
    assert (tmp_path / "prepared" / "old.npz").read_text() == "old"


def test_a_leftover_named_with_this_process_id_is_an_earlier_process_s(tmp_path):
    """Process ids are reused (a container's stages run as the same few): a folder moved aside by a killed stage whose
    id this process now has is still put back, not taken for a write under way."""
    import os

    (tmp_path / f".prepared.old-{os.getpid()}").mkdir()
    (tmp_path / f".prepared.old-{os.getpid()}" / "old.npz").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "prepared"):
            raise RuntimeError("this write fails too")
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
    assert (tmp_path / "prepared" / "old.npz").read_text() == "old"


def test_the_new_content_reaches_the_disk_before_the_rename_that_puts_it_in_place(tmp_path, monkeypatch):
    """Atomic after a power cut too: each file written (a folder's every file) is flushed before its rename, and the
    folder holding the new name after it."""
    import os

    import imgpipe.files as files

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), fsync(fd)))
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("replace", str(a))), replace(a, b)))
    write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    tmp = str(tmp_path / ".metrics.json.tmp-") + str(os.getpid())
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]
    events.clear()
    with atomic_path(tmp_path / "prepared") as folder:
        folder.mkdir()
        (folder / "train.npy").write_text("x")
    flushed = [name for kind, name in events if kind == "fsync"]
    assert flushed[:2] == [f"{folder}/train.npy", str(folder)] and events[2] == ("replace", str(folder))
