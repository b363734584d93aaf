"""Classify new images with a trained model:

    python -m imgpipe.predict --model models/cnn/seed0.pt photo.png more_images/ [--output predictions.csv]
    python -m imgpipe.predict --model models:/imgpipe-digits@champion photo.png    (a registered model)
    python -m imgpipe.predict --model models/cnn/seed0.pt photos/ --explain overlays/   (and where it looked)

Images are read and classified 1,024 at a time. Every image goes through prepare's preprocessing (the checkpoint's channel count and image size,
transparency laid on its background colour; the model normalizes with its stored statistics), and
one CSV row per image is written: path, predicted class, confidence, then the next best classes. Confidences
are the model's calibrated ones: its class scores divided by the temperature fitted on the validation split
(imgpipe.evaluation.calibration), which changes no predicted class.
With --explain, an overlay PNG per image shows where the model looked for the class it predicted (HiResCAM, or input
gradients for a model without convolutions: imgpipe.evaluation.saliency), at the image's path below the folders
given (photos/cat/001.jpg -> overlays/cat/001.png); the table's `overlay` column names it.
An unreadable file is reported by name and skipped; the exit status is 1 if any was, else 0.
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from imgpipe.data.decode import IMAGE_SUFFIXES, decode
from imgpipe.device import pick_device
from imgpipe.errors import ImgpipeError, machine_error
from imgpipe.evaluation.saliency import saliency
from imgpipe.files import atomic_path
from imgpipe.models.checkpoint import load_checkpoint
from imgpipe.serving.answer import top_classes
from imgpipe.serving.preprocessing import Preprocessing
from imgpipe.tracking.uris import is_uri

FILES_AT_ONCE = 1024  # images decoded and classified at a time: a folder of any size in bounded memory
EXPLAIN_PIXELS = 256  # --explain's overlays are enlarged to at least this many pixels on their short side


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted), hidden ones passed over as training's
    image folders pass them (macOS's ._photo.jpg, a .thumbnails/ folder)."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            found.append(path)  # named explicitly: tried whatever its suffix, reported if unreadable
    return found


def read_images(files: list[Path], image_shape: tuple[int, int, int], background: tuple[int, int, int]
                ) -> tuple[list[Path], np.ndarray, list[str]]:
    """The readable files with their images as uint8 (N, C, H, W), and one error line per unreadable file."""
    channels, height, width = image_shape
    read, arrays, errors = [], [], []
    for file in files:
        try:
            arrays.append(decode(file, channels, (height, width), background))
            read.append(file)
        except ImgpipeError as error:
            errors.append(str(error))
    images = np.stack(arrays) if arrays else np.zeros((0, *image_shape), dtype=np.uint8)
    return read, images, errors


def overlay_names(files: list[Path]) -> dict[Path, Path]:
    """Each file's overlay, relative to the explain folder: its path below the folder all files share, as a PNG
    (cat/001.jpg -> cat/001.png), so files of one name in different folders keep apart; where two names would
    still meet (001.jpg beside 001.png), the image's own suffix stays in (001.jpg.png)."""
    absolute = [Path(os.path.abspath(file)) for file in files]
    common = Path(os.path.commonpath([file.parent for file in absolute])) if files else Path()
    relative = [file.relative_to(common) for file in absolute]
    taken = Counter(path.with_suffix(".png") for path in relative)
    return {file: path.with_suffix(".png") if taken[path.with_suffix(".png")] == 1 else path.with_name(path.name + ".png")
            for file, path in zip(files, relative)}


def write_explanations(folder: Path, names: dict[Path, Path], model: torch.nn.Module, files: list[Path], images: np.ndarray,
                       table: pd.DataFrame, class_names: tuple[str, ...], device: torch.device) -> str:
    """An overlay PNG per image at folder / names[file]: where the model looked for the class it predicted,
    enlarged to at least EXPLAIN_PIXELS on its short side. Returns the method (HiResCAM or input gradients)."""
    from imgpipe.reporting.figures import overlay  # matplotlib: imported only when overlays are asked for

    predicted = torch.tensor([class_names.index(name) for name in table["predicted"]])
    heat, method = saliency(model.to(device), torch.from_numpy(images).to(device), predicted)
    for file, image, map_ in zip(files, images, heat.cpu().numpy()):
        picture = Image.fromarray(overlay(image, map_))
        scale = max(1, -(-EXPLAIN_PIXELS // min(picture.size)))
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
        target = folder / names[file]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            picture.save(tmp, format="PNG")
    return method


def _identity(path: Path) -> tuple:
    """What names one file however it is spelled: its device and inode where it exists (a case-insensitive disk's
    IMG_1.png is img_1.png; a hard link), else its resolved path."""
    try:
        found = os.stat(path)
        return found.st_dev, found.st_ino
    except OSError:
        return (os.path.realpath(path),)


def refuse_overwriting(output: Path | None, explain: Path | None, files: list[Path], model: Path | None = None) -> None:
    """Nothing predict writes may take the place of a folder, of an image it reads or of the checkpoint it reads
    (`model`): --output replaces a file whole, and an overlay's name is its image's own below --explain."""
    images = {_identity(file): file for file in files}
    if output is not None and output.is_dir():
        raise ImgpipeError(f"{output}: is a folder; --output names the CSV file to write")
    if output is not None:
        writable_below(output.parent, "--output", output)
    if output is not None and _identity(output) in images:
        raise ImgpipeError(f"{output}: is one of the images to classify; --output names the CSV file to write")
    if output is not None and model is not None and _identity(output) == _identity(model):
        raise ImgpipeError(f"{output}: is the model's checkpoint; --output names the CSV file to write")
    if explain is None:
        return
    if explain.exists() and not explain.is_dir():
        raise ImgpipeError(f"{explain}: is a file; --explain names the folder to write the overlays into")
    writable_below(explain, "--explain", explain)
    for name in overlay_names(files).values():
        replaced = images.get(_identity(explain / name))
        if replaced is not None:
            raise ImgpipeError(f"--explain {explain}: the overlay {explain / name} would replace the image {replaced}; choose another folder")


def writable_below(folder: Path, flag: str, asked: Path) -> None:
    """The folder, or the nearest one above it that exists, is a folder this process may write into: checked before
    any image is read, so that a long run does not end at its first write."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise ImgpipeError(f"{flag} {asked}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImgpipeError(f"{flag} {asked}: {folder}: no permission to write")


def load_model(model: str, device: str = "auto") -> tuple[torch.nn.Module, Preprocessing, bool]:
    """The model a checkpoint or an MLflow URI names, its preprocessing, and whether it is a checkpoint. A URI's model
    is placed on `device` as it loads (auto: where the served model computes, IMGPIPE_SERVE_DEVICE's choice)."""
    if is_uri(model):
        from imgpipe.tracking import registry  # MLflow: imported only for a model of its registry or runs

        return *registry.load(model, device), False
    network, meta = load_checkpoint(Path(model))
    return network, Preprocessing.of(meta), True


def shown(path: Path) -> str:
    """A path as text a table can hold: a name that is not UTF-8 (café.jpg from an old zip: its bytes kept by Python
    as surrogates, which pandas' text columns refuse) shows its stray bytes as \\xe9."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def classify(files: list[Path], model: torch.nn.Module, preprocessing: Preprocessing, top_k: int, device: torch.device,
             explain: Path | None) -> tuple[pd.DataFrame, list[str]]:
    """Every readable file's row, and one error line per unreadable file."""
    tables, errors = [], []
    names = overlay_names(files) if explain is not None else {}
    for start in tqdm(range(0, len(files), FILES_AT_ONCE), desc="predict", unit="chunk", disable=len(files) <= FILES_AT_ONCE):
        read, images, unreadable = read_images(files[start:start + FILES_AT_ONCE], preprocessing.image_shape,
                                               preprocessing.background)
        table = top_classes(model, images, preprocessing.class_names, top_k, device)
        if explain is not None and len(read):
            method = write_explanations(explain, names, model, read, images, table, preprocessing.class_names, device)
            print(f"{len(read)} overlays ({method}) -> {explain}", file=sys.stderr)
        table.insert(0, "path", [shown(p) for p in read])
        if explain is not None:
            table["overlay"] = [shown(explain / names[p]) for p in read]
        tables.append(table)
        errors += unreadable
    return pd.concat(tables, ignore_index=True), errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgpipe.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a checkpoint written by training (models/cnn/seed0.pt) or an MLflow "
                        "model URI (models:/imgpipe-digits@champion, runs:/<run id>/model)")
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders of images")
    parser.add_argument("--output", type=Path, help="CSV file to write (default: standard output)")
    parser.add_argument("--top-k", type=int, default=3, help="classes listed per image, best first (default: 3)")
    parser.add_argument("--device", default="auto", help="auto (default), cuda, mps or cpu")
    parser.add_argument("--explain", type=Path, metavar="FOLDER", help="also write an overlay PNG per image into FOLDER: "
                        "where the model looked for the class it predicted (a checkpoint's model only)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    try:
        pick_device(args.device)  # refused here, naming --device's value, before any model loads
        model, preprocessing, is_checkpoint = load_model(args.model, args.device)
        if args.explain is not None and not is_checkpoint:
            raise ImgpipeError(f"--explain needs a checkpoint (models/<variant>/seed<seed>.pt): {args.model} is an exported "
                               "program, which keeps no layers to look into")
        if preprocessing.note:
            print(preprocessing.note, file=sys.stderr)
        missing = [str(p) for p in args.paths if not p.exists()]
        if missing:
            raise ImgpipeError(f"{missing[0]}: no such file or folder")
        files = image_files(args.paths)
        if not files:
            raise ImgpipeError(f"no image files in {', '.join(map(str, args.paths))}")
        refuse_overwriting(args.output, args.explain, files, Path(args.model) if is_checkpoint else None)
        device = pick_device(args.device) if is_checkpoint else model.device  # a served model's: where it was placed
        table, errors = classify(files, model, preprocessing, args.top_k, device, args.explain)
        for error in errors:
            print(f"skipped: {error}", file=sys.stderr)
        if args.output is None:
            table.to_csv(sys.stdout, index=False)
        else:
            with atomic_path(args.output) as tmp:
                table.to_csv(tmp, index=False)
            print(f"{len(table)} predictions -> {args.output}", file=sys.stderr)
    except (ImgpipeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine's: a full disk, no permission
        print(f"error: {machine_error(error)}", file=sys.stderr)
        return 1
    if errors:
        print(f"{len(errors)} of {len(files)} files could not be read", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
