"""The MLflow store the stages record in: the embedded one at the project root (sqlite:///mlflow.db,
artifacts in mlruns/), which `mlflow ui` opens from there, unless MLFLOW_TRACKING_URI names another store or
a server; taking turns at it, and a tracking failure as one line."""

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock

from imgpipe import paths
from imgpipe.errors import ImgpipeError

EMBEDDED_STORE = f"sqlite:///{paths.MLFLOW_DB}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or EMBEDDED_STORE


PASSWORD_IN_URL = re.compile(r"(//[^/:@\s]+):[^/@\s]+@")  # https://user:token@host: MLflow accepts credentials so


def redacted(text: str) -> str:
    """`text` with any URL's password shown as ***: what is printed, logged or committed (reports/mlflow_runs.json)."""
    return PASSWORD_IN_URL.sub(r"\1:***@", text)


def shown_uri() -> str:
    """The tracking URI as messages and files name it: without its password."""
    return redacted(tracking_uri())


def takes_turns() -> bool:
    """Whether the stages take turns at the store (store_lock): the embedded one, however its URI spells its path."""
    uri = tracking_uri()
    return uri == EMBEDDED_STORE or (uri.startswith("sqlite:///") and
                                     Path(uri.removeprefix("sqlite:///")).resolve() == paths.MLFLOW_DB.resolve())


@contextmanager
def store_lock() -> Iterator[None]:
    """Take turns at the embedded store: SQLite has one writer at a time, and MLflow's first-use
    migrations race when parallel stages (dvc queue start -j 2) create the store together."""
    if not takes_turns():
        yield
        return
    paths.MLFLOW_DB.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{paths.MLFLOW_DB}.lock"):
        yield


def store_client():
    """The MLflow client of the store the stages use: MLFLOW_TRACKING_URI, else the project's mlflow.db."""
    # A tracking server that is down should fail a stage in seconds, not after MLflow's default of
    # minutes of retries; the environment can still ask for more.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Logging a model copies its two files with a progress bar each: noise in a stage's log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient()


# Without this tag MLflow's UI opens an experiment on its GenAI traces overview; with it, on the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def artifacts_beside(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: in mlruns/ beside a SQLite store's file (the embedded one's,
    paths.MLFLOW_DB, or another a user or a test names), or the project's for another database named directly
    (postgresql://, mysql://), not in whatever folder the process was started from, which MLflow's default `./mlruns`
    would be (a queued experiment's copy, deleted after it); a server's store decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).absolute().parent / "mlruns").as_uri()  # mlruns: MLflow's own name
    scheme = uri.partition("://")[0].partition("+")[0].lower() if "://" in uri else ""
    if scheme in DATABASES:
        return (paths.PROJECT_ROOT / "mlruns").as_uri()
    return None


DATABASES = ("postgresql", "mysql", "mssql", "sqlite")  # the stores MLflow opens itself, with its default ./mlruns


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifacts_beside(tracking_uri()), tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)  # another publish made it since this one looked
    for key, value in EXPERIMENT_KIND.items():  # an experiment an older imgpipe made
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _store_failures() -> tuple[type[BaseException], ...]:
    """What a store that fails raises through MLflow: its REST and registry errors, the network's and the file
    system's (OSError: requests' errors and a lock's timeout are ones too), the database's, and an S3 artifact
    store's. Not the rest: a bug in imgpipe's own code is no tracking failure to wave through."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    kinds: tuple[type[BaseException], ...] = (MlflowException, OSError, sqlalchemy.exc.SQLAlchemyError)
    try:
        import botocore.exceptions

        kinds += (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
    except ImportError:
        pass
    return kinds


@contextmanager
def reported(optional: bool) -> Iterator[None]:
    """Turn a tracking failure into one line: an error, or with `optional` a warning and no run."""
    try:
        yield
    except ImgpipeError:
        raise
    except _store_failures() as error:
        detail = " ".join(str(error).split())
        if len(detail) > 240:  # MLflow's REST errors name the request first and the cause last: keep both ends
            detail = f"{detail[:140]} ... {detail[-100:]}"
        message = redacted(f"MLflow tracking at {tracking_uri()} failed ({type(error).__name__}: {detail}); the stage's outputs are saved")
        if not optional:
            raise ImgpipeError(f"{message}; fix the store or set tracking.optional: true") from None
        print(f"warning: {message}; going on without tracking (tracking.optional: true)", file=sys.stderr)


def runs_page(experiment: str) -> str:
    """Where the MLflow UI shows the experiment's runs table. MLflow 3's UI opens on its GenAI view
    unless the page's address asks for the model-training one (the choice is then remembered)."""
    experiment_id = store_client().get_experiment_by_name(experiment).experiment_id
    server = shown_uri() if tracking_uri().startswith("http") else "http://127.0.0.1:5000"  # `mlflow ui`'s default
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"
