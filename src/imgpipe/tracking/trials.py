"""MLflow runs of a sweep: one parent run per Optuna study, one child run per trial, open while the trial trains
so its curves and MLflow's own system metrics (CPU, memory; GPU where there is one) arrive as it runs. A trial's
run ends FINISHED, KILLED when it was pruned, or FAILED, and says which in the tag `imgpipe.trial_state`."""

import contextlib
import time

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
from mlflow.system_metrics import set_system_metrics_sampling_interval

from imgpipe.tracking.runs import CURVE, log_params
from imgpipe.tracking.store import experiment_id, store_client, store_lock

SWEEP = "imgpipe.sweep"  # tag: the study a run belongs to
STATE = "imgpipe.trial_state"  # tag: COMPLETE, PRUNED or FAIL, as Optuna calls them
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # MLflow's word for each
SAMPLING_SECONDS = 1  # system metrics: MLflow samples every 10 s by default, longer than many trials


@store_lock()
def parent_run(experiment: str, study: str, tags: dict[str, str]) -> str:
    """A new parent run for a study (its trials are its children); returns its id."""
    client = store_client()
    run = client.create_run(experiment_id(client, experiment), run_name=f"sweep {study}", tags=tags | {SWEEP: study})
    return run.info.run_id


@store_lock()
def finish_parent(run_id: str, metrics: dict[str, float], tags: dict[str, str], summary: str) -> None:
    """The study's outcome on its parent run: figures, tags and the summary (sweep.md)."""
    client = store_client()
    # Each summary a step past the last: MLflow shows a metric's value at its highest step (then the latest time,
    # then the largest value), so at one step a summary's test figure would stay the largest any winner ever had.
    step = 1 + max((m.step for key in metrics for m in client.get_metric_history(run_id, key)), default=-1)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()],
                     tags=[RunTag(key, value) for key, value in tags.items()])
    client.log_text(run_id, summary, "sweep.md")
    client.set_terminated(run_id, "FINISHED")


@store_lock()
def close_abandoned(run_ids: list[str]) -> int:
    """Trial runs a dead worker left RUNNING (its trial failed by the study once its heartbeat stopped), ended FAILED;
    returns how many were."""
    client = store_client()
    closed = 0
    for run_id in run_ids:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, STATE, "FAIL")
            client.set_terminated(run_id, STATUS["FAIL"])
            closed += 1
    return closed


class TrialRun:
    """A trial's run, a child of the study's parent run: `with TrialRun(...) as run: run.epoch(row) ... run.end(state)`."""

    def __init__(self, experiment: str, parent: str, name: str, params: dict, tags: dict[str, str]):
        self.experiment, self.parent, self.name, self.params, self.tags = experiment, parent, name, params, tags
        self.run_id = None

    @store_lock()
    def __enter__(self) -> "TrialRun":
        client = store_client()
        if MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() is None:
            set_system_metrics_sampling_interval(SAMPLING_SECONDS)
        run = mlflow.start_run(experiment_id=experiment_id(client, self.experiment), run_name=self.name,
                               parent_run_id=self.parent, tags=self.tags, log_system_metrics=True)
        self.run_id = run.info.run_id
        try:
            log_params(client, self.run_id, self.params)
        except BaseException:  # __exit__ never runs for a failed __enter__: the run must not stay RUNNING, nor active
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")
            raise
        return self

    @store_lock()
    def epoch(self, row: dict) -> None:
        """One epoch's figures, as the pipeline's runs hold them (epoch/val_accuracy, ...)."""
        mlflow.log_metrics({f"{CURVE}{key}": float(value) for key, value in row.items() if key not in ("epoch", "seconds")},
                           step=row["epoch"])

    @store_lock()
    def end(self, state: str, metrics: dict[str, float] | None = None) -> None:
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.set_tag(STATE, state)
        mlflow.end_run(STATUS[state])

    def __exit__(self, kind, error, trace) -> None:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == self.run_id:
            self.end("FAIL")  # an error nobody recorded: the run must not stay RUNNING
