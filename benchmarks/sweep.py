"""Sweeps on the real FashionMNIST: TPE with the median pruner, with successive halving, without pruning, and a
grid, on the same trial budget, the same search space and the same sampler seed, side by side in one run.

    python benchmarks/sweep.py                 (about 14 minutes on a 2-core CPU)
    python benchmarks/sweep.py --train 3000 --trials 6 --epochs 3    (a quicker look)

A fixed subset of ../shared/datasets/fashion-mnist (the first --train training images, split 85/15 into train
and validation as the pipeline does, and the first --test test images) goes into a fresh copy of the project,
where `python -m imgpipe.sweep` runs each sweep as a user would (its own process, `dvc repro prepare`, MLflow
runs, the summary). Printed per sweep: trials, how many were pruned, training epochs spent, the best trial's
validation accuracy and the test accuracy (95% interval) of the winner chosen on validation, and the
overhead per trial beyond its own training (wall time of the whole command minus the trials' training
seconds, over the trials). Then pruning's share of the epochs and what it cost in best validation accuracy.
"""

import argparse
import datetime
import gzip
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from imgpipe.data.sources.idx import read_idx, write_idx

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
PROJECT_FILES = ["dvc.yaml", "params.yaml", "excluded.txt", "stages", "src", ".dvc", ".dvcignore", ".gitignore"]
SPACE = {  # learning rate, weight decay and width of the pipeline's cnn (TinyVGG with batch norm)
    "models.cnn.lr": {"low": 0.0003, "high": 0.03, "log": True},
    "models.cnn.weight_decay": {"low": 0.000001, "high": 0.001, "log": True},
    "models.cnn.channels": {"choices": [[8, 16], [16, 32], [32, 64]]},
}
STARTUP_TRIALS = 4  # never pruned; and no warm-up: any other trial may be pruned from its first epoch on
SWEEPS = {  # name: (sampler, pruner)
    "tpe-median": ("tpe", "median"),
    "tpe-halving": ("tpe", "halving"),
    "tpe": ("tpe", "none"),
    "grid": ("grid", "none"),
}


def subset(folder: Path, train: int, test: int) -> None:
    """The first `train` training and `test` test images of Fashion-MNIST as IDX files in folder."""
    folder.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        for kind in ("images-idx3", "labels-idx1"):
            array = read_idx(FASHION / f"{prefix}-{kind}-ubyte.gz")[:count]
            plain = write_idx(folder / f"{prefix}-{kind}-ubyte", array)
            with open(plain, "rb") as source, gzip.open(f"{plain}.gz", "wb") as target:
                shutil.copyfileobj(source, target)
            plain.unlink()


def project(folder: Path, data: Path, epochs: int, trials: int) -> Path:
    folder.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("cache", "tmp", "__pycache__"))
        elif source.exists():
            shutil.copy2(source, folder / name)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["data"] |= {"dataset": "idx", "path": str(data), "class_names": None}
    params["train"] |= {"variants": ["cnn"], "epochs": epochs}
    params["models"]["cnn"] |= {"batch_norm": True}
    params["sweep"] |= {"variant": "cnn", "trials": trials, "space": SPACE, "startup_trials": STARTUP_TRIALS, "warmup_epochs": 0}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.com",
                        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.com"}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "benchmark"]):
        subprocess.run(command, cwd=folder, check=True, env=env)
    # Fetched and prepared before any sweep's clock, and the MLflow store made: the first sweep timed paid both alone.
    subprocess.run(["dvc", "repro", "prepare"], cwd=folder, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", "from imgpipe.tracking.store import store_client; store_client().search_experiments()"],
                   cwd=folder, check=True, capture_output=True)
    return folder


def sweep(folder: Path, name: str, sampler: str, pruner: str) -> dict:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["sweep"] |= {"sampler": sampler, "pruner": pruner, "study": name}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "imgpipe.sweep"], cwd=folder, capture_output=True, text=True,
                          env=os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name}: python -m imgpipe.sweep failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'sweep.db'}")
    trials = study.trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    test = study.user_attrs["test"]
    return {
        "trials": len(trials), "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "epochs": sum(t.user_attrs.get("epochs", 0) for t in trials),
        "best_val": max(t.user_attrs["val_accuracy"] for t in complete), "chosen": study.best_trial.number,
        "test": test["accuracy"], "low": test["interval"][0], "high": test["interval"][1],
        "train_seconds": sum(t.user_attrs.get("train_seconds", 0) for t in trials), "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=6000, help="training images taken (85%% train, 15%% validation)")
    parser.add_argument("--test", type=int, default=2000, help="test images taken")
    parser.add_argument("--trials", type=int, default=12, help="trials per sweep (the same budget for each)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (the pruner may stop one sooner)")
    args = parser.parse_args()
    if not FASHION.is_dir():
        sys.exit(f"{FASHION}: the real Fashion-MNIST is not beside the project")
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}")
    print(f"Fashion-MNIST: first {args.train} training images (85/15 train/validation), first {args.test} test images; "
          f"{args.trials} trials of up to {args.epochs} epochs per sweep ({STARTUP_TRIALS} never pruned, the others from epoch 1 on); "
          f"sampler seed 0; space: {', '.join(SPACE)}")
    with tempfile.TemporaryDirectory(prefix="imgpipe-sweep-") as temporary:
        subset(Path(temporary) / "data", args.train, args.test)
        folder = project(Path(temporary) / "project", Path(temporary) / "data", args.epochs, args.trials)
        results = {name: sweep(folder, name, *how) for name, how in SWEEPS.items()}
    print(f"{'sweep':<11} {'trials':>6} {'pruned':>6} {'epochs':>6} {'best val':>8} {'test (winner, 95% interval)':>28} "
          f"{'wall s':>7} {'train s':>7} {'overhead s/trial':>16}")
    for name, r in results.items():
        shown = f"{(r['wall'] - r['train_seconds']) / r['trials']:16.2f}"
        print(f"{name:<11} {r['trials']:>6} {r['pruned']:>6} {r['epochs']:>6} {r['best_val']:8.4f} "
              f"{r['test']:10.4f} ({r['low']:.4f}-{r['high']:.4f})  {r['wall']:7.1f} {r['train_seconds']:7.1f} {shown}")
    full = results["tpe"]
    for name in ("tpe-median", "tpe-halving"):
        pruned = results[name]
        print(f"{name}: {pruned['epochs']} of the unpruned {full['epochs']} epochs ({pruned['epochs'] / full['epochs']:.0%}), "
              f"best val accuracy {100 * (pruned['best_val'] - full['best_val']):+.2f} points, "
              f"wall time {pruned['wall'] / full['wall']:.0%}")
    print(f"TPE against the grid: {100 * (full['best_val'] - results['grid']['best_val']):+.2f} points of best val accuracy")

if __name__ == "__main__":
    main()
