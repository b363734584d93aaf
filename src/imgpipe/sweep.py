"""Search a variant's settings with Optuna: TPE proposes, a pruner stops hopeless trials from their per-epoch
validation figures, and the winner is chosen on validation alone and scored on test once.

    python -m imgpipe.sweep                       # the search params.yaml's `sweep:` section describes
    python -m imgpipe.sweep --trials 40 --workers 2
    python -m imgpipe.sweep --worker              # on another machine: join the study (a shared sweep.storage)
    python -m imgpipe.sweep --summary             # choose and report, without new trials

Trials train in this process (or in `workers` processes of it) with the pipeline's training loop on the prepared
data (`dvc repro prepare` runs first); each is an MLflow run under the study's parent run. The summary goes to
reports/sweep.md and the parent run, with the exact `dvc exp run -S ...` that reruns the winner as a pipeline
experiment.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import warnings
from dataclasses import asdict

import numpy as np
import optuna
import sqlalchemy
from optuna.trial import TrialState

from imgpipe import params as P
from imgpipe import paths, settings
from imgpipe.config import HOW_IT_RUNS
from imgpipe.data.prepared import Prepared, load_prepared
from imgpipe.errors import ConfigError, ImgpipeError
from imgpipe.files import write_text
from imgpipe.search import summary
from imgpipe.search.space import SweepConfig, sweep_config
from imgpipe.search.trial import RUN, run_trial, trainable
from imgpipe.tracking import trials
from imgpipe.tracking.store import reported

PARENT = "mlflow_parent_run"  # the study's attribute naming its MLflow parent run
OBJECTIVE = "objective"  # the study's attribute naming the figure its trials' values are (sweep.objective)
DATA = "data_fingerprint"  # the study's attribute: the prepared data its trials are scored on
RECIPE = "recipe"  # the study's attribute: what its trials search and the recipe around it (searched_recipe)
HEARTBEAT_SECONDS = 30  # how often a running trial says it is alive; silent for three times that, it is failed
RETRIES = 2  # times a trial whose worker died is queued again: a configuration that kills its worker stops there


class AfterStartup(optuna.pruners.BasePruner):
    """`pruner`'s verdicts, ignored until `startup` trials have completed (sweep.startup_trials, as MedianPruner's own
    n_startup_trials): those are the yardstick. It is asked every time even so: successive halving records each
    trial's value at each rung as it asks, and the startup trials' values are what later ones compete with."""

    def __init__(self, pruner: optuna.pruners.BasePruner, startup: int):
        self.pruner, self.startup = pruner, startup

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        verdict = self.pruner.prune(study, trial)
        return verdict and len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= self.startup


def open_study(name: str, storage: str, sweep: SweepConfig, worker: int | None) -> optuna.Study:
    """The study, made or joined. `worker`: this process's index among its machine's workers, or None for a worker
    joining from another machine."""
    # A running trial beats a heartbeat into the database; one whose worker died without a word (killed, out of
    # memory, a machine lost) falls silent, and the next trial any worker starts fails it and queues its settings
    # again (a grid's point too), RETRIES times at most: else it stayed RUNNING, counted, and its point never ran.
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8, and what 4.9 asks for
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
            # several processes take turns at one SQLite file: wait for it rather than fail
            engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None)
    # Epochs are Optuna's steps, from 1; it first prunes at step n_warmup_steps (halving: at min_resource).
    pruner = {"median": lambda: optuna.pruners.MedianPruner(sweep.startup_trials, n_warmup_steps=sweep.warmup_epochs + 1),
              "halving": lambda: AfterStartup(optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, sweep.warmup_epochs + 1)),
                                              sweep.startup_trials),
              "none": optuna.pruners.NopPruner}[sweep.pruner]()
    # A grid: one seed for all, which shuffles the grid's order; a trial's number picks its point in that order, so
    # another order per worker tries some points twice, some never.
    grid = (optuna.samplers.GridSampler({d.key: d.grid(sweep.grid_points) for d in sweep.space}, seed=sweep.seed)
            if sweep.sampler == "grid" else None)
    study = optuna.create_study(study_name=name, storage=storage, sampler=grid, pruner=pruner, direction=sweep.direction,
                                load_if_exists=True)
    if sweep.sampler == "tpe":
        # Each worker its own seed, else they propose the same first trials, and seeded by the trials already there, else
        # a resumed study replays its first draws; one joining from another machine draws fresh (its index, 0, would be
        # the first machine's).
        seed = None if worker is None else int(np.random.SeedSequence([sweep.seed, worker, len(study.trials)]).generate_state(1)[0])
        study.sampler = optuna.samplers.TPESampler(seed=seed)
    # An existing study keeps its own direction whatever is asked: its trials' values are another figure, and the best
    # of them would be chosen the wrong way round.
    searched = study.user_attrs.get(OBJECTIVE)
    if searched not in (None, sweep.objective) or study.direction.name.lower() != sweep.direction:
        made = f"searched {searched}" if searched else f"{study.direction.name.lower()}s its figure"
        raise ConfigError(f"params.yaml: sweep.objective: {sweep.objective} ({sweep.direction}), but study {name} {made}: "
                          "its trials cannot be compared with new ones; name a new study (sweep.study) or keep its objective")
    if searched is None:
        study.set_user_attr(OBJECTIVE, sweep.objective)
    return study


def require_same_data(study: optuna.Study, fingerprint: str) -> None:
    """A study's trials are ranked against each other, and its winner keeps its test figure: all on one prepared data."""
    scored_on = study.user_attrs.get(DATA)
    if scored_on is None:
        study.set_user_attr(DATA, fingerprint)
    elif scored_on != fingerprint:
        raise ConfigError(f"sweep {study.study_name}: its trials were scored on other prepared data (fingerprint {scored_on}, "
                          f"now {fingerprint}): name a new study (sweep.study), or put the data settings back")


def searched_recipe(sweep: SweepConfig, params: dict) -> dict:
    """What a study's trials search, and the recipe they train around it (the variant's settings that are not searched,
    less how a machine runs them): every trial of a study must share it, or their figures are not comparable."""
    variant = settings.variant(params, sweep.variant, P.seeds(params)[0])
    searched = {dimension.key.rpartition(".")[2] for dimension in sweep.space}
    apart = searched | set(HOW_IT_RUNS) | {"device"}
    recipe = {"variant": sweep.variant, "sampler": sweep.sampler, "grid_points": sweep.grid_points,
              "space": {dimension.key: asdict(dimension) for dimension in sweep.space},
              "model": variant.model, "settings": {k: v for k, v in variant.settings.items() if k not in searched},
              "train": {k: v for k, v in asdict(variant.config).items() if k not in apart}}
    if sweep.sampler == "grid":  # the seed orders the grid, and trial n takes point n of that order
        recipe["grid_seed"] = sweep.seed
    return recipe


def require_same_recipe(study: optuna.Study, recipe: dict) -> None:
    """A resumed or joined study searches what it searched, around the same recipe: else a grid retries some points and
    skips others, and trials of 5 epochs are ranked beside trials of 30."""
    kept, now = study.user_attrs.get(RECIPE), json.loads(json.dumps(recipe))  # as the storage gives it back: lists, not tuples
    if kept is None:
        study.set_user_attr(RECIPE, now)
    elif kept != now:
        section = next(key for key in now.keys() | kept.keys() if now.get(key) != kept.get(key))
        inner = now.get(section), kept.get(section)
        if all(isinstance(part, dict) for part in inner):
            name = next(key for key in inner[0].keys() | inner[1].keys() if inner[0].get(key) != inner[1].get(key))
            section, inner = f"{section} {name}", (inner[0].get(name), inner[1].get(name))
        raise ConfigError(f"sweep {study.study_name}: its trials were run with {section} {inner[1]!r}, now {inner[0]!r}: "
                          "name a new study (sweep.study), or put the setting back")


def check_space(sweep: SweepConfig, params: dict, data: Prepared) -> None:
    """Before any trial: every end of each searched range and every choice makes a recipe the train stage accepts and a
    model that builds, and nothing overrides a searched train setting (models.<variant>.lr wins over train.lr)."""
    own = P.get(params, f"models.{sweep.variant}", None) or {}
    for dimension in sweep.space:
        section, _, name = dimension.key.partition(".")
        if section == "train" and isinstance(own, dict) and name in own:
            raise ConfigError(f"params.yaml: sweep.space.{dimension.key}: models.{sweep.variant}.{name} overrides it for "
                              f"{sweep.variant}; search models.{sweep.variant}.{name} instead")
        ends = dimension.choices if dimension.choices is not None else (dimension.low, dimension.high)
        for value in ends:
            if dimension.choices is None:  # as the sampler hands a range's values out: 16 of {low: 16, high: 128} is 16.0
                value = int(value) if dimension.integer else float(value)
            try:
                trainable(params, {dimension.key: value}, sweep, data, P.seeds(params)[0])
            except ConfigError as error:
                raise ConfigError(f"params.yaml: sweep.space.{dimension.key}: {value!r} makes no recipe the pipeline "
                                  f"trains ({error})") from None


def _said(sweep: SweepConfig):
    def say(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        drawn = ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in trial.params.items())
        if trial.state == TrialState.COMPLETE:
            print(f"trial {trial.number}: {sweep.objective} {trial.value:.4f} after {trial.user_attrs['epochs']} epochs ({drawn})", flush=True)
        elif trial.state == TrialState.PRUNED:
            print(f"trial {trial.number}: pruned after epoch {trial.user_attrs.get('epochs', 0)} ({drawn})", flush=True)
    return say


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9, as the heartbeat it reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def wants_more(study: optuna.Study, sweep: SweepConfig) -> bool:
    """Whether the study takes another trial: it holds fewer than sweep.trials (every worker and machine counts) and,
    for a grid, fewer than its points. Optuna's grid gives trial n its point n, so those trials, under way or done,
    cover it; past that it would retrain a tried point (or one still running: its is_exhausted waits for them)."""
    # A trial whose worker died is failed (and its retry queued) only when a trial starts: with every trial started,
    # none would, and the last one's death would leave it RUNNING for good.
    _fail_stale(study)
    started = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # not those merely enqueued
    limit = sweep.trials if sweep.sampler != "grid" else min(sweep.trials, math.prod(len(d.grid(sweep.grid_points)) for d in sweep.space))
    held = study.get_trials(deepcopy=False)
    retried = {number for trial in held for number in trial.system_attrs.get("retry_history", ())}  # its retry counts instead
    return sum(trial.state in started and trial.number not in retried for trial in held) < limit


def work(study: optuna.Study, sweep: SweepConfig, params: dict, data: Prepared, experiment: str, worker: int | None) -> None:
    """Run trials while the study wants more."""
    folder = paths.SWEEPS / study.study_name
    threads = max(1, (os.cpu_count() or 1) // sweep.workers)  # workers share this machine's cores
    seed = P.seeds(params)[0]
    parent = study.user_attrs[PARENT]

    def objective(trial):
        return run_trial(trial, sweep, params, data, experiment=experiment, parent=parent, folder=folder, seed=seed,
                         threads=threads, worker=worker)

    while wants_more(study, sweep):
        study.optimize(objective, n_trials=1, callbacks=[_said(sweep)])


def start_workers(sweep: SweepConfig, argv: list[str]) -> list[subprocess.Popen]:
    """The workers as processes of this command, started together so that they share the trials out."""
    return [subprocess.Popen([sys.executable, "-m", "imgpipe.sweep", *argv, "--worker", "--index", str(index)])
            for index in range(sweep.workers)]


def settings_from(args, params: dict) -> SweepConfig:
    """sweep: with the command line's values in place of its own, each checked as params.yaml's would be and named
    as the option it came from."""
    section = P.get(params, "sweep", None)
    sweep_config(section, P.get(params, "train.variants"))  # params.yaml's own errors first, named as its keys
    changes = {key: getattr(args, key) for key in ("trials", "workers", "storage", "study") if getattr(args, key) is not None}
    try:
        sweep = sweep_config({**(section or {}), **changes}, P.get(params, "train.variants"))
    except ConfigError as error:
        key = next((key for key in changes if str(error).startswith(f"params.yaml: sweep.{key}:")), None)
        if key is None:
            raise
        raise ConfigError(f"--{key}: " + str(error).removeprefix(f"params.yaml: sweep.{key}: ")) from None
    if sweep.storage is not None:  # a malformed URL fails now, not after preparing the data
        try:
            sqlalchemy.engine.make_url(sweep.storage)
        except sqlalchemy.exc.ArgumentError:
            where = "--storage" if "storage" in changes else "params.yaml: sweep.storage"
            raise ConfigError(f"{where}: {sweep.storage!r} is not a database URL (such as sqlite:///sweep.db or "
                              "postgresql://host/db)") from None
    return sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgpipe.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, help="trials in all (default: sweep.trials)")
    parser.add_argument("--workers", type=int, help="processes on this machine (default: sweep.workers)")
    parser.add_argument("--storage", help="Optuna's database URL (default: sweep.storage, else sqlite:///sweep.db)")
    parser.add_argument("--study", help="the study's name (default: sweep.study, else <experiment>-<variant>)")
    parser.add_argument("--worker", action="store_true", help="only run trials, for a study another command summarises")
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)  # a worker's, on the machine that started it
    parser.add_argument("--summary", action="store_true", help="choose the winner and write the summary, without new trials")
    args = parser.parse_args(argv)
    own = [arg for arg in (argv if argv is not None else sys.argv[1:]) if arg not in ("--summary",)]
    try:
        run(args, own)
    except ImgpipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run(args, argv: list[str]) -> None:
    params = P.load()
    sweep = settings_from(args, params)
    experiment, _ = P.tracking(params)
    name = sweep.study or f"{experiment}-{sweep.variant}"
    storage = sweep.storage or f"sqlite:///{paths.SWEEP_DB}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial comes from here instead
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # four lines a trial otherwise
    if not args.worker:
        done = subprocess.run(["dvc", "repro", "prepare"], capture_output=True, text=True)
        if done.returncode != 0:
            raise ImgpipeError(f"dvc repro prepare failed (exit {done.returncode}): {' '.join(done.stderr.split())[-300:]}")
    data = load_prepared(paths.PREPARED)
    index = args.index if args.index is not None or args.worker else 0  # None: a worker joining from another machine
    check_space(sweep, params, data)
    study = open_study(name, storage, sweep, index)
    require_same_data(study, data.fingerprint)
    require_same_recipe(study, searched_recipe(sweep, params))
    if PARENT not in study.user_attrs:
        if args.worker and args.index is None:  # a machine joining: two such starting together would each make one
            raise ImgpipeError(f"sweep {name}: the study has no MLflow parent run yet: start `python -m imgpipe.sweep` "
                               "(without --worker) on the machine that prepares the data first, then join it")
        with reported(optional=False):
            study.set_user_attr(PARENT, trials.parent_run(experiment, name, {"imgpipe.variant": sweep.variant}))
    with contextlib.nullcontext() if args.worker else failed_if_raised(study.user_attrs[PARENT]):
        if not args.summary:
            if not args.worker:
                print(f"sweep {name}: {sweep.trials} trials of {sweep.variant} ({sweep.workers} worker{'s' * (sweep.workers > 1)}), "
                      f"storage {storage}", flush=True)
            if args.worker or sweep.workers == 1:
                work(study, sweep, params, data, experiment, index)
            else:
                failed = [process.wait() for process in start_workers(sweep, argv)]
                if any(failed):
                    raise ImgpipeError(f"sweep {name}: a worker failed (exit {max(failed)}); its error is above")
        if not args.worker:
            summarize(study, sweep, data, storage)


@contextlib.contextmanager
def failed_if_raised(parent: str):
    """The study's parent run ended FAILED if what the block does fails (a worker, every trial, the summary, Ctrl-C):
    else it stayed RUNNING. A later summary finishes it."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            trials.close_abandoned([parent])
        raise


def summarize(study: optuna.Study, sweep: SweepConfig, data: Prepared, storage: str) -> None:
    _fail_stale(study)  # a trial whose worker died silently is a failure, not still running
    abandoned = [trial.user_attrs[RUN] for trial in study.trials if trial.state == TrialState.FAIL and RUN in trial.user_attrs]
    with reported(optional=False):
        if closed := trials.close_abandoned(abandoned):
            print(f"{closed} trial run(s) a dead worker left running ended FAILED", flush=True)
    result = summary.outcome(study, sweep, paths.SWEEPS / study.study_name, data)
    text = summary.markdown(study, sweep, result, storage)
    write_text(paths.SWEEP_REPORT, text)
    chosen = result.chosen
    metrics = {f"best_{sweep.objective}": chosen.value, "best_val_accuracy": chosen.user_attrs["val_accuracy"],
               "test_accuracy": result.test_accuracy, "test_accuracy_low": result.test_interval[0],
               "test_accuracy_high": result.test_interval[1], "selection_optimism": result.optimism,
               "trials_complete": result.counts["COMPLETE"], "trials_pruned": result.counts["PRUNED"], "epochs": result.epochs}
    tags = {"imgpipe.best_trial": str(chosen.number), "imgpipe.best_command": chosen.user_attrs["command"]}
    with reported(optional=False):
        trials.finish_parent(study.user_attrs[PARENT], metrics, tags, text)
    print(f"chosen on validation: trial {chosen.number}, val accuracy {chosen.user_attrs['val_accuracy']:.4f}; "
          f"test accuracy {result.test_accuracy:.4f} ({result.test_interval[0]:.4f}-{result.test_interval[1]:.4f}); "
          f"summary in {paths.SWEEP_REPORT.relative_to(paths.ROOT)}")
    print(f"rerun it as a pipeline experiment: {chosen.user_attrs['command']}")


if __name__ == "__main__":
    sys.exit(main())
