"""A copy of the project to run the real pipeline in, and the commands to drive it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from warm_python import warm_env

REPO = Path(__file__).resolve().parents[1]


# Nothing of the user's own configuration reaches a test project: DVC's global and system config (remotes,
# credentials) are read from a folder that does not exist, git's from nowhere (no signing hooks, no templates).
_NOWHERE = str(Path(tempfile.gettempdir()) / "imgpipe-tests-no-user-config")
NO_USER_CONFIG = {"DVC_GLOBAL_CONFIG_DIR": _NOWHERE, "DVC_SYSTEM_CONFIG_DIR": _NOWHERE,
                  "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
# The checkout's files a test project is made of; of .dvc/ only what git keeps (config): never config.local,
# where README's team section has a user put a remote and its credentials, nor a cache or DVC's tmp.
PROJECT_FILES = ["dvc.yaml", "params.yaml", "excluded.txt", "stages", "src", ".dvc", ".dvcignore", ".gitignore"]
LEFT_BEHIND = shutil.ignore_patterns("config.local", "cache", "tmp", "__pycache__")


def stage_env(**extra_env: str) -> dict[str, str]:
    """The environment a test project's commands run in: none of the user's DVC, git or MLflow settings, this
    interpreter's `python` first on PATH, behind the warm client (tests/warm_python.py) where its server runs."""
    env = NO_USER_CONFIG | {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))} | extra_env
    env |= {
        # Stages run `python`: make it this interpreter, with imgpipe installed.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    return warm_env(env)  # the stages it starts fork a warm interpreter


def run(args: list[str], cwd: Path, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=stage_env(**extra_env), capture_output=True, text=True)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def _edit(path: Path, changes: dict) -> None:
    """Apply `section__key=value` changes to a params.yaml."""
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(target: Path, source: Path = REPO, **changes) -> Path:
    """The project's code and configuration (of `source`, a checkout), none of its outputs and none of its
    user's local settings, as a fresh git repository, with `section__key=value` changes to params.yaml."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=LEFT_BEHIND)
        elif (source / name).exists():
            shutil.copy2(source / name, target / name)
    _edit(target / "params.yaml", changes)
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "project"], target)
    return target


def fork(project: Path, target: Path) -> Path:
    """A copy of a finished project (git history, DVC cache, outputs, MLflow store) for a test that changes it.
    The copied store's experiment keeps its artifact folder: runs made in the fork put artifacts there."""
    shutil.copytree(project, target, symlinks=True, ignore=lambda folder, names: ["tmp"] if folder.endswith(".dvc") else [])
    return target


def edit_params(project: Path, **changes) -> None:
    """Change params.yaml for good (`section__key=value`): a fork's own settings."""
    _edit(project / "params.yaml", changes)


@contextmanager
def edited_params(project: Path, **changes):
    """params.yaml with some `section__key=value` changes for the duration of the block."""
    path = project / "params.yaml"
    original = path.read_text()
    _edit(path, changes)
    try:
        yield
    finally:
        path.write_text(original)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
