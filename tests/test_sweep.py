"""Sweeps (python -m imgpipe.sweep): a search space read from params.yaml, Optuna's TPE proposing, a pruner fed by
the training loop stopping a hopeless trial with nothing of it left half-written, every trial an MLflow run under
one parent, the winner chosen on validation and scored on test once; two workers sharing one study."""

import subprocess
import sys
import time

import mlflow
import numpy as np
import optuna
import pytest
from project import edit_params, fork, run

import imgpipe.sweep as sweeping
from imgpipe.errors import ConfigError
from imgpipe.evaluation.stats import selection_optimism
from imgpipe.search.space import applied, dvc_command, sweep_config
from imgpipe.search.summary import ranking
from imgpipe.sweep import check_space, open_study, require_same_data, require_same_recipe, searched_recipe, wants_more

SPACE = {"models.linear.lr": {"low": 1e-6, "high": 0.1, "log": True}}


def test_the_space_names_a_bad_setting_in_one_line():
    def error(section):
        with pytest.raises(ConfigError) as caught:
            sweep_config(section, ["linear", "cnn"])
        return str(caught.value)

    assert error({"space": {"data.val_fraction": {"low": 0.1, "high": 0.2}}}).startswith(
        "params.yaml: sweep.space.data.val_fraction: data settings change the prepared data")
    assert error({"space": {"train.lr": {"low": 0, "high": 0.1, "log": True}}}) == (
        "params.yaml: sweep.space.train.lr: needs low < high and low > 0 on a log scale, got 0..0.1")
    assert error({"space": SPACE, "variant": "mlp"}) == "params.yaml: sweep.variant: 'mlp' is not in train.variants (linear, cnn)"
    assert error({"space": SPACE, "trails": 3}).startswith("params.yaml: sweep.trails: unknown setting; valid: variant, objective")
    assert error({}).startswith("params.yaml: sweep.space: name at least one setting to search")
    lr = {"low": 0.001, "high": 0.1}
    assert error({"variant": "cnn", "space": {"train.lr": lr | {"log": "no"}}}) == (
        "params.yaml: sweep.space.train.lr.log: must be true or false, got 'no'")  # the text 'no' (YAML 1.2), true to bool()
    assert error({"variant": "cnn", "space": {"train.batch_size": {"low": 2.5, "high": 64, "int": True}}}) == (
        "params.yaml: sweep.space.train.batch_size: int: true needs whole-number bounds, got 2.5..64")
    assert error({"variant": "cnn", "space": {"train.lr": lr | {"choices": [0.1, 0.2]}}}) == (
        "params.yaml: sweep.space.train.lr: choices or a range (low, high, log, int), not both")
    assert error({"variant": "cnn", "space": {"train.optimizer": {"choices": ["sgd"]}}}).startswith(
        "params.yaml: sweep.space.train.optimizer.choices: must list two values or more")
    assert error({"variant": "cnn", "space": SPACE}) == (  # the linear model's rate, in a sweep of the cnn
        "params.yaml: sweep.space.models.linear.lr: the sweep trains cnn (sweep.variant), whose settings are models.cnn.*: "
        "this would change nothing it trains")
    assert error({"variant": "cnn", "space": {"train.epochs": {"low": 3, "high": 30, "int": True}}}).startswith(
        "params.yaml: sweep.space.train.epochs: trials of other lengths anneal at other paces")
    assert sweep_config({"variant": "cnn", "pruner": "none", "space": {"train.epochs": {"low": 3, "high": 30, "int": True}}},
                        ["cnn"]).space[0].integer


def test_every_end_of_the_space_is_a_recipe_the_pipeline_trains_before_any_trial(digits_prepared):
    """A typo under the model, a crop as large as the image, a train setting the variant overrides: one line before
    the first trial, not a traceback (or a failed trial) halfway through the study."""
    params = {"data": {"dataset": "digits"}, "train": {"variants": ["cnn"], "seeds": [0], "epochs": 2, "lr": 0.01},
              "models": {"cnn": {"channels": [4], "lr": 0.05}}}

    def error(space):
        with pytest.raises(ConfigError) as caught:
            check_space(sweep_config({"variant": "cnn", "space": space}, ["cnn"]), params, digits_prepared)
        return str(caught.value)

    assert error({"train.lr": {"low": 0.001, "high": 0.1}}) == (
        "params.yaml: sweep.space.train.lr: models.cnn.lr overrides it for cnn; search models.cnn.lr instead")
    assert error({"models.cnn.chanels": {"choices": [[4], [8]]}}).startswith(
        "params.yaml: sweep.space.models.cnn.chanels: [4] makes no recipe the pipeline trains (chanels: not a setting of model 'cnn'")
    assert error({"train.crop_padding": {"low": 0, "high": 8, "int": True}}) == (
        "params.yaml: sweep.space.train.crop_padding: 8 makes no recipe the pipeline trains (train.crop_padding: must be "
        "smaller than the 8x8 images, got 8)")
    assert error({"train.batch_size": {"low": 16, "high": 128}}) == (  # drawn as floats, 16.0 to 128.0: int: true wanted
        "params.yaml: sweep.space.train.batch_size: 16.0 makes no recipe the pipeline trains (train.batch_size: must be a "
        "whole number >= 1, got 16.0)")
    check_space(sweep_config({"variant": "cnn", "space": {"models.cnn.lr": {"low": 0.001, "high": 0.1}}}, ["cnn"]), params,
                digits_prepared)  # a good space: nothing to say


def test_a_value_drawn_inside_a_range_that_breaks_a_rule_ends_the_sweep_in_one_line(digits_prepared, tmp_path):
    """check_space tries a range's ends; kernel sizes 3..5 hold an even 4 between them. The trial drawing it is
    refused before any MLflow run or training, naming what it drew."""
    from imgpipe.search.trial import run_trial

    params = {"data": {"dataset": "digits"}, "train": {"variants": ["cnn"], "seeds": [0], "epochs": 1},
              "models": {"cnn": {"channels": [4]}}}
    sweep = sweep_config({"variant": "cnn", "sampler": "grid", "space": {"models.cnn.kernel_size": {"low": 3, "high": 5, "int": True}}},
                         ["cnn"])
    check_space(sweep, params, digits_prepared)  # both ends are odd
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"models.cnn.kernel_size": [4]}))
    with pytest.raises(ConfigError) as caught:
        study.optimize(lambda trial: run_trial(trial, sweep, params, digits_prepared, experiment="never", parent="none",
                                               folder=tmp_path, seed=0, threads=1, worker=0), n_trials=1)
    assert str(caught.value) == (
        "params.yaml: sweep.space: trial 0 drew models.cnn.kernel_size=4, which makes no recipe the pipeline trains "
        "(kernel_size: must be an odd whole number >= 1, got 4); list the values that do as choices")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "error: --workers: must be a whole number >= 1, got 0"),
    (["--trials", "-3"], "error: --trials: must be a whole number >= 1, got -3"),
    (["--storage", "foo"], "error: --storage: 'foo' is not a database URL (such as sqlite:///sweep.db or postgresql://host/db)")])
def test_the_command_lines_values_are_checked_as_params_yaml_s_naming_the_option(tmp_path, monkeypatch, capsys, argv, message):
    """Before any data is prepared: not a ZeroDivisionError or SQLAlchemy's traceback later."""
    (tmp_path / "params.yaml").write_text("train: {variants: [linear]}\nsweep: {variant: linear, space: {models.linear.lr: "
                                          "{low: 0.001, high: 0.1}}}\n")
    load = sweeping.P.load
    monkeypatch.setattr(sweeping.P, "load", lambda: load(tmp_path / "params.yaml"))
    monkeypatch.setattr(sweeping.subprocess, "run", lambda *a, **k: pytest.fail("prepared the data before checking"))
    assert sweeping.main(argv) == 1
    assert capsys.readouterr().err.strip() == message


def test_a_resumed_study_draws_anew_and_keeps_its_space_and_recipe(tmp_path):
    """TPE seeded alike in every session replayed its first draws (the same trainings again); a study resumed with
    another grid or recipe is refused (a grid of 5 points over one of 3 retrained a point and skipped two)."""
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    sweep = sweep_config({"variant": "linear", "space": SPACE}, ["linear"])
    for _ in range(2):  # two sessions of the same study on one worker
        open_study("digits-linear", storage, sweep, 0).optimize(lambda trial: sweep.space[0].suggest(trial), n_trials=3)
    drawn = [trial.params["models.linear.lr"] for trial in open_study("digits-linear", storage, sweep, 0).trials]
    assert len(set(drawn)) == 6
    params = {"train": {"variants": ["linear"], "seeds": [0], "epochs": 30, "lr": 0.01}, "models": {"linear": {}}}
    study = open_study("digits-linear", storage, sweep, 0)
    require_same_recipe(study, searched_recipe(sweep, params))
    require_same_recipe(study, searched_recipe(sweep, params | {"train": params["train"] | {"threads": 2}}))  # how it runs: the same
    with pytest.raises(ConfigError) as caught:
        require_same_recipe(study, searched_recipe(sweep, params | {"train": params["train"] | {"epochs": 5}}))
    assert str(caught.value) == ("sweep digits-linear: its trials were run with train epochs 30, now 5: name a new study "
                                 "(sweep.study), or put the setting back")
    grid = sweep_config({"variant": "linear", "space": SPACE, "grid_points": 5}, ["linear"])
    with pytest.raises(ConfigError, match=r"its trials were run with grid_points 3, now 5"):
        require_same_recipe(study, searched_recipe(grid, params))
    # A grid's seed orders its points, trial n taking point n: another seed tries some twice and skips others.
    seeded = [sweep_config({"variant": "linear", "space": SPACE, "sampler": "grid", "seed": seed}, ["linear"]) for seed in (0, 1)]
    ordered = open_study("digits-grid", storage, seeded[0], 0)
    require_same_recipe(ordered, searched_recipe(seeded[0], params))
    with pytest.raises(ConfigError, match=r"its trials were run with grid_seed 0, now 1"):
        require_same_recipe(ordered, searched_recipe(seeded[1], params))


def _told(study: optuna.Study, trials: list[list[float]]) -> list[tuple[int, int]]:
    """Trials reporting these values epoch by epoch and asking the pruner after each, as a sweep's trial does; the
    (trial, epoch) of each one pruned."""
    pruned = []
    for number, values in enumerate(trials):
        trial = study.ask()
        for epoch, value in enumerate(values, 1):
            trial.report(value, epoch)
            if trial.should_prune():
                pruned.append((number, epoch))
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, values[-1])
    return pruned


@pytest.mark.parametrize("pruner", ["median", "halving"])
def test_no_trial_is_pruned_until_the_startup_trials_complete(tmp_path, pruner):
    sweep = sweep_config({"variant": "linear", "pruner": pruner, "startup_trials": 3, "warmup_epochs": 0, "space": SPACE}, ["linear"])
    study = open_study("digits-linear", f"sqlite:///{tmp_path / 'sweep.db'}", sweep, 0)
    # Each trial worse than all before it: a pruner judging from the second trial on stops every later one.
    pruned = _told(study, [[0.9, 0.95], [0.5, 0.6], [0.4, 0.5], [0.3, 0.4], [0.2, 0.3]])
    assert pruned and min(number for number, _ in pruned) == 3


def test_a_study_made_for_another_objective_is_refused_in_one_line(tmp_path):
    """Optuna loads an existing study with its own direction, whatever is asked: its best would be chosen the wrong way."""
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    accuracy = sweep_config({"variant": "linear", "space": SPACE}, ["linear"])
    _told(open_study("digits-linear", storage, accuracy, 0), [[0.97]])
    loss = sweep_config({"variant": "linear", "objective": "val_loss", "space": SPACE}, ["linear"])
    with pytest.raises(ConfigError) as caught:
        open_study("digits-linear", storage, loss, 0)
    assert str(caught.value) == ("params.yaml: sweep.objective: val_loss (minimize), but study digits-linear searched val_accuracy: "
                                 "its trials cannot be compared with new ones; name a new study (sweep.study) or keep its objective")
    assert [trial.value for trial in open_study("digits-linear", storage, accuracy, 1).trials] == [0.97]  # its own goes on
    assert open_study("digits-loss", storage, loss, 0).direction == optuna.study.StudyDirection.MINIMIZE  # a new one


def test_two_workers_of_a_grid_try_each_point_once_and_stop_when_it_is_covered(tmp_path):
    sweep = sweep_config({"variant": "cnn", "sampler": "grid", "trials": 20, "space": {
        "models.cnn.lr": {"low": 0.001, "high": 0.1, "log": True}, "models.cnn.channels": {"choices": [[8], [16]]}}}, ["cnn"])
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    workers = [open_study("digits-cnn", storage, sweep, worker) for worker in (0, 1)]  # as two processes of one machine
    tried = []

    def objective(trial):  # as a sweep's trial draws its settings
        tried.append(tuple(str(dimension.suggest(trial)) for dimension in sweep.space))
        return 0.5

    while len(tried) < 5 and wants_more(workers[len(tried) % 2], sweep):  # the workers take turns, as work() runs them
        workers[len(tried) % 2].optimize(objective, n_trials=1)
    last = workers[1].ask()  # the last point, under way on one worker...
    tried.append(tuple(str(dimension.suggest(last)) for dimension in sweep.space))
    assert not wants_more(workers[0], sweep)  # ...so the other starts none: a sixth would rerun a point
    assert len(tried) == len(set(tried)) == 3 * 2  # every point of the grid once, not trials: 20


def test_a_study_goes_on_only_on_the_prepared_data_its_trials_were_scored_on(tmp_path):
    study = open_study("digits-linear", f"sqlite:///{tmp_path / 'sweep.db'}", sweep_config({"variant": "linear", "space": SPACE}, ["linear"]), 0)
    require_same_data(study, "00ff00ff00ff00ff")
    require_same_data(study, "00ff00ff00ff00ff")  # the same data: it goes on
    with pytest.raises(ConfigError) as caught:
        require_same_data(study, "1111222233334444")
    assert str(caught.value) == ("sweep digits-linear: its trials were scored on other prepared data (fingerprint 00ff00ff00ff00ff, "
                                 "now 1111222233334444): name a new study (sweep.study), or put the data settings back")


@pytest.mark.parametrize("objective", ["val_accuracy", "val_loss"])
def test_a_tie_on_the_objective_goes_to_the_other_validation_figure_then_the_earlier_trial(objective):
    sweep = sweep_config({"variant": "linear", "objective": objective, "space": SPACE}, ["linear"])
    study = optuna.create_study(direction=sweep.direction)
    for accuracy, loss in [(0.90, 0.30), (0.92, 0.15), (0.95, 0.20), (0.95, 0.15), (0.95, 0.15)]:
        study.add_trial(optuna.trial.create_trial(value=accuracy if objective == "val_accuracy" else loss,
                                                  user_attrs={"val_accuracy": accuracy, "val_loss": loss}))
    # Accuracy: 2-4 tie, 3 and 4 have the lower loss. Loss: 1, 3 and 4 tie, 3 and 4 are the more accurate. Then 3, the
    # earlier (Optuna's best_trial: the first of the tie, 2 or 1).
    assert max(study.trials, key=ranking(sweep)).number == 3


def test_a_trial_whose_training_diverges_fails_in_optuna_and_in_mlflow_alike(digits_prepared, mlflow_store, monkeypatch, tmp_path):
    from imgpipe.search.trial import run_trial
    from imgpipe.tracking import trials

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    sweep = sweep_config({"variant": "linear", "objective": "val_loss", "space": {"models.linear.lr": {"low": 1e37, "high": 3e38}}},
                         ["linear"])
    params = {"data": {"dataset": "digits"}, "models": {"linear": {}},
              "train": {"variants": ["linear"], "seeds": [0], "epochs": 1, "optimizer": "sgd", "device": "cpu", "precision": "fp32"}}
    parent = trials.parent_run("diverged", "digits-linear", {})
    study = optuna.create_study(study_name="digits-linear")
    study.optimize(lambda trial: run_trial(trial, sweep, params, digits_prepared, experiment="diverged", parent=parent,
                                           folder=tmp_path, seed=0, threads=1, worker=0), n_trials=1)
    (run,) = mlflow.MlflowClient(mlflow_store).search_runs([mlflow.get_experiment_by_name("diverged").experiment_id],
                                                          "tags.`imgpipe.trial` = '0'")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert (run.data.tags["imgpipe.trial_state"], run.info.status) == ("FAIL", "FAILED") and not list(tmp_path.iterdir())


def test_a_retried_trial_does_not_count_the_dead_trial_s_epochs(digits_prepared, mlflow_store, monkeypatch, tmp_path):
    """Optuna's retry copies the dead trial's attributes (its epochs, its seconds): a retry that dies too before its
    first epoch counted them again in the summary's epochs."""
    from imgpipe.search import trial as trial_module
    from imgpipe.tracking import trials

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    sweep = sweep_config({"variant": "linear", "space": {"models.linear.lr": {"low": 0.01, "high": 0.1}}}, ["linear"])
    params = {"data": {"dataset": "digits"}, "models": {"linear": {}},
              "train": {"variants": ["linear"], "seeds": [0], "epochs": 1, "device": "cpu", "precision": "fp32", "threads": 0}}
    study = optuna.create_study(study_name="digits-linear")
    study.enqueue_trial({"models.linear.lr": 0.05}, user_attrs={"epochs": 4, "train_seconds": 9.0})  # as a retry is queued

    def dies(*args, **kwargs):
        raise RuntimeError("killed before its first epoch")

    monkeypatch.setattr(trial_module, "train", dies)
    parent = trials.parent_run("retried", "digits-linear", {})
    study.optimize(lambda trial: trial_module.run_trial(trial, sweep, params, digits_prepared, experiment="retried", parent=parent,
                                                        folder=tmp_path, seed=0, threads=1, worker=0), n_trials=1, catch=(RuntimeError,))
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert (study.trials[0].user_attrs["epochs"], study.trials[0].user_attrs["train_seconds"]) == (0, 0.0)
    # train.threads 0 here: the trial chose its threads (1), and the command that reruns it names them.
    assert study.trials[0].user_attrs["command"] == "dvc exp run -S +models.linear.lr=0.05 -S train.threads=1"


def test_a_sweep_that_fails_ends_its_parent_run_failed_not_running(mlflow_store, monkeypatch):
    from imgpipe.tracking import trials

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    parent = trials.parent_run("failing", "digits-linear", {})
    with pytest.raises(KeyboardInterrupt):
        with sweeping.failed_if_raised(parent):
            raise KeyboardInterrupt  # Ctrl-C, a worker's failure, every trial failed
    assert mlflow.MlflowClient(mlflow_store).get_run(parent).info.status == "FAILED"


def test_a_drawn_configuration_becomes_params_and_the_dvc_command_that_reruns_it():
    params = {"train": {"lr": 0.01}, "models": {"cnn": {"channels": [16, 32]}, "linear": None}}
    values = {"train.lr": 0.003, "models.cnn.channels": [32, 64], "models.linear.weight_decay": 1e-05}
    assert applied(params, values) == {"train": {"lr": 0.003}, "models": {"cnn": {"channels": [32, 64]},
                                                                          "linear": {"weight_decay": 1e-05}}}
    assert params["train"]["lr"] == 0.01  # a copy
    assert dvc_command(params, values) == ("dvc exp run -S train.lr=0.003 -S 'models.cnn.channels=[32,64]' "
                                           "-S +models.linear.weight_decay=1e-05")


def test_best_of_many_noisy_scores_is_optimistic_and_the_bootstrap_says_by_how_much():
    rng = np.random.default_rng(1)
    alike = rng.random((20, 400)) < 0.8  # 20 configurations, all truly 80% accurate: any "best" is luck
    # The maximum of 20 draws lies about 1.87 standard deviations (0.02 on 400 images) above the mean.
    assert 0.015 < selection_optimism(alike) < 0.06
    assert abs(selection_optimism(alike[:1])) < 0.005  # one configuration: nothing chosen, nothing flattered
    dominant = np.vstack([np.ones((1, 400)), rng.random((5, 400)) < 0.5])
    assert abs(selection_optimism(dominant)) < 0.005  # a clear winner is chosen on every resample: no luck involved


def _project(folder, pipeline, **sweep):
    """A fork of the session's built pipeline: its data prepared and its MLflow store made, which on a fresh copy cost
    each sweep some 3 CPU-seconds (dvc repro prepare, the store's migrations); the sweep's runs in an experiment of their own."""
    project = fork(pipeline, folder)
    edit_params(project, tracking__experiment="sweeps", train__epochs=3, train__variants=["linear"],
                label_issues__variant="linear", sweep__variant="linear", sweep__startup_trials=1, sweep__warmup_epochs=0,
                sweep__space=SPACE, **{f"sweep__{key}": value for key, value in sweep.items()})
    return project


def test_a_sweep_prunes_a_hopeless_trial_leaves_nothing_of_it_and_tests_only_the_winner(tmp_path, pipeline):
    project = _project(tmp_path / "project", pipeline, trials=3)
    storage = f"sqlite:///{project / 'sweep.db'}"
    study = optuna.create_study(study_name="sweeps-linear", storage=storage, direction="maximize")
    for lr in (0.05, 1e-6, 0.01):  # a good rate, then one that cannot learn in an epoch: the pruner's case
        study.enqueue_trial({"models.linear.lr": lr})

    # Another machine's worker started before the sweep itself: two such would each make a parent run.
    early = run(["python", "-m", "imgpipe.sweep", "--worker"], project, check=False)
    assert early.returncode == 1 and early.stderr.strip() == (
        "error: sweep sweeps-linear: the study has no MLflow parent run yet: start `python -m imgpipe.sweep` (without "
        "--worker) on the machine that prepares the data first, then join it")
    # MLflow logs no system metrics for a run shorter than its sampling interval (imgpipe's 1 s): these trials are shorter.
    done = run(["python", "-m", "imgpipe.sweep"], project, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.05")
    assert "trial 1: pruned after epoch 1 (models.linear.lr=1e-06)" in done.stdout

    study = optuna.load_study(study_name="sweeps-linear", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states[0] == optuna.trial.TrialState.COMPLETE and states[1] == optuna.trial.TrialState.PRUNED
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Nothing half-written: a checkpoint per completed trial, none for the pruned one, no temporary files.
    assert sorted(p.name for p in (project / "sweeps/sweeps-linear").iterdir()) == sorted(f"trial-{t.number}.pt" for t in complete)
    assert study.trials[1].user_attrs["epochs"] == 1 and "val_hits" not in study.trials[1].user_attrs

    chosen = max(complete, key=lambda t: t.user_attrs["val_accuracy"])  # on validation alone
    assert study.best_trial.number == chosen.number
    assert study.user_attrs["test"]["trial"] == chosen.number and study.user_attrs["test"]["looks"] == 1
    summary = (project / "reports/sweep.md").read_text()
    assert f"Trial {chosen.number}, chosen on validation alone: val accuracy {chosen.value:.4f}" in summary
    assert f"dvc exp run -S +models.linear.lr={chosen.params['models.linear.lr']}" in summary
    assert f"Trials: 3 ({len(complete)} complete, {3 - len(complete)} pruned, 0 failed)" in summary

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "sweep sweeps-linear")
    children = {r.data.tags["imgpipe.trial"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["0", "1", "2"]
    assert children["1"].info.status == "KILLED" and children["1"].data.tags["imgpipe.trial_state"] == "PRUNED"
    assert children["0"].info.status == "FINISHED" and children["0"].data.metrics["val_accuracy"] == complete[0].value
    assert any(key.startswith("system/cpu_utilization") for key in children["0"].data.metrics)  # MLflow's own monitor
    assert parent.data.metrics["test_accuracy"] == study.user_attrs["test"]["accuracy"]

    run(["python", "-m", "imgpipe.sweep", "--summary"], project)  # summarised again: the test split is not looked at again
    assert optuna.load_study(study_name="sweeps-linear", storage=storage).user_attrs["test"]["looks"] == 1


def test_two_workers_share_one_study_on_a_database_server(tmp_path, tracking_server, pipeline):
    if not tracking_server.on_postgresql:
        pytest.skip("PostgreSQL is not installed")
    storage = tracking_server.database("optuna")
    project = _project(tmp_path / "project", pipeline, trials=8, workers=2, pruner="none", storage=storage)
    run(["python", "-m", "imgpipe.sweep"], project)
    study = optuna.load_study(study_name="sweeps-linear", storage=storage)
    assert 8 <= len(study.trials) <= 9  # two workers may both start the last trial
    # Eight trials of about two seconds each: a worker would have to start some ten seconds after the other to miss out.
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials} == {"0", "1"}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == len(study.trials) + 1


def test_a_grid_spreads_each_range_on_its_own_scale():
    space = sweep_config({"variant": "cnn", "space": {
        "models.cnn.lr": {"low": 0.001, "high": 0.1, "log": True},
        "train.crop_padding": {"low": 0, "high": 4, "int": True},
        "models.cnn.channels": {"choices": [[8, 16], [16, 32]]},
    }}, ["cnn"]).space
    assert [dimension.grid(3) for dimension in space] == [[0.001, 0.01, 0.1], [0, 2, 4], ["[8, 16]", "[16, 32]"]]


@pytest.mark.parametrize("trials", [20, 1])
def test_a_trial_whose_worker_died_is_failed_and_its_grid_point_tried_again(tmp_path, monkeypatch, trials):
    """A worker killed mid-trial (out of memory, a machine lost) leaves its trial RUNNING: it stopped beating, so the
    next trial started fails it and queues its point again, and the grid ends with every point tried. With every trial
    of the study started (trials: 1), none would start to do it: asking for more does."""
    monkeypatch.setattr(sweeping, "HEARTBEAT_SECONDS", 1)
    sweep = sweep_config({"variant": "cnn", "sampler": "grid", "pruner": "none", "trials": trials, "space": {
        "models.cnn.lr": {"choices": [0.01, 0.1]}}}, ["cnn"])
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    dying = ("import os, sys, time, imgpipe.sweep as s; from imgpipe.search.space import sweep_config as c; s.HEARTBEAT_SECONDS = 1\n"
             "sweep = c({'variant': 'cnn', 'sampler': 'grid', 'pruner': 'none', 'space': {'models.cnn.lr': {'choices': [0.01, 0.1]}}}, ['cnn'])\n"
             f"study = s.open_study('digits-cnn', {storage!r}, sweep, 0)\n"
             "def objective(trial):\n    sweep.space[0].suggest(trial); time.sleep(1.5); os._exit(9)  # killed mid-trial\n"
             "study.optimize(objective, n_trials=1)\n")
    subprocess.run([sys.executable, "-c", dying], check=False, timeout=120)
    study = open_study("digits-cnn", storage, sweep, 0)
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.RUNNING]  # left so by the dead worker
    died = study.trials[0].params
    time.sleep(3.5)  # past the grace period: three heartbeats missed
    tried = []
    while wants_more(study, sweep):
        study.optimize(lambda trial: tried.append(sweep.space[0].suggest(trial)) or 0.5, n_trials=1)
    states = [trial.state for trial in study.trials]
    if trials == 1:  # its one point retried, nothing more
        assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE] and study.trials[1].params == died
        return
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE]
    assert study.trials[1].params == died and sorted(tried) == [0.01, 0.1]  # the dead trial's point first, then the other
