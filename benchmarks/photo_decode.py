"""Decoding phone photos for an image folder (issue #21, part 5): a 12-megapixel JPEG decoded at full size
then resized to 224x224 (the path before), against decoded at 1/8 scale first (JPEG draft mode, now); and the
decoding pool counted in bytes as well as files, so a folder of a few dozen photos gets one process per core.

    python benchmarks/photo_decode.py [FOLDER] [--photos 48] [--runs 3] [--size 224] [--start-method spawn]
                                                                                    (about 2 minutes)
    python benchmarks/photo_decode.py --photos 5 --quality 100 --runs 1     (the tests' check: seconds)

Makes FOLDER (default: a temporary folder, removed afterwards) holding --photos synthetic 4000x3000 JPEGs
(quality 90 unless --quality says, about 2 MB each) in two class folders: smooth gradients in each class's
colours, soft blobs, fine detail and sensor-like grain, so the files are photo-sized, not flat colour. A FOLDER
this benchmark made with the same settings (photo-decode-benchmark.json beside the class folders) is reused.
--quality 100 makes each about 8.5 MB, so 5 photos (42 MB) are bytes enough for a pool of 2 (16 MB a process):
the tests' check of the variants, with a quarter of the photos quality 90 would need; the figures to quote are
quality 90's.

Prints the machine, versions and multiprocessing start method, the folder, then per run and as the median of
--runs: photos/s decoding every photo to 3 x size x size in this process with imgpipe's decode (reduced=False:
full decode then resize; reduced=True: draft, as fetch, predict and the served model now do), their ratio,
how far the two results are apart (mean absolute difference in grey levels); and photos/s of the real fetch
path (image_folder(DataConfig(...)) writing the splits, as stages/fetch.py does) with each of its two changes
alone and both, against neither (VARIANTS): each its own ratio to "before", and how many decoding processes it
started. Each fetch's written images are checked against decode in this process with the variant's choice of
draft, so a variant that did not run as declared stops the benchmark instead of printing a figure. Other
processes' CPU use during the runs is printed too: a busy machine skews the figures.

The variants are set in this process alone, where image_folder reads them (the pool's size, and the function
its jobs run, which reaches the workers by name): they hold under any start method, fork, spawn or forkserver.
"""

import argparse
import datetime
import importlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

from imgpipe.config import DataConfig
from imgpipe.data.decode import decode
from imgpipe.data.imageset import load, save_fetched

# The module, not the function the package re-exports under the same name: fetch_seconds sets its variant there.
image_folder = importlib.import_module("imgpipe.data.sources.image_folder")

WIDTH, HEIGHT = 4000, 3000  # a 12-megapixel phone photo, landscape
QUALITY = 90  # JPEG quality, as a phone saves
CLASSES = ("dusk", "meadow")
PALETTE = {"dusk": ((40, 20, 90), (250, 140, 60)), "meadow": ((30, 90, 30), (180, 210, 250))}  # each class's gradient ends
MARKER = "photo-decode-benchmark.json"  # beside the class folders: the image folder source reads folders only
BACKGROUND = (255, 255, 255)


def photo(index: int, label: str, grain: np.ndarray) -> Image.Image:
    """A gradient in the class's colours at a random angle, soft blobs and detail drawn at 1/8 size and
    scaled up (smooth, as a lens draws), then per-pixel grain: about 2 MB at quality 90, as a phone photo."""
    rng = np.random.default_rng(index)
    height, width = HEIGHT // 8, WIDTH // 8
    y, x = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x / width + np.sin(angle) * y / height
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    low, high = (np.array(colour, dtype=np.float32) for colour in PALETTE[label])
    blobs = np.stack([np.asarray(Image.fromarray(rng.uniform(-40, 40, (height // 16, width // 16)).astype(np.float32))
                                 .resize((width, height), Image.Resampling.BICUBIC)) for _ in range(3)], -1)
    small = low + ramp[..., None] * (high - low) + blobs + rng.normal(0, 10, (height, width, 3))  # (H/8, W/8, 3)
    large = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    pixels = np.asarray(large).astype(np.int16) + np.roll(grain, index * 977, axis=1)  # (H, W, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_folder(folder: Path, count: int, quality: int = QUALITY) -> list[Path]:
    """The folder's photos, made unless a complete folder of the same settings is there."""
    marker, wanted = folder / MARKER, {"photos": count, "size": [WIDTH, HEIGHT], "quality": quality, "classes": list(CLASSES)}
    if marker.exists():
        if json.loads(marker.read_text()) == wanted | {"complete": True}:
            return sorted(folder.rglob("*.jpg"))
        shutil.rmtree(folder)  # ours, but of other settings or left half made
    elif folder.exists() and any(folder.iterdir()):
        sys.exit(f"{folder}: not empty and not made by this benchmark (no {MARKER}); choose another folder")
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted | {"complete": False}))
    start = time.perf_counter()
    grain = np.random.default_rng(0).normal(0, 3, (HEIGHT, WIDTH, 3)).astype(np.int8)  # one field, shifted per photo
    for index in range(count):
        label = CLASSES[index % len(CLASSES)]
        photo(index, label, grain).save(folder / label / f"{index:04d}.jpg", quality=quality)
    marker.write_text(json.dumps(wanted | {"complete": True}))
    print(f"made {count} photos in {time.perf_counter() - start:.0f} s")
    return sorted(folder.rglob("*.jpg"))


def cpu_seconds() -> tuple[float, float]:
    """CPU-seconds so far: the whole machine's (user, nice, system), and this process's with its reaped children."""
    busy = sum(map(int, Path("/proc/stat").read_text().split()[1:4])) / os.sysconf("SC_CLK_TCK")
    return busy, time.process_time() + sum(os.times()[2:4])


def header(files: list[Path], start_method: str, quality: int) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    versions = ", ".join(f"{package} {version(package)}" for package in ("pillow", "numpy", "torch"))
    on_disk = sum(file.stat().st_size for file in files)
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores (os.cpu_count {os.cpu_count()}); Python {platform.python_version()}, "
            f"{versions}; multiprocessing start method {start_method}; "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}\n"
            f"{files[0].parents[1]}: {len(files)} JPEGs of {WIDTH}x{HEIGHT} (quality {quality}) in {len(CLASSES)} classes, "
            f"{on_disk / len(files) / 1e6:.1f} MB each on average")


def decode_all(files: list[Path], size: int, reduced: bool) -> tuple[float, np.ndarray]:
    """Seconds to decode every file to 3 x size x size, one after another in this process, and the images."""
    start = time.perf_counter()
    images = np.stack([decode(file, 3, (size, size), BACKGROUND, reduced=reduced) for file in files])
    return time.perf_counter() - start, images


@dataclass(frozen=True)
class Variant:
    """The fetch path with or without each of its two changes."""

    name: str
    draft: bool  # JPEGs decoded at the smallest DCT scale covering the size; else at full size, then resized
    pool_counts_bytes: bool  # the decoding pool sized by bytes to decode as well as files; else by files alone


VARIANTS = (  # "before" first: the others' ratios are to it
    Variant("before", draft=False, pool_counts_bytes=False),
    Variant("draft alone", draft=True, pool_counts_bytes=False),
    Variant("pool's byte count alone", draft=False, pool_counts_bytes=True),
    Variant("both (now)", draft=True, pool_counts_bytes=True),
)


def pool_size_by_files(files) -> int:
    """The decoding pool before: one process per core from 512 files on, whatever their size."""
    return min(os.cpu_count() or 1, max(1, len(files) // 256))


def decode_full_size(job: tuple) -> np.ndarray:
    """The pool's job without draft. A function of this module, so a spawned or forkserver worker finds it
    by name, where a patch of decode's module would reach forked workers only."""
    return decode(*job, reduced=False)


def fetch_seconds(folder: Path, size: int, scratch: Path, variant: Variant) -> float:
    """The fetch stage's work on the folder, as the variant does it: list, choose channels, decode and write
    the raw splits to scratch/raw. image_folder reads both settings in this process when it writes a split."""
    saved = image_folder._decode_all, image_folder.pool_size  # an AttributeError if image_folder renamed them
    image_folder._decode_all = saved[0] if variant.draft else decode_full_size
    image_folder.pool_size = saved[1] if variant.pool_counts_bytes else pool_size_by_files
    try:
        start = time.perf_counter()
        save_fetched(image_folder.image_folder(DataConfig(dataset="imagefolder", path=folder, image_size=(size, size))),
                     scratch / "raw")
        return time.perf_counter() - start
    finally:
        image_folder._decode_all, image_folder.pool_size = saved


def processes(variant: Variant, files: list[Path]) -> int:
    """The decoding processes the variant's fetch starts (1: none, it decodes in this process)."""
    return (image_folder.pool_size if variant.pool_counts_bytes else pool_size_by_files)(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="where the photos are made, or reused (default: a temporary folder)")
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="data.image_size, a side (pixels)")
    parser.add_argument("--quality", type=int, default=QUALITY, help="JPEG quality the photos are saved at (a phone's: 90)")
    parser.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                        default=multiprocessing.get_start_method(), help="how the decoding pool starts its processes "
                        "(default: this platform's, as fetch gets it)")
    args = parser.parse_args()
    multiprocessing.set_start_method(args.start_method, force=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_folder(args.folder or Path(tmp) / "photos", args.photos, args.quality)
        folder = files[0].parents[1]
        print(header(files, args.start_method, args.quality))
        before, after = [], []
        fetched = {variant: [] for variant in VARIANTS}  # photos/s of each run
        others = cpu_seconds()
        for run in range(1, args.runs + 1):  # interleaved: a neighbour's load falls on every variant alike
            full_s, full = decode_all(files, args.size, reduced=False)
            draft_s, drafted = decode_all(files, args.size, reduced=True)
            for variant in VARIANTS:
                fetched[variant].append(len(files) / fetch_seconds(folder, args.size, Path(tmp), variant))
                if not np.array_equal(load(Path(tmp) / "raw", "train").images, drafted if variant.draft else full):
                    sys.exit(f"fetch, {variant.name}: its images differ from decode(reduced={variant.draft}) of the same "
                             f"files in this process; the variant did not run as declared ({args.start_method} workers)")
            before.append(len(files) / full_s)
            after.append(len(files) / draft_s)
            difference = np.abs(full.astype(np.int16) - drafted).mean()
            print(f"run {run}: decode in one process: before (full decode, resize) {before[-1]:.1f} photos/s, after (draft) "
                  f"{after[-1]:.1f} photos/s, results {difference:.2f} grey levels apart on average; fetch: "
                  + ", ".join(f"{variant.name} {fetched[variant][-1]:.1f}" for variant in VARIANTS) + " photos/s")
        (busy, ours), (busy_before, ours_before) = cpu_seconds(), others
        print(f"median of {args.runs}, decode in one process: before {statistics.median(before):.1f} photos/s "
              f"({1 / statistics.median(before):.3f} s a photo), after {statistics.median(after):.1f} photos/s "
              f"({1 / statistics.median(after):.3f} s a photo), {statistics.median(after) / statistics.median(before):.1f}x")
        base = statistics.median(fetched[VARIANTS[0]])
        for variant, rates in fetched.items():
            print(f"median of {args.runs}, fetch of the {len(files)} photos to {args.size}x{args.size}, {variant.name} "
                  f"(draft: {'yes' if variant.draft else 'no'}, pool counted in {'bytes and files' if variant.pool_counts_bytes else 'files'}: "
                  f"{processes(variant, files)} process(es)): {statistics.median(rates):.1f} photos/s "
                  f"[{min(rates):.1f}-{max(rates):.1f}], {statistics.median(rates) / base:.1f}x before")
        print(f"other processes used {busy - busy_before - (ours - ours_before):.0f} CPU-seconds during the runs")


if __name__ == "__main__":
    main()
