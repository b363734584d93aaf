"""Training that survives faults (#33), on 2 gloo processes of the real train stage under real torchrun agents:
benchmarks/elastic_restart.py kills a rank mid-run, spends a restart budget, and loses one of two "machines"
(--nnodes 2 on 127.0.0.1) and brings it back; this checks what it prints against the uninterrupted run."""

import re
import sys
from pathlib import Path

from project import edit_params, fork, run, stage_env

from imgpipe.training.distributed import launch, torchrun_command

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"\| (?P<run>[a-z ]+) \| (?P<exit>-?\d+) \| [0-9.]+ \| (?P<restarts>.+?) \| (?P<resumed>[0-9.]+ s|-) \| "
                 r"(?P<digest>[0-9a-f]{16}|-) \| (?P<same>yes|no|-) \|")


def test_torchrun_is_given_the_restart_budget():
    command = torchrun_command(2, ["stages/train.py", "cnn", "0"], max_restarts=3)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[command.index("--max-restarts") + 1] == "3" and command[-3:] == ["stages/train.py", "cnn", "0"]


def test_torchrun_leaves_no_folder_behind(tmp_path, monkeypatch):
    """Its agent keeps the ranks' error files in a new temporary folder unless told where: one more in /tmp at every
    distributed training. The stage's launch gives it one that goes when torchrun ends."""
    import tempfile

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))  # the agent's own default, and this process's
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    script = tmp_path / "rank.py"
    script.write_text("import os\nprint('rank', os.environ['RANK'])\n")
    assert launch(1, [str(script)], max_restarts=0) == 0
    assert list(temporary.iterdir()) == []


def test_a_killed_rank_restarts_a_spent_budget_fails_in_one_line_and_a_lost_machine_rejoins(tmp_path):
    import subprocess

    # 3 epochs: the kill lands after the first. Heartbeats every second: the lost machine is noticed in 3 s, not 15.
    # `python` warm (tests/warm_python.py): so are the stage, torchrun's agents and their ranks it starts.
    done = subprocess.run(["python", "benchmarks/elastic_restart.py", "--epochs", "3", "--keep-alive", "1", "--folder", str(tmp_path)],
                          cwd=ROOT, env=stage_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {m["run"]: m for line in done.stdout.splitlines() if (m := ROW.fullmatch(line))}
    assert list(rows) == ["uninterrupted", "rank killed", "budget spent", "machine lost"], done.stdout

    whole = rows["uninterrupted"]
    assert whole["exit"] == "0" and whole["restarts"] == "0 (after epochs -)" and whole["digest"] != "-"

    # A rank killed once its first epoch's state was saved: torchrun restarted both, they resumed after that epoch or
    # a later one, and ended on the uninterrupted run's weights, bit for bit.
    killed = rows["rank killed"]
    resumed = re.fullmatch(r"1 \(after epochs (\d)\)", killed["restarts"])
    assert killed["exit"] == "0" and resumed and 1 <= int(resumed[1]) < 3, done.stdout
    assert killed["resumed"] != "-" and killed["digest"] == whole["digest"] and killed["same"] == "yes"

    # No budget: the stage fails, its last line the one a user reads, and writes no checkpoint.
    spent = rows["budget spent"]
    assert spent["exit"] != "0" and spent["digest"] == "-", done.stdout
    assert re.search(r"budget spent: last line: error: train cnn seed 0: 2 processes under torchrun failed \(exit \d+, after up to "
                     r"0 restart\(s\), train.max_restarts\); the failing rank's error is above", done.stdout), done.stdout

    # Two agents as two machines: the second lost with its rank and started again; the first waited for it, and the
    # pair resumed and ended on the same weights.
    lost = rows["machine lost"]
    assert lost["exit"] == "0" and re.fullmatch(r"1 \(after epochs \d\)", lost["restarts"]), done.stdout
    assert lost["digest"] == whole["digest"] and lost["same"] == "yes"


def test_a_bad_model_setting_fails_once_before_any_rank_starts(pipeline, tmp_path):
    """Not once per rank and restart (each a start of torch): the stage checks the model before it starts torchrun."""
    project = fork(pipeline, tmp_path / "project")
    edit_params(project, train__devices=2, models__cnn={"channels": [16, 32], "kernel_size": 2})
    done = run(["python", "stages/train.py", "cnn", "0"], project, check=False)
    assert done.returncode == 1 and "torch.distributed" not in done.stderr + done.stdout
    assert done.stderr.strip() == "error: params.yaml: models.cnn.kernel_size: must be an odd whole number >= 1, got 2"
    # A batch that leaves a rank fewer than 2 images (batch norm's least), at any of the ranks' batches.
    edit_params(project, train__batch_size=3, models__cnn={"channels": [16, 32]})
    done = run(["python", "stages/train.py", "cnn", "0"], project, check=False)
    assert done.returncode == 1 and "torch.distributed" not in done.stderr + done.stdout
    assert done.stderr.strip() == ("error: params.yaml: train.batch_size: 3 leaves some of the 2 processes fewer than 2 images of "
                                   "each batch (batch norm needs 2); use 4 or more, or fewer train.devices")
    edit_params(project, train__batch_size=32)
    # A zoo model's weights too, read (or downloaded) once here: a missing file is not every rank's error at every restart.
    edit_params(project, train__variants=["centroid", "cnn", "resnet18"], models__cnn={"channels": [16, 32]},
                models__resnet18={"weights": "missing.pth"})
    done = run(["python", "stages/train.py", "resnet18", "0"], project, check=False)
    assert done.returncode == 1 and "torch.distributed" not in done.stderr + done.stdout
    assert done.stderr.strip() == f"error: params.yaml: models.resnet18.weights: {project / 'missing.pth'}: no such file"
