"""Writing the served model: the network as a torch.export program, its preprocessing, the code MLflow runs to
load it (the loader's import closure inside imgpipe, nothing more) and the requirements derived from what that
code imports, so the model loads wherever those are installed, not only in imgpipe's own environment."""

import functools
import shutil
from importlib import metadata
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


@functools.cache  # once per process: it cannot change within a run
def distributions() -> dict[str, str]:
    """The module -> distribution of every third-party module the served code imports (PIL -> pillow)."""
    modules, found = lineage.third_party(code_files()), {}
    for module in sorted(modules):
        # Most are installed under their own name (mlflow's modules come from three distributions, mlflow,
        # mlflow-skinny and mlflow-tracing: the one named after the module is the whole package).
        try:
            top_level = metadata.distribution(module).read_text("top_level.txt")
        except metadata.PackageNotFoundError:
            continue
        if top_level is None or module in top_level.split():
            found[module] = module
    missing = modules - set(found)
    for installed in metadata.distributions() if missing else ():  # the others (PIL): by the top-level names a package declares
        for module in missing.intersection((installed.read_text("top_level.txt") or "").split()):
            found.setdefault(module, installed.metadata["Name"])  # the first on sys.path, as import finds it
    if missing - set(found):  # declared by none: by the files every package installed (a second to read)
        owners = metadata.packages_distributions()
        found |= {module: owners[module][0] for module in missing - set(found)}
    return dict(sorted(found.items()))


def requirements() -> list[str]:
    """The served code's requirements, pinned to the installed versions (local build tags dropped: a CPU
    build of torch 2.14.1+cpu is installed as torch==2.14.1 elsewhere)."""
    return [f"{package}=={metadata.version(package).split('+')[0]}" for package in sorted(set(distributions().values()))]
