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
ROWS = ("pytest -m cuda tests/test_train.py", "resident vs streamed batches", "resume after a kill", "deterministic mode",
        "bf16 autocast, channels_last", "batch-norm re-estimation", "under torchrun", "the seed's DataLoader loop",
        "TinyVGG, recipe B", "recipe C", "the exported TinyVGG", "resnet18 at 32x32", "resnet18 at 224x224")
CUDA_ONLY = ("pytest -m cuda", "resume after a kill", "bf16 autocast", "under torchrun")

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
    for name in ROWS:
        assert any(name in check for check in checks), f"no row {name!r} in:\n{done.stdout}"
    assert not [c for c, result in checks.items() if not result.startswith(("ok", "skipped"))], done.stdout
    for name in CUDA_ONLY:  # what proves something only on CUDA says so, not "ok"
        assert next(result for check, result in checks.items() if name in check) == "skipped: no CUDA", done.stdout
    assert "2 marked cuda" in next(row[2] for row in rows if "pytest -m cuda" in row[0])  # the markers select both CUDA tests
    written = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert written["dry_run"] and [row["check"] for row in written["rows"]] == list(checks)
    assert (tmp_path / "out" / "gpu_check.md").read_text().endswith(done.stdout.split("\n\n")[-1])
