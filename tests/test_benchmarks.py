"""The benchmarks' dry runs: each runs end to end on a few images, so a change in the library that breaks
one is found here, not the day someone measures."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "datasets" / "fashion-mnist"


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} not found: the real Fashion-MNIST is not beside the project")
def test_the_fashion_mnist_benchmark_runs_all_three_parts():
    done = subprocess.run([sys.executable, "benchmarks/fashion_mnist.py", "--limit", "256"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "256 train / 256 test images" in lines[1]
    for start in ("(a) best test accuracy", "(b) recipe: batch 128, sgd nesterov lr 0.1, onecycle, 1 epochs", "time to ",
                  "(c) recommended: cnn {'channels': [32, 64]"):
        assert any(line.startswith(start) for line in lines), f"no line starting {start!r} in:\n{done.stdout}"
