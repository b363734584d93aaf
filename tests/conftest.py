import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import warm_python
from filelock import FileLock
from project import copy_project, fork, run
from s3 import NO_WEED, S3Server, weed
from servers import TrackingServer

from imgpipe.config import DataConfig
from imgpipe.data.prepare import prepare
from imgpipe.data.sources import digits


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
def pipeline(tmp_path_factory, worker_id):
    """A copy of the project after `dvc repro` (outputs, dvc.lock, MLflow store): read it, or fork it
    (project.fork) to change it. Built once per test run, whatever the number of pytest-xdist processes (the
    first to need it builds it, the others wait): each process gets a fork of its own."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    built, done = shared / "pipeline-built", shared / "pipeline-built.done"
    with FileLock(shared / "pipeline-built.lock"):
        if not done.exists():
            shutil.rmtree(built, ignore_errors=True)  # an earlier process failed building it: try again
            copy_project(built, train__epochs=2, train__variants=PIPELINE_VARIANTS, label_issues__folds=2)
            run(["dvc", "repro"], built)
            done.touch()
    return fork(built, tmp_path_factory.mktemp("pipeline") / "project")


# The servers start on a test's first need, in the process that runs it (with pytest-xdist, each process has its own).
# Started at collection instead, in every process, each stack (PostgreSQL, `mlflow server`, SeaweedFS) cost some 15
# CPU-seconds in the process whose modules never used it.
_SERVER: list[TrackingServer] = []  # the tracking server, once started
_S3: list[S3Server | str] = []  # the S3 server once started, or why it could not start


def _s3() -> S3Server | str:
    """This process's S3 server, started (not yet answering) on first need; or why it cannot start."""
    if not _S3:
        _S3.append(S3Server(Path(tempfile.mkdtemp(prefix="s3-server-"))) if weed() else NO_WEED)
    return _S3[0]


# The modules that take longest (wall seconds in `make test` on 2 cores), in the order pytest-xdist hands them out
# (`--no-loadscope-reorder`: collection order): the longest first, so that the last minute is short modules on both
# processes. With loadscope's own order (most tests first) the elastic benchmark (one test of 70 s) came last, and one
# process sat idle for 44 s of a 357-s run. test_elastic goes to one process (its one test that needs the pipeline
# comes last, when it is built) while test_pipeline builds the pipeline in the other.
LONGEST_FIRST = ("test_elastic", "test_pipeline", "test_tracking_server", "test_team_storage", "test_queue", "test_sweep",
                 "test_experiments", "test_label_issues", "test_gpu_check", "test_train", "test_logged_model", "test_failed_stage",
                 "test_benchmarks", "test_distributed", "test_zoo")


def _module_rank(item) -> int:
    name = item.path.stem
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """Order the modules longest first (LONGEST_FIRST; the others keep their order, after them)."""
    items.sort(key=_module_rank)  # stable: a module's tests keep their order


def pytest_sessionstart(session):
    """Start the warm interpreter for stages now, before xdist starts its workers (they share it): it imports while
    tests collect."""
    warm_python.start()


def pytest_sessionfinish(session, exitstatus):
    """Stop the servers this process started, whatever became of its tests."""
    warm_python.stop()
    for server in _SERVER:
        server.stop()
    for server in _S3:
        if isinstance(server, S3Server):
            server.stop()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A pytest-xdist worker ends here, its last report sent (its "workerfinished" goes out as its session finishes, and
    the controller expects nothing more): without the interpreter's own teardown of torch, torchvision, MLflow and the
    rest, which the controller sat waiting for at the end of every run (3.7 s on 2 cores)."""
    if hasattr(config, "workerinput"):  # a worker itself, not a pytest a test started (it inherits PYTEST_XDIST_WORKER)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@pytest.fixture(scope="session")
def tracking_server() -> TrackingServer:
    """A real `mlflow server` on 127.0.0.1, on PostgreSQL where it is installed (else SQLite), with proxied
    artifacts on the S3 server where SeaweedFS is installed (else in a folder): one for the whole test run."""
    started = _s3()
    s3 = started if isinstance(started, S3Server) else None  # the team's setup: only the tracking server reaches the bucket
    _SERVER.append(TrackingServer(Path(tempfile.mkdtemp(prefix="mlflow-server-")), artifacts=s3 and f"s3://{s3.bucket}/mlflow",
                                  env=s3 and s3.env))
    try:
        if s3:
            s3.wait()  # the bucket its artifacts go to; both servers start meanwhile
        _SERVER[0].wait()
    except RuntimeError as error:
        pytest.fail(str(error))
    return _SERVER[0]


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """A real S3 server (SeaweedFS) on 127.0.0.1 with its own credentials and bucket: one for the whole test run."""
    server = _s3()
    if isinstance(server, str):
        pytest.skip(server)
    try:
        return server.wait()
    except RuntimeError as error:
        pytest.fail(str(error))
