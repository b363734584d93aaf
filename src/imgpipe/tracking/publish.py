"""What the publish stage records in MLflow, in one process (MLflow's import, the store's opening and its
model logging are paid once per pipeline, not once per variant): a run per training (params, curves,
metrics, inputs and model; made once, found again by the training's digest), its evaluation and the
report, and the model the run puts forward registered as the `candidate` of imgpipe-<experiment>.
Takes plain values (the stage reads params.yaml)."""

from collections.abc import Callable

from imgpipe import paths, provenance
from imgpipe.config import SAME_WEIGHTS
from imgpipe.evaluation.results import VariantResult, choose
from imgpipe.files import read_csv
from imgpipe.settings import Variant
from imgpipe.tracking import registry, runs, store

CURVES = ("loss", "accuracy")  # metrics/curves/<variant>/seed<seed>/<measure>.csv: epoch, train, val


def record_trainings(experiment: str, results: dict[tuple[str, int], VariantResult], *, params: dict,
                     variant: Callable[[str, int], Variant], recorded: dict[tuple[str, int], str | None]) -> None:
    """The MLflow run of each (variant, seed)'s training: the one made before for the same checkpoint and
    metrics file, else a new one, into `recorded` ((variant, seed) -> run id) as each is known: should a later one
    fail, those before it are named still. params: every setting (the runs' params and tags); variant(name, seed):
    its training settings, asked only for new runs."""
    trainings = {key: runs.training_digest(paths.checkpoint(*key), paths.train_metrics(*key)) for key in results}
    found = runs.find_runs(experiment, list(trainings.values()))
    recorded |= {key: found[digest] for key, digest in trainings.items() if digest in found}
    missing = [key for key, digest in trainings.items() if digest not in found]
    if not missing:
        return

    from imgpipe.data.prepared import load_prepared, validation_fingerprint
    from imgpipe.models.checkpoint import load_checkpoint  # here: torch is slow to import, and only new runs need it
    from imgpipe.serving.preprocessing import Preprocessing

    data = load_prepared(paths.PREPARED)
    validation = validation_fingerprint(data)
    datasets = runs.dataset_inputs(params["data"]["dataset"], data.fingerprint, paths.PREPARED.relative_to(paths.ROOT),
                                       {"train": len(data.train), "validation": len(data.val), "test": len(data.test)})
    for name, seed in missing:
        settings = variant(name, seed)
        model, meta = load_checkpoint(paths.checkpoint(name, seed))
        curves = {}
        for measure in CURVES:
            table = read_csv(paths.curves(name, seed) / f"{measure}.csv")
            curves |= {f"train_{measure}": table["train"].tolist(), f"val_{measure}": table["val"].tolist()}
        # The recipe the checkpoint was trained with (a setting that gives the same weights may have changed since).
        config = meta.get("train_config") or vars(settings.config)
        # Runs that differ only in their seed share this, also when `dvc exp run` adds seeds to an earlier run's.
        unseeded = {key: value for key, value in config.items() if key not in ("seed", *SAME_WEIGHTS)}
        seed_group = f"{name}-" + provenance.params_hash({"model": settings.model, "settings": settings.settings,
                                                          "train": unseeded, "data": data.fingerprint})
        train = results[name, seed].train
        found[trainings[name, seed]] = runs.log_training(
            experiment,
            run_name=runs.run_name(name, seed),
            training=trainings[name, seed],
            params={"data": params["data"], "train": config, "model": {"name": settings.model, **settings.settings}},
            curves=curves,
            metrics=train,
            model=model,
            example=data.val.images[:2],
            tags=runs.run_tags(name, seed, seed_group, train["device"], data.fingerprint, params,
                               precision=train.get("precision", ""), hardware=train.get("hardware", ""),
                               resumed_after_epochs=train.get("resumed_after_epochs", []), validation_fingerprint=validation),
            datasets=datasets,
            # The temperature is inside the program already; stored beside it so that predict can say so.
            preprocessing=Preprocessing.of(meta),
        )
        recorded[name, seed] = found[trainings[name, seed]]
        print(f"{name} seed {seed}: training recorded as MLflow run {recorded[name, seed]}")


def register_best(experiment: str, results: dict[str, dict[int, VariantResult]], run_ids: dict[tuple[str, int], str]) -> dict:
    """Register the variant best on validation (over its seeds), its most accurate seed on validation, as a version
    of the registered model, which takes `candidate` only by beating the current one on validation (registry.register);
    test figures ride along as tags, never to choose."""
    choice = choose({name: {seed: r.train for seed, r in by_seed.items()} for name, by_seed in results.items()})
    variant, seed = choice.variant, choice.seed
    result = results[variant][seed]
    figures = {"val_accuracy": result.train["val_accuracy"], "val_loss": result.train["val_loss"],
               "test_accuracy": result.test["accuracy"], "test_macro_f1": result.test["macro_f1"]}
    registered = registry.register(experiment, run_ids[variant, seed], figures)
    name = registry.registered_name(experiment)
    print(f"{variant} seed {seed} (best on validation) registered in {name}: {registered.why}")
    # The version, not the alias: this file is committed with the execution, and `candidate` may move to another's.
    model = f"models:/{name}/{registered.version}"
    return {"variant": variant, "seed": seed, "version": registered.version, "model": model,
            "candidate": registered.candidate, "why": registered.why}


def add_evaluations(run_ids: dict[tuple[str, int], str], results: dict[tuple[str, int], VariantResult]) -> None:
    """Each run's test metrics, evaluation tables and the report, added where the run lacks them."""
    for (name, seed), result in results.items():
        metrics = {f"test_{key}": value for key, value in runs.numeric(result.test).items()}
        artifacts = {"predictions": paths.predictions(name, seed), "classes": paths.class_scores(name, seed),
                     "confusion": paths.confusion(name, seed), "report": paths.report(), "report/figures": paths.FIGURES,
                     "report/label_issues": paths.LABEL_ISSUES}
        tags = {"imgpipe.test_device": result.test.get("device", "unknown")}
        if runs.publish_evaluation(run_ids[name, seed], metrics, artifacts, tags):
            print(f"{name} seed {seed}: evaluation and report added to MLflow run {run_ids[name, seed]}")


def publish(experiment: str, results: dict[str, dict[int, VariantResult]], *, params: dict, optional: bool,
            variant: Callable[[str, int], Variant]) -> dict:
    """Record everything; returns what reports/mlflow_runs.json holds: the store, the candidate and each run's id
    (None where tracking failed and `optional` let the stage go on)."""
    trainings = {(name, seed): result for name, by_seed in results.items() for seed, result in by_seed.items()}
    run_ids, candidate = dict.fromkeys(trainings), None
    local = store.tracking_uri() == store.EMBEDDED_STORE
    with store.reported(optional):
        record_trainings(experiment, trainings, params=params, variant=variant, recorded=run_ids)
        add_evaluations(run_ids, trainings)
        candidate = register_best(experiment, results, run_ids)
        print(f"MLflow runs table: {store.runs_page(experiment)}" + (" (run `mlflow ui` here first)" if local else ""))
    if None in run_ids.values():
        print("not tracked (tracking.optional: true): " + ", ".join(f"{name} seed {seed}" for (name, seed), run in run_ids.items()
                                                                   if run is None))
    return {"experiment": experiment,
            "tracking_uri": "sqlite:///mlflow.db" if local else store.shown_uri(),  # project-relative: the same everywhere
            "candidate": candidate,
            "runs": {name: {str(seed): run_ids[name, seed] for seed in by_seed} for name, by_seed in results.items()}}
