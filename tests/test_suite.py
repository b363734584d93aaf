"""The suite's own settings (tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import LONGEST_FIRST


def test_the_longest_first_order_names_modules_that_exist():
    """A module renamed or removed would silently fall back to the end of the order."""
    here = Path(__file__).parent
    assert [name for name in LONGEST_FIRST if not (here / f"{name}.py").is_file()] == []


def test_a_pytest_a_test_starts_still_reports_its_failures(tmp_path):
    """Only an xdist worker itself skips the interpreter's teardown (conftest's pytest_unconfigure, which exits 0): a
    pytest that a test starts (the GPU check's `pytest -m cuda`) inherits PYTEST_XDIST_WORKER, and must fail as a
    pytest does."""
    (tmp_path / "test_fails.py").write_text("def test_fails():\n    assert False\n")
    env = os.environ | {"PYTEST_XDIST_WORKER": "gw9", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
                           "-c", os.devnull, str(tmp_path / "test_fails.py")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "1 failed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
