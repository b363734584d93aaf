"""Whether a model's test results are still its own. The evaluate stage scores every variant and seed in one
process (one start-up of torch, not one per model) and, as DVC would with a stage per model, re-scores only
the models whose inputs changed: a result is kept when what it was made from (the checkpoint, the data, the
settings, the code and the libraries it ran on) and its files are those recorded when it was written."""

import hashlib
import json
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "numpy")  # what computes the scores: another version may score other digits


def _digest(parts: list[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def made_from(checkpoint: Path, data: str, settings: dict, code: str) -> str:
    """The key of a model's inputs: its checkpoint's bytes, the data fingerprint, the settings, the code version."""
    return _digest([Path(checkpoint).read_bytes(), data.encode(), json.dumps(settings, sort_keys=True).encode(), code.encode()])


def libraries() -> str:
    """The installed versions of LIBRARIES, as text: part of the code a result was made with (DVC sees no upgrade,
    and `dvc repro -f evaluate` after one would otherwise keep every result)."""
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    return " ".join(f"{name}=={version(name)}" for name in LIBRARIES)


def files_digest(files: list[Path]) -> str | None:
    """The digest of a result's files, None when one is missing."""
    if not all(Path(path).is_file() for path in files):
        return None
    return _digest([Path(path).read_bytes() for path in files])


def entry(key: str, files: list[Path]) -> dict[str, str]:
    """What the record holds for one result, once its files are written."""
    return {"made_from": key, "files": files_digest(files)}


def still_current(record: dict, training: str, key: str, files: list[Path]) -> bool:
    """Whether `training`'s result in `record` was made from `key` and its files are untouched."""
    written = record.get(training, {})
    return written.get("made_from") == key and written.get("files") is not None and written["files"] == files_digest(files)
