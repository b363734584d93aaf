"""Virtual environments that hold only a set of requirements, built from the project's installed distributions.

A logged MLflow model must stand alone: a deployment builds a fresh virtual environment from the model's
requirements.txt, and the model must load and predict there with nothing else installed. Installing torch and
mlflow from the registry takes minutes, but pip has already installed every one of them into the project's
environment. So `environment_with` builds that fresh environment from the installed distributions instead,
as pip would have filled it:

- `requirement_closure` resolves the requirements as pip does, against the installed distributions only: each
  requirement's installed distribution (its version must satisfy the specifier), then its `Requires-Dist`
  recursively, with environment markers evaluated for this interpreter and the extras asked of each
  distribution. A dependency pip would install that is not installed here, or an installed version a
  requirement rules out, is an error: the environment could not be faithful.
- `environment_with` creates a real virtual environment (`venv`, no pip) and links into its site-packages what
  each distribution of the closure installed there, as its RECORD says: its .dist-info folder, modules,
  packages, .pth files, extension modules, vendored `*.libs` folders. A folder wholly owned by distributions of
  the closure is one symbolic link; a folder that distributions outside the closure fill too (a namespace
  package such as `google/` or `nvidia/`, or `mlflow/`, which mlflow, mlflow-skinny and mlflow-tracing share) is
  a real folder holding links to what the closure's distributions own in it, folder by folder.

Nothing else leaks in: not the project itself (installed editable through a .pth file of its distribution), not
the project environment's other distributions, not PYTHONPATH (run the environment's python with a clean
environment). Files a distribution installed outside site-packages (its scripts in bin/, data such as man pages)
are not linked; the console scripts of the closure's distributions are written into the environment's bin/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sysconfig
import venv
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# The site-packages folders pip installed the project environment's distributions into (one folder, usually).
SITE_PACKAGES = tuple(dict.fromkeys(Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")))

STAMP = ".environment.json"  # in an environment environment_with built: what it holds (written last)


class ClosureError(LookupError):
    """The installed distributions cannot satisfy the requirements as pip would: a requirement (or a dependency
    that applies here) is not installed, its installed version is ruled out, or it left no record of its files."""


@dataclass(frozen=True)
class _Installed:
    """The distributions installed in some site-packages folders."""

    roots: tuple[Path, ...]
    by_name: dict[str, list[metadata.Distribution]]  # canonical name -> its installed distributions (one, surely)
    owners_below: dict[tuple[str, ...], set[str]]  # folder inside a root -> canonical names owning files in it


_INSTALLED: dict[tuple, _Installed] = {}


def _installed(roots: tuple[Path, ...]) -> _Installed:
    """The index of the distributions in `roots`, cached while none is installed or removed (each changes the
    modification time of its site-packages folder, where its .dist-info folder comes or goes)."""
    key = tuple((root, root.stat().st_mtime_ns) for root in roots)
    if key not in _INSTALLED:
        by_name: dict[str, list[metadata.Distribution]] = {}
        owners_below: dict[tuple[str, ...], set[str]] = {}
        for dist in metadata.distributions(path=[str(root) for root in roots]):
            name = canonicalize_name(dist.metadata["Name"])
            by_name.setdefault(name, []).append(dist)
            for parts in _site_files(dist)[1]:
                for depth in range(1, len(parts)):
                    owners_below.setdefault(parts[:depth], set()).add(name)
        _INSTALLED.clear()  # the older indexes are stale
        _INSTALLED[key] = _Installed(roots, by_name, owners_below)
    return _INSTALLED[key]


def _site_files(dist: metadata.Distribution) -> tuple[Path, list[tuple[str, ...]]]:
    """The site-packages folder of a distribution (where its .dist-info folder lies) and the files its RECORD
    lists there, as path components; files installed elsewhere (scripts in bin/, data) left out."""
    root = Path(dist.locate_file(""))
    files = []
    for file in dist.files or []:
        relative = os.path.relpath(os.path.normpath(root / file), root)
        if relative != os.curdir and not relative.startswith(os.pardir):
            files.append(tuple(Path(relative).parts))
    return root, files


def _label(dist: metadata.Distribution, extras: set[str] | frozenset[str] = frozenset()) -> str:
    extras = sorted(extra for extra in extras if extra)
    return f"{dist.metadata['Name']}{'[' + ','.join(extras) + ']' if extras else ''} {dist.version}"


def requirement_closure(requirements: list[str], *, site_packages: list[Path] | tuple[Path, ...] | None = None,
                        ) -> list[metadata.Distribution]:
    """The installed distributions pip would install for `requirements` (each once, in the order found): each
    requirement's distribution and, recursively, the dependencies its metadata declares that apply to this
    interpreter (markers) with the extras asked of it. Looks in `site_packages` (default: the project
    environment's). Raises ClosureError for a requirement or applicable dependency that is not installed, or an
    installed version a requirement rules out."""
    installed = _installed(tuple(Path(root) for root in site_packages) if site_packages else SITE_PACKAGES)
    chosen: dict[str, metadata.Distribution] = {}
    done: dict[str, set[str]] = {}  # canonical name -> the extras ("" the distribution itself) followed
    queue: deque[tuple[Requirement, str]] = deque()
    for line in requirements:
        try:
            queue.append((Requirement(line), "the requirements"))
        except InvalidRequirement as error:
            raise ClosureError(f"invalid requirement {line!r}: {error}") from error
    while queue:
        requirement, wanted_by = queue.popleft()
        name = canonicalize_name(requirement.name)
        found = installed.by_name.get(name, [])
        if not found:
            raise ClosureError(f"{requirement.name} is not installed in {', '.join(map(str, installed.roots))}, but "
                               f"{wanted_by} require {requirement}: pip would install it, so the environment "
                               "cannot be faithful")
        if len(found) > 1:
            raise ClosureError(f"{requirement.name} is installed more than once in {', '.join(map(str, installed.roots))}: "
                               + ", ".join(_label(dist) for dist in found))
        dist = found[0]
        if requirement.specifier and not requirement.specifier.contains(dist.version, prereleases=True):
            raise ClosureError(f"{dist.metadata['Name']} {dist.version} is installed, but {wanted_by} require "
                               f"{requirement}")
        chosen.setdefault(name, dist)
        extras = {""} | {canonicalize_name(extra) for extra in requirement.extras}
        new = extras - done.setdefault(name, set())
        if not new:
            continue
        done[name] |= new
        for line in dist.requires or []:
            dependency = Requirement(line)
            if dependency.marker is None:
                applies = "" in new
            else:
                applies = any(dependency.marker.evaluate({"extra": extra}) for extra in new)
            if applies:
                queue.append((dependency, _label(dist, new)))
    return list(chosen.values())


def environment_with(requirements: list[str], folder: Path, *,
                     site_packages: list[Path] | tuple[Path, ...] | None = None) -> Path:
    """A virtual environment at `folder` holding exactly the closure of `requirements` (requirement_closure),
    linked from the installed distributions; returns its python executable. Reuses the environment when `folder`
    holds one built for the same requirements from the same distributions, rebuilds an outdated one, and refuses
    a folder holding anything else."""
    closure = requirement_closure(requirements, site_packages=site_packages)
    installed = _installed(tuple(Path(root) for root in site_packages) if site_packages else SITE_PACKAGES)
    folder = Path(folder).absolute()
    python = folder / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")
    stamp = {"requirements": list(requirements), "site_packages": [str(root) for root in installed.roots],
             "distributions": [[dist.metadata["Name"], dist.version] for dist in closure], "complete": True}
    if (folder / STAMP).is_file():
        if json.loads((folder / STAMP).read_text()) == stamp and python.exists():
            return python
        shutil.rmtree(folder)  # built here by environment_with, for something else or not finished
    elif folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty and no environment environment_with built")

    venv.EnvBuilder(symlinks=os.name != "nt", with_pip=False).create(folder)  # as `python -m venv --without-pip`
    (folder / STAMP).write_text(json.dumps({**stamp, "complete": False}))
    target = Path(sysconfig.get_path("purelib", "venv" if "venv" in sysconfig.get_scheme_names() else None,
                                     vars={"base": str(folder), "platbase": str(folder)}))
    if not target.is_dir():
        raise RuntimeError(f"the new environment has no {target}")

    names = {canonicalize_name(dist.metadata["Name"]) for dist in closure}
    trees: dict[Path, dict] = {}  # site-packages folder -> the closure's files there, as a tree of path components
    for dist in closure:
        if dist.files is None:
            raise ClosureError(f"{_label(dist)} in {dist.locate_file('')} lists no files (no RECORD): what it "
                               "installed cannot be told from what others did")
        root, files = _site_files(dist)
        tree = trees.setdefault(root, {})
        for parts in files:
            node = tree
            for part in parts:
                node = node.setdefault(part, {})

    def link(tree: dict, parts: tuple[str, ...], source: Path) -> None:
        for name, below in tree.items():
            path = parts + (name,)
            into = target.joinpath(*path)
            if below and installed.owners_below.get(path, set()) - names:  # others' files in it too: a real folder
                into.mkdir(exist_ok=True)
                link(below, path, source)
            elif not os.path.lexists(into):
                into.symlink_to(source.joinpath(*path), target_is_directory=bool(below))

    for root, tree in trees.items():
        link(tree, (), root)
    _write_scripts(closure, python)
    (folder / STAMP).write_text(json.dumps(stamp))
    return python


def environment_for(requirements: list[str], root: Path, **options) -> Path:
    """environment_with in a folder of `root` named after the requirements: one environment per requirements
    list, shared by whoever asks with the same root (a session's tmp_path_factory.getbasetemp(), say)."""
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    return environment_with(requirements, Path(root) / f"environment-{digest}", **options)


SCRIPT = """#!{python}
import re
import sys
from {module} import {head}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({call}())
"""


def _write_scripts(closure: list[metadata.Distribution], python: Path) -> None:
    """The console scripts of the closure's distributions, in the environment's bin/ (as pip writes them)."""
    if os.name == "nt":
        return  # pip writes launchers (.exe) there
    for dist in closure:
        for entry in dist.entry_points:
            if entry.group not in ("console_scripts", "gui_scripts") or not entry.attr:
                continue
            script = python.parent / entry.name
            if os.path.lexists(script):
                continue  # python, activate: the environment's own
            script.write_text(SCRIPT.format(python=python, module=entry.module, head=entry.attr.split(".")[0],
                                            call=entry.attr))
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
