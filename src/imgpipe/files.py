"""Atomic writes: a reader sees the old file or the complete new one, never a half-written file, after a crash of the
process or of the machine (the new content reaches the disk before the rename that puts it in place)."""

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from imgpipe.errors import ImgpipeError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # this process writes one path at a time: its own leftover is an earlier process's (a reused pid)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_abandoned(path: Path) -> None:
    """The temporary siblings of `path` left by processes that were killed before they could clean up
    (a fetch of gigabytes stopped half-way must not leave gigabytes behind). A folder moved aside by a process
    killed between atomic_path's two renames is put back where none took its place: the write did not complete."""
    for old in path.parent.glob(f".{path.name}.old-*"):
        pid = old.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            if path.exists() or path.is_symlink():
                _remove(old)
            else:
                os.replace(old, path)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(tmp)


def _sync(path: Path, entries_only: bool = False) -> None:
    """Flush a file, or every file of a folder and the folder itself, to the disk (a folder's own entries alone with
    `entries_only`): without it a power cut after the rename can leave the new name on an empty file (ext4 and XFS
    may write the rename first)."""
    files = [] if entries_only or not path.is_dir() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    for each in [*files, path]:
        descriptor = os.open(each, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling to write; it replaces `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _sync(tmp)
        if tmp.is_dir() and path.is_dir():
            # Directories cannot be swapped in one rename: move the old aside first.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            if path.is_dir():
                _remove(path)
            os.replace(tmp, path)
        _sync(path.parent, entries_only=True)  # the rename itself
    finally:
        _remove(tmp)


def prune(folder: Path, keep: set[Path]) -> None:
    """Remove the files under `folder` that are not in `keep` (results of variants no longer trained), then the
    folders left empty; dotfiles (a .gitignore, another writer's temporary file) stay."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.name.startswith("."):
            continue
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, columns: Mapping[str, Sequence] | Sequence[tuple[str, Sequence]]) -> None:
    """A table given by its columns (name -> values, all as long; or (name, values) pairs, where two may share a
    name) as CSV, header first. The csv module, not pandas: importing pandas would cost each evaluate stage a third
    of a second."""
    import csv

    pairs = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(name for name, _ in pairs)
        writer.writerows(zip(*(values for _, values in pairs)))


def write_arrays(path: Path, **arrays) -> None:
    """numpy arrays by name, as one compressed .npz file."""
    import numpy as np  # here: most callers of this module write text

    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object: np.savez would add .npz to a name
        np.savez_compressed(file, **arrays)


def read_arrays(path: Path) -> dict:
    """The arrays of a file write_arrays wrote, by name."""
    import numpy as np

    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def read_csv(path: Path, text_columns: tuple[str, ...] = ()):
    """A CSV the pipeline wrote; `text_columns` stay text (class names "0" or "NA"), never numbers or missing."""
    import pandas as pd  # here: most callers of this module never read a table

    try:
        return pd.read_csv(path, dtype={column: str for column in text_columns}, keep_default_na=False)
    except FileNotFoundError:
        raise ImgpipeError(f"{path}: not found; run the stage that writes it (dvc repro)") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImgpipeError(f"{path}: not found; run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as error:
        raise ImgpipeError(f"{path}: not valid JSON ({error})") from None
