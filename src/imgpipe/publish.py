"""What the report stage records in MLflow, in one process: a run per training (params, curves, metrics,
inputs and model; made once, found again by the training's digest), and the variant best on
validation registered as the `candidate` of imgpipe-<experiment>. Built on imgpipe.tracking; takes
plain values (the stage reads params.yaml)."""

from collections.abc import Callable

from imgpipe import paths, provenance, tracking
from imgpipe.files import read_csv
from imgpipe.params import Variant
from imgpipe.report import VariantResult
from imgpipe.selection import best_on_validation, best_over_seeds

CURVES = ("loss", "accuracy")  # metrics/curves/<variant>/seed<seed>/<measure>.csv: epoch, train, val


def record_trainings(experiment: str, results: dict[tuple[str, int], VariantResult], *, params: dict,
                     variant: Callable[[str, int], Variant]) -> dict[tuple[str, int], str]:
    """The MLflow run of each (variant, seed)'s training: the one made before for the same checkpoint and
    metrics file, else a new one. Returns (variant, seed) -> run id. params: every setting (the runs'
    params and tags); variant(name, seed): its training settings, asked only for new runs."""
    trainings = {key: tracking.training_digest(paths.checkpoint(*key), paths.train_metrics(*key)) for key in results}
    found = tracking.find_runs(experiment, list(trainings.values()))
    missing = [key for key, digest in trainings.items() if digest not in found]
    if not missing:
        return {key: found[digest] for key, digest in trainings.items()}

    from imgpipe.checkpoint import load_checkpoint  # here: torch is slow to import, and only new runs need it
    from imgpipe.prepare import load_prepared

    data = load_prepared(paths.PREPARED)
    datasets = tracking.dataset_inputs(params["data"]["dataset"], data.fingerprint, paths.PREPARED.relative_to(paths.ROOT),
                                       {"train": len(data.train), "validation": len(data.val), "test": len(data.test)})
    for name, seed in missing:
        settings = variant(name, seed)
        model, meta = load_checkpoint(paths.checkpoint(name, seed))
        curves = {}
        for measure in CURVES:
            table = read_csv(paths.curves(name, seed) / f"{measure}.csv")
            curves |= {f"train_{measure}": table["train"].tolist(), f"val_{measure}": table["val"].tolist()}
        # Runs that differ only in their seed share this, also when `dvc exp run` adds seeds to an earlier run's.
        unseeded = {key: value for key, value in vars(settings.config).items() if key != "seed"}
        seed_group = f"{name}-" + provenance.params_hash({"model": settings.model, "settings": settings.settings,
                                                          "train": unseeded, "data": data.fingerprint})
        train = results[name, seed].train
        found[trainings[name, seed]] = tracking.log_training(
            experiment,
            run_name=f"{name} seed {seed}",
            training=trainings[name, seed],
            params={"data": params["data"], "train": vars(settings.config), "model": {"name": settings.model, **settings.settings}},
            curves=curves,
            metrics=train,
            model=model,
            example=data.val.images[:2],
            tags=tracking.run_tags(name, seed, seed_group, train["device"], data.fingerprint, params),
            datasets=datasets,
            # The temperature is inside the program already; stored beside it so that predict can say so.
            preprocessing={key: meta[key] for key in ("class_names", "image_shape", "background", "temperature")},
        )
        print(f"{name} seed {seed}: training recorded as MLflow run {found[trainings[name, seed]]}")
    return {key: found[digest] for key, digest in trainings.items()}


def register_best(experiment: str, runs: dict[str, dict[int, VariantResult]], run_ids: dict[tuple[str, int], str]) -> dict:
    """Register the variant best on validation (over its seeds), its most accurate seed on validation,
    as the registered model's `candidate`; test figures ride along as tags, never to choose."""
    variant = best_over_seeds({name: {seed: r.train for seed, r in by_seed.items()} for name, by_seed in runs.items()})
    seed = best_on_validation({seed: r.train for seed, r in runs[variant].items()})
    result = runs[variant][seed]
    figures = {"val_accuracy": result.train["val_accuracy"], "val_loss": result.train["val_loss"],
               "test_accuracy": result.test["accuracy"], "test_macro_f1": result.test["macro_f1"]}
    version = tracking.register_candidate(experiment, run_ids[variant, seed], figures)
    name = tracking.registered_name(experiment)
    print(f"{variant} seed {seed} (best on validation): version {version} of {name}, alias @{tracking.CANDIDATE}")
    return {"variant": variant, "seed": seed, "version": version, "model": f"models:/{name}@{tracking.CANDIDATE}"}
