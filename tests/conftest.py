import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from project import copy_project, run

from imgpipe.config import DataConfig
from imgpipe.prepare import prepare
from imgpipe.sources import digits


@pytest.fixture(scope="session")
def digits_prepared():
    """The real default dataset, prepared as the pipeline prepares it."""
    return prepare(digits(DataConfig()).splits, val_fraction=0.15, test_fraction=0.2, seed=0)


def random_images(n: int, shape: tuple[int, int, int], classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = np.arange(n) % classes
    return images, labels.astype(np.int64)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> str:
    """One embedded MLflow store (its URI) for the tests that log to MLflow in-process: each uses an
    experiment of its own (the `experiment` fixture)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def experiment(request) -> str:
    return request.node.name  # a name of its own in the shared store


# The end-to-end tests share one run of the real pipeline, shrunk: two variants (the centroid, fitted in one
# pass, and the CNN, trained by gradient descent), two epochs, the bundled digits.
PIPELINE_VARIANTS = ["centroid", "cnn"]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A copy of the project after `dvc repro` (outputs, dvc.lock, MLflow store): read it, or fork it
    (project.fork) to change it."""
    root = copy_project(tmp_path_factory.mktemp("pipeline"), train__epochs=2, train__variants=PIPELINE_VARIANTS)
    run(["dvc", "repro"], root)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_SERVER = {}  # the tracking server's process, address and folder, once started


def pytest_collection_modifyitems(config, items):
    """Start the tracking server as soon as a collected test needs it: it takes seconds to come up,
    which then pass while other tests run."""
    if any("tracking_server" in item.fixturenames for item in items):
        folder = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
        port = _free_port()
        _SERVER.update(folder=folder, url=f"http://127.0.0.1:{port}", process=subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # No job runner: MLflow 3's server otherwise starts about seven huey worker processes (for GenAI
            # jobs), each importing MLflow, some 20 CPU-seconds that runs and artifacts do not need.
            env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ))


def pytest_sessionfinish(session, exitstatus):
    """Stop the server whatever ran: a test run that deselected (-k) the tests needing it never asked for it."""
    if "process" in _SERVER and _SERVER["process"].poll() is None:
        _SERVER["process"].terminate()
        _SERVER["process"].wait(timeout=30)
    if "folder" in _SERVER:
        shutil.rmtree(_SERVER["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def tracking_server():
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and proxied artifact store, one for
    the whole test run."""
    process, url = _SERVER["process"], _SERVER["url"]
    try:
        for _ in range(120):  # up to a minute for it to start answering
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail("mlflow server exited while starting")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer within a minute")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
