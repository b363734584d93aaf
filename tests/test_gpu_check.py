"""benchmarks/gpu_check.py's dry run: every check of the GPU run, on the CPU with a few hundred images, as the
lent GPU machine will run it: without mlflow and dvc (an import of either, by the script or by any process
it starts, fails here as it would there)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgpipe.data.sources.idx import write_idx

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
# What the dry run proves on a machine without a GPU, row by row: the engine's checks that hold on any device pass
# ("ok"); those that prove something only on CUDA still run their assertions on the CPU but say "skipped: no CUDA";
# the 224x224 row is left out of the dry run.
OK_ON_CPU = ("resident vs streamed batches", "deterministic mode", "batch-norm re-estimation", "the seed's DataLoader loop",
             "the seed's loop, DataLoader(num_workers=4", "those workers, autocast to bf16",
             "TinyVGG, one-cycle SGD", "TinyVGG 16 with batch norm", "recipe C", "recipe D", "the exported TinyVGG", "resnet18 at 32x32")
CUDA_ONLY = ("pytest -m cuda", "resume after a kill", "bf16 autocast", "under torchrun")
NOT_IN_A_DRY_RUN = ("resnet18 at 224x224",)
EXPECTED = {name: "ok" for name in OK_ON_CPU} | {name: "skipped: no CUDA" for name in CUDA_ONLY} | {
    name: "skipped: dry run" for name in NOT_IN_A_DRY_RUN}

# sitecustomize runs at the start of every Python process that has its folder on PYTHONPATH: the script's,
# and those it starts (pytest, torchrun and its worker).
BLOCKER = '''import sys

class RefuseMlflowAndDvc:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("mlflow", "dvc"):
            raise ModuleNotFoundError(f"{name} imported: the lent GPU machines have neither mlflow nor dvc", name=name)
        return None

sys.meta_path.insert(0, RefuseMlflowAndDvc())
'''


def tiny_fashion(folder: Path) -> Path:
    """IDX files shaped like Fashion-MNIST's (28x28 grey, 10 classes), few and random: where the real ones are absent."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 640), ("t10k", 256)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))
    return folder


@pytest.fixture
def blocked_env(tmp_path) -> dict[str, str]:
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    python_path = os.pathsep.join([str(tmp_path / "blocker"), str(ROOT / "src")])
    return os.environ | {"PYTHONPATH": python_path, "OUT": str(tmp_path / "out"),
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_the_blocker_refuses_mlflow_and_dvc(blocked_env):
    for module in ("mlflow", "dvc.repo", "imgpipe.tracking.store"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], env=blocked_env, capture_output=True, text=True)
        assert done.returncode != 0 and "the lent GPU machines have neither mlflow nor dvc" in done.stderr, module


def test_the_gpu_check_dry_run_passes_every_check_without_mlflow_or_dvc(tmp_path, blocked_env):
    data = FASHION if FASHION.is_dir() else tiny_fashion(tmp_path / "fashion")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--data", str(data)], cwd=ROOT,
                          env=blocked_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    checks = {row[0].removeprefix("| "): row[1] for row in rows}
    figures = {row[0].removeprefix("| "): row[2] for row in rows}
    named = {check: [name for name in EXPECTED if name in check] for check in checks}
    assert [check for check, names in named.items() if len(names) != 1] == [] and len(checks) == len(EXPECTED), named
    assert checks == {check: EXPECTED[names[0]] for check, names in named.items()}, done.stdout

    def figure(name: str) -> str:
        return next(text for check, text in figures.items() if name in check)

    # Every test marked cuda in the files the row runs is collected, and skips cleanly without CUDA.
    suite = next(check for check in checks if "pytest -m cuda" in check)
    marked = sum(Path(ROOT, file).read_text().count("@pytest.mark.cuda") for file in suite.split() if file.endswith(".py"))
    assert marked >= 2 and figure("pytest -m cuda") == f"0 passed, 0 failed, {marked} skipped of {marked} marked cuda"
    # The CUDA-only rows' assertions ran on the CPU: a killed run resumed exactly; torchrun's one process all-reduced.
    assert figure("resume after a kill") == "killed after epoch 1 of 3, resumed: identical weights and history on cpu"
    written = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    ranks = next(row["data"] for row in written["rows"] if "under torchrun" in row["check"])
    assert (ranks["world"], ranks["backend"], ranks["all_reduce"], ranks["ddp_step"]) == (1, "gloo", 1.0, True)
    # The engine's own checks: batch norm re-estimated on ceil(min(4096, 320) / 128) = 3 batches, the exported model agrees.
    assert figure("resident vs streamed").startswith("identical weights;")
    assert figure("deterministic mode").startswith("identical weights and history")
    assert "re-estimated on 3 batches" in figure("batch-norm re-estimation")
    norm = next(row["data"] for row in written["rows"] if "batch-norm" in row["check"])
    assert abs(norm["kept_val_accuracy"] - norm["evaluated_val_accuracy"]) <= 1 / 128  # 128 validation images
    assert "agrees with eager on 100.0%" in figure("the exported TinyVGG")
    assert "; to 0.93: " in figure("recipe D") and "; to 0.945: " in figure("recipe D")  # (d)'s targets, not the others'
    assert written["dry_run"] and [row["check"] for row in written["rows"]] == list(checks)
    assert (tmp_path / "out" / "gpu_check.md").read_text().endswith(done.stdout.split("\n\n")[-1])
