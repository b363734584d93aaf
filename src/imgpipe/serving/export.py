"""Writing the served model: the network as a torch.export program, its preprocessing, the code MLflow runs to
load it (the loader's import closure inside imgpipe, nothing more) and the requirements derived from what that
code imports, so the model loads wherever those are installed, not only in imgpipe's own environment."""

import functools
import shutil
from importlib.metadata import packages_distributions, version
from pathlib import Path

import numpy as np
import torch

from imgpipe import lineage
from imgpipe.serving.model import PREPROCESSING, PROGRAM
from imgpipe.serving.preprocessing import Preprocessing

# What MLflow executes to build the model at load time ("models from code"): a file, not a pickle.
LOADER = Path(__file__).with_name("loader.py")


def artifacts(model: torch.nn.Module, example: np.ndarray, preprocessing: Preprocessing, folder: Path) -> dict[str, str]:
    """Write the served model's files into folder: the network, in eval mode on the CPU, as a torch.export
    program taking uint8 (B, C, H, W) of any batch size (example: a few such images, to trace it), and its
    preprocessing. Returns them as MLflow's `artifacts`."""
    model = model.cpu().eval()
    batch = torch.export.Dim.AUTO  # the exporter decides; a batch of 1 may not be marked dynamic
    program = torch.export.export(model, (torch.from_numpy(np.array(example)),), dynamic_shapes=({0: batch},))  # a copy: may be memory-mapped
    files = {PROGRAM: folder / "program.pt2", PREPROCESSING: folder / "preprocessing.json"}
    torch.export.save(program, files[PROGRAM])
    preprocessing.write(files[PREPROCESSING])
    return {name: str(path) for name, path in files.items()}


def code_files() -> list[Path]:
    """imgpipe's files the loader runs: the only code the logged model carries."""
    return lineage.closure(LOADER)


def copy_code(folder: Path) -> Path:
    """The loader's closure copied into folder/imgpipe, laid out as in the package; returns that folder."""
    package = Path(folder) / lineage.NAME
    for path in code_files():
        target = package / path.relative_to(lineage.PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return package


@functools.cache  # reading every installed package's metadata takes a second; it cannot change within a run
def distributions() -> dict[str, str]:
    """The module -> distribution of every third-party module the served code imports (PIL -> pillow)."""
    found = packages_distributions()
    # mlflow's modules come from three distributions (mlflow, mlflow-skinny, mlflow-tracing): the one named
    # after the module is the whole package
    return {module: module if module in found[module] else found[module][0]
            for module in sorted(lineage.third_party(code_files()))}


def requirements() -> list[str]:
    """The served code's requirements, pinned to the installed versions (local build tags dropped: a CPU
    build of torch 2.14.1+cpu is installed as torch==2.14.1 elsewhere)."""
    return [f"{package}=={version(package).split('+')[0]}" for package in sorted(set(distributions().values()))]
