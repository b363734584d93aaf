"""Where a result came from: git commit and state, DVC experiment, settings hash, package versions.

Shared by the MLflow run tags and the report's run card, so both say the same thing.
"""

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata

from imgpipe import paths

PACKAGES = ("torch", "torchvision", "numpy", "dvc", "mlflow")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    """The checked-out commit, or "" outside a git repository."""
    return _git("rev-parse", "HEAD")


def git_dirty() -> bool:
    """Whether code or settings differ from the commit; the pipeline's own tracked outputs
    (dvc.lock, metrics, reports) change as it runs, so they do not count."""
    outputs = [f":(exclude){p.relative_to(paths.ROOT)}" for p in (paths.DVC_LOCK, paths.METRICS, paths.REPORTS)]
    return bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", *outputs))


def dvc_experiment() -> str:
    """The name of the DVC experiment running this stage (`dvc exp run`), or "" for `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME", "")


def params_hash(params: dict) -> str:
    """A short hash of every setting: the same params.yaml content, the same hash."""
    return hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=4).hexdigest()


def versions() -> dict[str, str]:
    """Python and the packages that shape results, read from their metadata (no imports)."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found
