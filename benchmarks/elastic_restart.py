"""Training that survives faults: the train stage on 2 gloo processes with a rank killed, its restart budget
spent, and one of two machines lost and brought back; each against an uninterrupted run.

    python benchmarks/elastic_restart.py [--epochs 6] [--keep-alive 5] [--folder DIR]    (with .venv/bin first on PATH)

Copies the project's code and configuration into a temporary folder, fetches and prepares the bundled
digits there (stages/fetch.py, stages/prepare.py), and trains the cnn with train.devices: 2 and
train.deterministic: true, four ways, each from nothing:

  uninterrupted   `python stages/train.py cnn 0`, as dvc repro runs it (it starts torchrun --standalone)
  rank killed     the same, rank 1 killed (SIGKILL) once the first epoch's state is saved: torchrun restarts
                  both ranks (train.max_restarts: 3) and they resume from the last finished epoch
  budget spent    the same with train.max_restarts: 0, rank 1 killed as soon as it starts: the stage fails, in one line
  machine lost    two torchrun agents as two machines would run them (--nnodes 2, one process each, a c10d
                  rendezvous on 127.0.0.1, the first agent hosting it; TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as
                  README's command has it): the second agent and its rank killed once the first epoch's state is
                  saved, then started again; the first agent's rank fails, the agent restarts it and waits for
                  the second to rejoin, and both resume

For each it prints the exit status, the wall seconds, the restarts the run recorded and the epochs they
resumed after (metrics/train/cnn/seed0.json), the seconds from the kill to training again (the restarted
rank 0's "resuming after epoch" line), the weights' sha256 and whether they are the uninterrupted run's.
The last line of a failed stage is printed too: the one line a user reads.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from imgpipe.training.distributed import RESTARTABLE

REPO = Path(__file__).resolve().parents[1]
KEEP = ["dvc.yaml", "params.yaml", "excluded.txt", "stages", "src"]
STAGE = ["stages/train.py", "cnn", "0"]
STATE = Path("models/.resume/cnn/seed0.pt")
REJOINABLE = RESTARTABLE  # without it (torch 2.14) the surviving rank-0 agent never tells a rejoining one where to connect
# Each agent's environment names its machine, and its ranks inherit it: a machine's ranks are found by it, not by their
# parent (under a warm start, tests/warm_python.py, a rank's parent is a fork of the server, not the agent started here).
MACHINE = "ELASTIC_BENCHMARK_MACHINE"


@dataclass
class Outcome:
    name: str
    code: int = 0
    seconds: float = 0.0
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since the start, line) of its output
    killed_at: float | None = None

    def resumed_in(self) -> float | None:
        """Seconds from the kill to the restarted rank 0 saying it resumes (its imports and rendezvous done)."""
        after = [at for at, line in self.lines if "resuming after epoch" in line and self.killed_at is not None and at > self.killed_at]
        return after[0] - self.killed_at if after else None


def copy_project(target: Path, epochs: int) -> None:
    target.mkdir(parents=True)
    for name in KEEP:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["train"] |= {"variants": ["cnn"], "epochs": epochs, "devices": 2, "deterministic": True, "max_restarts": 3}
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_restarts(project: Path, count: int) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["max_restarts"] = count
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def env() -> dict[str, str]:
    """This interpreter first on PATH (the stage's torchrun runs `python`), one thread a rank (2 on 2 cores)."""
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def start(args: list[str], project: Path, outcome: Outcome, started: float, **extra: str) -> subprocess.Popen:
    """`args` in the project, its output read line by line with the time each line came, in its own session."""
    process = subprocess.Popen(args, cwd=project, env=env() | extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)

    def read():
        for line in process.stdout:
            outcome.lines.append((time.monotonic() - started, line.rstrip("\n")))

    threading.Thread(target=read, daemon=True).start()
    return process


def processes_of(project: Path, rank: int | None = None, machine: str | None = None) -> list[int]:
    """The pids of the stage's ranks running in this project (rank: that rank alone; machine: that machine's), found
    in /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
            same = Path(os.readlink(entry / "cwd")) == project
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if (same and "stages/train.py" in command and "RANK" in environ and (rank is None or environ["RANK"] == str(rank))
                and (machine is None or environ.get(MACHINE) == machine)):
            found.append(int(entry.name))
    return found


def wait_for_state(project: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    """Until the first epoch's state is saved: a kill then costs the run a part of an epoch, not its start."""
    deadline = time.monotonic() + seconds
    while not (project / STATE).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the training ended or stalled before its first epoch's state was saved ({process.returncode})")
        time.sleep(0.02)


def clean(project: Path) -> None:
    for name in ("models", "metrics/train", "metrics/curves"):
        shutil.rmtree(project / name, ignore_errors=True)


def finish(outcome: Outcome, processes: list[subprocess.Popen], started: float, seconds: float = 600) -> Outcome:
    deadline = time.monotonic() + seconds
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    outcome.code = max((process.returncode for process in processes), key=abs)
    outcome.seconds = time.monotonic() - started
    time.sleep(0.1)  # the readers' last lines
    return outcome


def wait_for_rank(project: Path, process: subprocess.Popen, rank: int, seconds: float = 300) -> list[int]:
    """The pids of `rank`'s process once torchrun has started it."""
    deadline = time.monotonic() + seconds
    while not (found := processes_of(project, rank)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the training ended or stalled before rank {rank} started ({process.returncode})")
        time.sleep(0.02)
    return found


def stage(project: Path, name: str, kill_rank: int | None = None, after_state: bool = True) -> Outcome:
    """The stage as dvc repro runs it; `kill_rank` killed once the first epoch's state is saved (after_state), or
    as soon as torchrun has started it (a run that cannot resume: nothing is gained by waiting)."""
    clean(project)
    outcome, started = Outcome(name), time.monotonic()
    process = start([sys.executable, *STAGE], project, outcome, started)
    if kill_rank is not None:
        if after_state:
            wait_for_state(project, process)
            victims = processes_of(project, kill_rank)
        else:
            victims = wait_for_rank(project, process, kill_rank)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        outcome.killed_at = time.monotonic() - started
    return finish(outcome, [process], started)


def machine_lost(project: Path, port: int, keep_alive: int | None) -> Outcome:
    """Two agents; the second (not hosting the rendezvous) killed with its rank, then started again. The first agent
    lets the new one join once the lost one has missed its keep-alive heartbeats (3, every keep_alive seconds: 5 unless given)."""
    clean(project)
    outcome, started = Outcome("machine lost"), time.monotonic()
    heartbeat = ["--rdzv-conf", f"keep_alive_interval={keep_alive}"] if keep_alive else []
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "elastic-benchmark", "--max-restarts", "3", *heartbeat,
             "--log-dir", str(project.parent / "torchrun"), *STAGE]  # the agents' folders: in ours, not a new one in /tmp each
    first = start(agent, project, outcome, started, **REJOINABLE, **{MACHINE: "first"})
    time.sleep(1)  # the first hosts the rendezvous store
    second = start(agent, project, outcome, started, **REJOINABLE, **{MACHINE: "second"})
    wait_for_state(project, first)
    victims = [second.pid, *processes_of(project, machine="second")]
    for pid in victims:  # the machine is gone: its agent and its rank at once
        os.kill(pid, signal.SIGKILL)
    outcome.killed_at = time.monotonic() - started
    second.wait()
    again = start(agent, project, outcome, started, **REJOINABLE, **{MACHINE: "second"})
    return finish(outcome, [first, again], started)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights_digest(project: Path) -> str:
    path = project / "models/cnn/seed0.pt"
    if not path.exists():
        return "-"
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].numpy().tobytes())
    return digest.hexdigest()


def recorded(project: Path) -> str:
    path = project / "metrics/train/cnn/seed0.json"
    if not path.exists():
        return "-"
    metrics = json.loads(path.read_text())
    return f"{metrics['restarts']} (after epochs {', '.join(map(str, metrics['resumed_after_epochs'])) or '-'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="the cnn's epochs (the kill lands in the second)")
    parser.add_argument("--keep-alive", type=int, help="seconds between the agents' rendezvous heartbeats (torchrun's default: 5); "
                        "a lost machine is noticed after 3 missed ones")
    parser.add_argument("--folder", type=Path, help="where to put the project copy (default: a temporary folder, removed)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="elastic-"))
    project = (folder / "project").resolve()
    copy_project(project, args.epochs)
    for script in ("stages/fetch.py", "stages/prepare.py"):
        subprocess.run([sys.executable, script], cwd=project, env=env(), check=True, capture_output=True)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}; "
          f"the cnn on the digits, {args.epochs} epochs, 2 gloo processes, deterministic; {time.strftime('%Y-%m-%d %H:%M %Z')}")

    rows = []
    for name, run in (("uninterrupted", lambda: stage(project, "uninterrupted")),
                      ("rank killed", lambda: stage(project, "rank killed", kill_rank=1)),
                      ("budget spent", None),
                      ("machine lost", lambda: machine_lost(project, free_port(), args.keep_alive))):
        if run is None:
            set_restarts(project, 0)
            outcome = stage(project, name, kill_rank=1, after_state=False)
            set_restarts(project, 3)
        else:
            outcome = run()
        rows.append((outcome, recorded(project), weights_digest(project)))
        if outcome.code:
            print(f"{name}: last line: {outcome.lines[-1][1] if outcome.lines else '(none)'}")

    reference = rows[0][2]
    print("\n| run | exit | seconds | restarts recorded | kill to training again | weights (sha256) | as uninterrupted |")
    print("|---|---:|---:|---|---:|---|---|")
    for outcome, restarts, digest in rows:
        resumed = outcome.resumed_in()
        print(f"| {outcome.name} | {outcome.code} | {outcome.seconds:.1f} | {restarts} | "
              f"{f'{resumed:.1f} s' if resumed is not None else '-'} | {digest[:16]} | "
              f"{'yes' if digest == reference else 'no' if digest != '-' else '-'} |")
    if args.folder is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
