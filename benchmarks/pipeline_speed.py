"""Where the time of `dvc repro -f` goes on the default dataset: each stage's start-up, work and tracking.

    python benchmarks/pipeline_speed.py [--runs 3] [--epochs N]    (with .venv/bin first on PATH)

Copies the project's code and configuration (none of its outputs) into a temporary folder as a
fresh git repository, runs `dvc repro -f` there --runs times (--epochs overrides train.epochs, for
quick checks) and prints, per stage and for the whole command, the median over the runs and the
spread [min-max] of:

  wall      the stage's process, from the `python` command DVC starts to its exit
  start-up  interpreter start and imports, until the stage's main() starts
  mlflow import  the part of start-up spent importing imgpipe.tracking.store (MLflow, and what it loads
            that the stage had not loaded yet)
  work      main() less tracking: the stage's own work
  tracking  MLflow in main() (only the publish stage talks to it): runs.find_runs, log_training,
            publish_evaluation and store.runs_page
  exit      after main() returns: atexit handlers, interpreter shutdown, the process's end

then `dvc repro -f`'s wall time, DVC's own overhead (that wall time less the stages' processes:
DVC's start-up, hashing, caching and lock files between stages) and the overhead ratio (wall time /
the stages' work). Each run's line says how many CPU-seconds it used and how many other processes
used meanwhile (a busy machine shows there); the header names the machine, the versions and the
load average.

How it measures without touching the project: a `python` shim first on PATH (a bash script)
notes the time, runs the real interpreter with a generated sitecustomize.py on PYTHONPATH, and
notes the time again when it exits. The sitecustomize wraps imgpipe.errors.run_stage (which every
stage's main() goes through) and the tracking functions as their modules finish importing; it
imports nothing of the project itself, so every import cost stays where the stage pays it. The shim
costs a bash start (a few ms) per stage; the first run also creates the MLflow store (mlflow.db).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KEEP = ["dvc.yaml", "params.yaml", "excluded.txt", "stages", "src", ".dvc", ".dvcignore", ".gitignore"]  # as tests/project.py (config.local left behind)
COLUMNS = ["wall", "start-up", "mlflow import", "work", "tracking", "exit"]

SHIM = """#!/bin/bash
# Times one process from outside; the sitecustomize in {hooks} times its inside.
start=${{EPOCHREALTIME/,/.}}
PIPELINE_SPEED_ID="$$-$start" PYTHONPATH="{hooks}${{PYTHONPATH:+:$PYTHONPATH}}" "{python}" "$@"
status=$?
end=${{EPOCHREALTIME/,/.}}
[ -n "$PIPELINE_SPEED_LOG" ] && echo "{{\\"id\\": \\"$$-$start\\", \\"start\\": $start, \\"end\\": $end}}" >> "$PIPELINE_SPEED_LOG"
exit $status
"""

SITECUSTOMIZE = '''"""Written by benchmarks/pipeline_speed.py: times a stage's main() and its MLflow calls."""
import os
import sys
import time

_ID, _LOG = os.environ.pop("PIPELINE_SPEED_ID", None), os.environ.pop("PIPELINE_SPEED_LOG", None)  # not for children


def _timed(function, record, key):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            record[key] += time.perf_counter() - start
    return wrapper


def _patch_errors(module):
    original = module.run_stage

    def run_stage(main):
        def timed_main():
            _RECORD["main_start"] = time.time()
            try:
                main()
            finally:
                _RECORD["main_end"] = time.time()
                import json
                with open(_LOG, "a") as log:
                    log.write(json.dumps(_RECORD) + "\\n")
        original(timed_main)
    module.run_stage = run_stage  # bound by `from imgpipe.errors import run_stage` in the stage, after this


def _patch_tracking(names):
    def patch(module):
        for name in names:
            setattr(module, name, _timed(getattr(module, name), _RECORD, "tracking"))
    return patch


_PATCHES = {"imgpipe.errors": _patch_errors, "imgpipe.tracking.store": _patch_tracking(["runs_page"]),
            "imgpipe.tracking.runs": _patch_tracking(["find_runs", "log_training", "publish_evaluation"])}


class _AfterImport:
    """Lets the other finders find a module to patch, and patches it once it has run."""

    def find_spec(self, name, path=None, target=None):
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def timed_exec(module):
            start = time.perf_counter()
            exec_module(module)
            if name == "imgpipe.tracking.store":
                _RECORD["mlflow import"] = time.perf_counter() - start
            _PATCHES[name](module)
        spec.loader.exec_module = timed_exec
        return spec


if _ID and _LOG:
    _RECORD = {"id": _ID, "stage": os.environ.get("DVC_STAGE") or " ".join(sys.argv), "mlflow import": 0.0, "tracking": 0.0}
    sys.meta_path.insert(0, _AfterImport())
'''


def copy_project(target: Path, epochs: int | None, env: dict) -> None:
    """The project's code and configuration, none of its outputs, as a fresh git repository."""
    for name in KEEP:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("config.local", "cache", "tmp", "__pycache__"))
        elif source.exists():
            shutil.copy2(source, target / name)
    if epochs is not None:
        params = yaml.safe_load((target / "params.yaml").read_text())
        params["train"]["epochs"] = epochs
        (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        subprocess.run(["git", *args], cwd=target, env=env, check=True)


def cpu_seconds() -> dict[str, float]:
    """CPU-seconds so far: the machine busy, stolen by the hypervisor, waiting for I/O; ours (reaped children)."""
    user, nice, system, _, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    tick, children = os.sysconf("SC_CLK_TCK"), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick, "iowait": iowait / tick,
            "ours": children.ru_utime + children.ru_stime}


def one_run(project: Path, env: dict, log: Path) -> tuple[float, dict[str, dict[str, float]], str]:
    """`dvc repro -f`'s wall time, each stage's figures (COLUMNS) in seconds, and where the CPU went meanwhile."""
    before, start = cpu_seconds(), time.perf_counter()
    done = subprocess.run(["dvc", "repro", "-f"], cwd=project, env=env | {"PIPELINE_SPEED_LOG": str(log)},
                          capture_output=True, text=True)
    total = time.perf_counter() - start
    cpu = {key: value - before[key] for key, value in cpu_seconds().items()}
    machine = (f"CPU-seconds: {cpu['ours']:.1f} by it, {cpu['busy'] - cpu['ours']:.1f} by other processes, "
               f"{cpu['steal']:.1f} stolen by the hypervisor; {cpu['iowait']:.1f} idle waiting for I/O")
    if done.returncode != 0:
        sys.exit(f"dvc repro -f failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    shim = {r["id"]: r for r in records if "start" in r}
    stages = {}
    for r in records:
        if "main_start" not in r:
            continue
        process = shim[r["id"]]
        main = r["main_end"] - r["main_start"]
        stages[r["stage"]] = {"wall": process["end"] - process["start"], "start-up": r["main_start"] - process["start"],
                              "mlflow import": r["mlflow import"], "work": main - r["tracking"], "tracking": r["tracking"],
                              "exit": process["end"] - r["main_end"]}
    return total, stages, machine


def stage_order(name: str) -> int:
    kinds = ["fetch", "prepare", "train", "evaluate", "report", "publish"]
    kind = name.split("@")[0]
    return kinds.index(kind) if kind in kinds else len(kinds)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]"


def header(runs: int, epochs: int | None, load: str, devices: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    cores = f"{len(os.sched_getaffinity(0))} cores" if hasattr(os, "sched_getaffinity") else f"{os.cpu_count()} cores"
    versions = ", ".join(f"{package} {version(package)}" for package in ("torch", "dvc", "mlflow"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return (f"dvc repro -f, dataset {params['data']['dataset']}, train.epochs {epochs or params['train']['epochs']}, "
            f"{len(params['train']['variants'])} variants x {len(params['train']['seeds'])} seed(s)\n"
            f"{cpu}, {cores}; training on {devices}; Python {platform.python_version()}, {versions}\n"
            f"{runs} run(s) in one fresh copy, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
            f"load average (1, 5, 15 min) {load}\n"
            f"seconds, median [min-max] over the runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: params.yaml's)")
    args = parser.parse_args()

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) + " before"
    with tempfile.TemporaryDirectory(prefix="pipeline_speed_") as tmp:
        tmp = Path(tmp)
        hooks, bin_dir, project = tmp / "hooks", tmp / "bin", tmp / "project"
        for folder in (hooks, bin_dir, project):
            folder.mkdir()
        (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
        shim = bin_dir / "python"
        shim.write_text(SHIM.format(hooks=hooks, python=sys.executable))
        shim.chmod(0o755)
        # As tests/project.py: the user's MLflow and DVC settings stay out; stages run this interpreter.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        env |= {"PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]]),
                "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
                "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}
        copy_project(project, args.epochs, env)

        totals, stages = [], {}
        for run in range(1, args.runs + 1):
            total, measured, machine = one_run(project, env, tmp / f"run{run}.jsonl")
            totals.append(total)
            for name, figures in measured.items():
                stages.setdefault(name, []).append(figures)
            print(f"run {run}: dvc repro -f {total:.2f} s, {len(measured)} stages"
                  + (" (creates the MLflow store)" if run == 1 else "") + f"; {machine}", flush=True)
        trained = (project / "metrics" / "train").rglob("*.json")
        devices = ", ".join(sorted({json.loads(path.read_text())["device"] for path in trained}))

    load += ", " + " ".join(Path("/proc/loadavg").read_text().split()[:3]) + " after"
    names = sorted(stages, key=stage_order)  # stable: within a kind, the order DVC ran them
    if any(len(stages[name]) != args.runs for name in names):
        sys.exit("a stage was not measured in every run: " + ", ".join(f"{n} {len(stages[n])}x" for n in names))
    width = max(len(name) for name in names + ["stages, summed"]) + 2
    print()
    print(header(args.runs, args.epochs, load, devices))
    print()
    print(f"{'stage':<{width}}" + "".join(f"{column:>22}" for column in COLUMNS))
    for name in names:
        print(f"{name:<{width}}" + "".join(f"{spread([f[c] for f in stages[name]]):>22}" for c in COLUMNS))
    summed = [{c: sum(stages[name][run][c] for name in names) for c in COLUMNS} for run in range(args.runs)]
    print(f"{'stages, summed':<{width}}" + "".join(f"{spread([s[c] for s in summed]):>22}" for c in COLUMNS))
    print()
    print(f"dvc repro -f                {spread(totals)}")
    print(f"DVC's own overhead          {spread([t - s['wall'] for t, s in zip(totals, summed)])}"
          "   (wall time less the stages' processes)")
    print(f"overhead ratio              {spread([t / s['work'] for t, s in zip(totals, summed)])}"
          "   (wall time / the stages' work)")
    print(f"fixed costs                 {spread([t - s['work'] for t, s in zip(totals, summed)])}"
          "   (wall time less the stages' work: start-ups, tracking, exits, DVC)")
    print("start-up counts from the shim's start (a bash start, a few ms, included); mlflow import is part of start-up.")


if __name__ == "__main__":
    main()
