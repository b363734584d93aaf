"""Data larger than memory (issue #14): each stage's peak memory on an image folder of >= --gb GB decoded,
and training throughput on streamed (memory-mapped) against resident data.

    python benchmarks/memory.py [--gb 4] [--folder /tmp/imgpipe-memory] [--keep] [--runs 3]   (with .venv/bin first on PATH)

Makes --folder: JPEGs 160-288 px a side in class0..class4, enough that their decoded copy (N x 3 x 224 x 224
uint8) is >= --gb GB (1e9 bytes); a folder whose memory-benchmark.json names the same count and seed is
reused, and it is kept (it takes minutes to make). Runs fetch, prepare, train and evaluate (linear and cnn,
seed 0, 1 epoch) on it in a copy of the project (as tests/project.py), each with dvc.yaml's command as its
own process, as DVC would, and every ~50 ms sums RssAnon (/proc/<pid>/status: private memory; memory-mapped
files and the page cache do not count) over the stage's process and its descendants (decoding and batching
pools). Pages a forked worker still shares with its parent count twice: the peak is an upper bound.
Then trains linear and cnn in this process, 1 epoch on 60,000 random 1x28x28 images (MNIST's size), --runs
times each with TrainConfig.data_on_device True (resident) and False (streamed from the memory-mapped files
load_prepared returns); the other settings are params.yaml's.

Prints the machine and versions; per stage its peak RssAnon (MiB) against the limit, 1536 MiB (1.5 GiB),
wall seconds, images handled and images/s; resident and streamed training images/s, median [min-max], and
their ratio; after each, the CPU-seconds other processes took meanwhile (a busy machine skews the figures);
then whether the issue's targets hold. Exits 1 if one does not, or could not be measured.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
KEEP = ["dvc.yaml", "params.yaml", "excluded.txt", "stages", "src", ".dvc", ".dvcignore", ".gitignore"]  # as tests/project.py (config.local left behind)
SIZE = 224  # data.image_size, a side: every image is decoded to 3 x SIZE x SIZE
IMAGE_BYTES = 3 * SIZE * SIZE
CLASSES, SEED = 5, 0
MARKER = "memory-benchmark.json"  # a file beside the class folders: the image folder source reads folders only
VARIANTS = ("linear", "cnn")
LIMIT_MIB = 1536  # a stage's peak RssAnon may be at most 1.5 GiB
SLOWDOWN = 0.15  # streamed training may be at most 15% slower than resident
PALETTE = np.random.default_rng(SEED).integers(0, 256, (CLASSES, 2, 3))  # each class's two gradient colours


def draw_images(job: tuple[Path, int, int]) -> None:
    """Images start..stop-1, each the same whichever worker draws it: a smooth gradient in its class's colours
    at its class's angle, plus noise and blocks of noise so JPEG cannot squeeze it to nothing."""
    folder, start, stop = job
    for index in range(start, stop):
        rng, label = np.random.default_rng([SEED, index]), index % CLASSES
        height, width = rng.integers(160, 289, 2)
        angle = 2 * np.pi * (label + rng.uniform(-0.2, 0.2)) / CLASSES
        y, x = np.mgrid[0:height, 0:width]
        ramp = np.cos(angle) * x / width + np.sin(angle) * y / height
        ramp = (ramp - ramp.min()) / np.ptp(ramp)
        low, high = PALETTE[label]
        pixels = low + ramp[..., None] * (high - low) + rng.normal(0, 6, (height, width, 3))  # (H, W, 3)
        for _ in range(rng.integers(4, 12)):
            side = rng.integers(8, 48)
            top, left = rng.integers(0, height - side), rng.integers(0, width - side)
            pixels[top:top + side, left:left + side] = rng.integers(0, 256, (side, side, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"class{label}" / f"{index:06d}.jpg", quality=90)


def make_folder(folder: Path, count: int) -> float | None:
    """The folder of `count` images, made unless a complete one is there: the seconds making it took, or None."""
    marker, wanted = folder / MARKER, {"images": count, "seed": SEED, "classes": CLASSES, "size": [160, 288]}
    if marker.exists():
        found = json.loads(marker.read_text())
        if found == wanted | {"complete": True}:
            return None
        shutil.rmtree(folder)  # ours, but of another size or left half made
    elif folder.exists() and any(folder.iterdir()):
        sys.exit(f"{folder}: not empty and not made by this benchmark (no {MARKER}); choose another --folder")
    for label in range(CLASSES):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted | {"complete": False}))
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(draw_images, [(folder, s, min(s + 200, count)) for s in range(0, count, 200)]))
    marker.write_text(json.dumps(wanted | {"complete": True}))
    return time.perf_counter() - start


def copy_project(target: Path, folder: Path, env: dict) -> None:
    """The project's code and configuration, none of its outputs, as a fresh git repository, reading the folder."""
    for name in KEEP:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("config.local", "cache", "tmp", "__pycache__"))
        elif source.exists():
            shutil.copy2(source, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"] |= {"dataset": "imagefolder", "path": str(folder), "image_size": [SIZE, SIZE]}
    # Batch 16: TinyVGG's activations at 224x224 take about 20 MB an image in training (batch 64: 1.3 GB,
    # whatever the data); the limit is about the data, so the batch is kept small.
    params["train"] |= {"variants": list(VARIANTS), "seeds": [0], "epochs": 1, "batch_size": 16}
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        subprocess.run(["git", *args], cwd=target, env=env, check=True)


def stage_commands(project: Path) -> list[tuple[str, list[str], str | None]]:
    """(stage as DVC names it, its command from dvc.yaml, the stages it needs) in the order DVC runs them."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    commands = [("fetch", stages["fetch"]["cmd"], ()), ("prepare", stages["prepare"]["cmd"], ("fetch",))]
    for variant in VARIANTS:
        cmd = stages["train"]["cmd"].replace("${item.variant}", variant).replace("${item.seed}", "0")
        commands.append((f"train@{variant}-0", cmd, ("prepare",)))
    commands.append(("evaluate", stages["evaluate"]["cmd"], tuple(f"train@{v}-0" for v in VARIANTS)))  # scores every variant
    return [(name, shlex.split(cmd), needs) for name, cmd, needs in commands]


def cpu_seconds() -> tuple[float, float]:
    """CPU-seconds so far: the whole machine's (user, nice, system), and this process's with its reaped children."""
    busy = sum(map(int, Path("/proc/stat").read_text().split()[1:4])) / os.sysconf("SC_CLK_TCK")
    ours = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, sum(usage.ru_utime + usage.ru_stime for usage in ours)


def others_since(before: tuple[float, float]) -> str:
    """What other processes took meanwhile: a busy machine (another job, a neighbour) skews every figure."""
    (busy, ours), (busy_before, ours_before) = cpu_seconds(), before
    return f"other processes used {busy - busy_before - (ours - ours_before):.0f} CPU-seconds meanwhile"


def tree_rss_anon(root: int) -> int:
    """RssAnon in bytes summed over `root` and its descendants, found by their parent ids in /proc/*/status
    (this kernel has no /proc/<pid>/task/*/children)."""
    children, rss = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            lines = Path(entry.path, "status").read_text().splitlines()
        except OSError:  # ended meanwhile
            continue
        status = dict(line.split(":", 1) for line in lines if line.startswith(("PPid", "RssAnon")))
        children.setdefault(int(status["PPid"]), []).append(int(entry.name))
        rss[int(entry.name)] = int(status.get("RssAnon", "0 kB").split()[0]) * 1024  # zombies have none
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += rss.get(pid, 0)
        pending += children.get(pid, [])
    return total


def run_measured(argv: list[str], project: Path, env: dict, logs: Path, name: str) -> tuple[int, float, int]:
    """Run one stage: its exit status, wall seconds and peak RssAnon (bytes) over its process tree."""
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        start, peak = time.perf_counter(), 0
        process = subprocess.Popen(argv, cwd=project, env=env, stdout=out, stderr=err)
        while True:
            peak = max(peak, tree_rss_anon(process.pid))
            try:
                process.wait(timeout=0.05)  # returns as soon as it exits: the wall time stays exact
                break
            except subprocess.TimeoutExpired:
                pass
        return process.returncode, time.perf_counter() - start, peak


def throughput(runs: int) -> dict[str, dict[bool, list[float]]]:
    """Per variant, training images/s over `runs` 1-epoch runs with data_on_device True and False."""
    from imgpipe import params as P
    from imgpipe import settings
    from imgpipe.config import TrainConfig
    from imgpipe.data.imageset import ImageSet
    from imgpipe.data.prepare import prepare
    from imgpipe.data.prepared import load_prepared, save_prepared
    from imgpipe.training.loop import train

    if "data_on_device" not in {field.name for field in dataclasses.fields(TrainConfig)}:
        raise LookupError("imgpipe.config.TrainConfig has no data_on_device field: streamed training is not in this code yet")
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, (60_000, 1, 28, 28), dtype=np.uint8)
    raw = {"train": ImageSet(images, rng.permutation(np.arange(60_000) % 10), tuple(str(d) for d in range(10)))}
    params, rates, before = P.load(REPO / "params.yaml"), {}, cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="memory_mnist_") as tmp:
        save_prepared(prepare(raw, 0.15, 0.2, SEED), Path(tmp) / "prepared")
        data = load_prepared(Path(tmp) / "prepared")  # memory-mapped; the resident runs copy it to the device
        for name in VARIANTS:
            variant, rates[name] = settings.variant(params, name, SEED), {True: [], False: []}
            print(f"{name}: {variant.model} {variant.settings}, batch_size {variant.config.batch_size}, "
                  f"stream_workers {getattr(variant.config, 'stream_workers', 'n/a')} (params.yaml)", flush=True)
            for _ in range(runs):
                for on_device in (True, False):  # alternated: a drift in the machine's speed hits both alike
                    config = dataclasses.replace(variant.config, epochs=1, data_on_device=on_device)
                    rates[name][on_device].append(train(variant.model, variant.settings, data, config).images_per_second)
    print(others_since(before))
    return rates


def header(folder: Path, count: int) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    memory = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
    versions = ", ".join(f"{package} {version(package)}" for package in ("torch", "numpy"))
    on_disk = sum(path.stat().st_size for path in folder.rglob("*.jpg"))
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, {memory / 2**20:.1f} GiB RAM; Python {platform.python_version()}, "
            f"{versions}; {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}\n"
            f"{folder}: {count:,} JPEGs in {CLASSES} classes, {on_disk / 1e9:.2f} GB on disk, "
            f"{count * IMAGE_BYTES / 1e9:.2f} GB decoded at 3x{SIZE}x{SIZE} uint8")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def run_pipeline(folder: Path, count: int, keep: bool) -> bool:
    """Run the stages on the folder in a copy of the project and print their table: whether every stage passed."""
    tmp = Path(tempfile.mkdtemp(prefix="memory_"))
    project, logs = tmp / "project", tmp / "logs"
    # As tests/project.py: the user's MLflow and DVC settings stay out and stages run this interpreter. They
    # import the copy's src, not the live tree's: an edit there meanwhile cannot change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env |= {"PATH": os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]), "PYTHONPATH": str(project / "src"),
            "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}
    for new in (project, logs):
        new.mkdir()
    copy_project(project, folder, env)
    commands, measured, failed, before = stage_commands(project), {}, set(), cpu_seconds()
    for name, argv, needs in commands:
        if failed.intersection(needs):
            failed.add(name)
            continue
        status, seconds, peak = measured[name] = run_measured(argv, project, env, logs, name)
        print(f"{name}: exit {status}, {seconds:.1f} s, peak RssAnon {peak / 2**20:,.0f} MiB", flush=True)
        if status != 0:
            failed.add(name)
            print("  " + "\n  ".join((logs / f"{name}.err").read_text().splitlines()[-15:]), flush=True)

    card = project / "metrics" / "data_card.json"
    splits = json.loads(card.read_text())["splits"] if card.exists() else {}
    handled = {"fetch": count, "prepare": count, "train": splits.get("train", {}).get("images"),
               "evaluate": splits.get("test", {}).get("images", 0) * len(VARIANTS)}  # each variant scores the test split
    print(f"\nstage             peak RssAnon (MiB)   wall (s)   images   images/s   decoded (GB)   limit {LIMIT_MIB} MiB")
    for name, _, _ in commands:
        images = handled[name.split("@")[0]]
        if name not in measured:
            print(f"{name:<18}{'not run':>18}{'':>44}   FAIL (a stage it needs failed)")
            continue
        status, seconds, peak = measured[name]
        rate = f"{images / seconds:10,.0f}" if images else f"{'?':>10}"
        decoded = f"{images * IMAGE_BYTES / 1e9:14.2f}" if images else f"{'?':>14}"
        verdict = f"FAIL (exit {status})" if status else "PASS" if peak <= LIMIT_MIB * 2**20 else "FAIL (over the limit)"
        print(f"{name:<18}{peak / 2**20:18,.0f}{seconds:11.1f}{images or 0:9,}{rate}{decoded}   {verdict}")
    print(others_since(before))
    if keep:
        print(f"project copy kept: {project} (stage logs in {logs})")
    else:
        shutil.rmtree(tmp)
    return not failed and all(peak <= LIMIT_MIB * 2**20 for _, _, peak in measured.values())


def compare_throughput(runs: int) -> bool | None:
    """Print resident and streamed images/s: whether streamed is within SLOWDOWN for every variant (None: not measured)."""
    print(f"\ntraining throughput, 1 epoch on 60,000 random 1x28x28 images, images/s, median [min-max] of {runs} runs")
    try:
        rates = throughput(runs)
    except LookupError as error:
        print(f"not measured: {error}")
        return None
    ratios = {name: statistics.median(by_mode[False]) / statistics.median(by_mode[True]) for name, by_mode in rates.items()}
    for name, by_mode in rates.items():
        print(f"{name:<8} resident {spread(by_mode[True])}   streamed {spread(by_mode[False])}   streamed/resident {ratios[name]:.2f}")
    return all(ratio >= 1 - SLOWDOWN for ratio in ratios.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0, help="decoded size of the image folder, GB (1e9 bytes)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/imgpipe-memory"))
    parser.add_argument("--keep", action="store_true", help="keep the project copy (its path is printed)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each throughput measurement")
    args = parser.parse_args()

    folder, count = args.folder.resolve(), math.ceil(args.gb * 1e9 / IMAGE_BYTES)
    made = make_folder(folder, count)
    print(f"made {folder} in {made:.0f} s" if made is not None else f"reusing {folder}", flush=True)
    print(header(folder, count), flush=True)
    stages_hold = run_pipeline(folder, count, args.keep)
    streamed_holds = compare_throughput(args.runs)

    enough = count * IMAGE_BYTES >= 4e9
    print(f"\ndone when: every stage's peak RssAnon < {LIMIT_MIB} MiB (1.5 GiB) on >= 4 GB decoded: "
          + ("does not hold" if not stages_hold else "holds" if enough else "holds, but on less than 4 GB"))
    print(f"done when: streamed within {SLOWDOWN:.0%} of resident images/s: "
          + {None: "not measured", True: "holds", False: "does not hold"}[streamed_holds])
    sys.exit(0 if stages_hold and streamed_holds else 1)


if __name__ == "__main__":
    main()
