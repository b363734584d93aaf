"""report: every variant side by side in reports/report.md, with its figures in reports/figures/, and
each variant over its seeds in metrics/variants.json.

Draws the sample grid, the training curves, the reliability diagrams, and a confusion matrix and a grid
of misclassified test images per variant (its first seed); the report compares every pair of variants on
the same test images, read from metrics/predictions/.

Then records each variant and seed in MLflow, all in this one process (imgpipe.publish): a run per
training, its evaluation and the report, and the variant best on validation as the `candidate` of the
registered model imgpipe-<experiment>. The run ids and the candidate go to reports/mlflow_runs.json.
"""

import functools

from imgpipe import figures, paths, provenance, publish, tracking
from imgpipe import params as P
from imgpipe.errors import run_stage
from imgpipe.files import atomic_path, read_csv, read_json, write_json, write_text
from imgpipe.imageset import load_splits
from imgpipe.report import VariantResult, render, seed_summary


def load_result(name: str, seed: int) -> VariantResult:
    predictions = read_csv(paths.predictions(name, seed), ("actual", "predicted"))
    return VariantResult(
        train=read_json(paths.train_metrics(name, seed)),
        test=read_json(paths.test_metrics(name, seed)),
        classes=read_csv(paths.class_scores(name, seed), ("class",)),
        confusion=read_csv(paths.confusion(name, seed), ("actual",)).set_index("actual"),
        correct=(predictions["actual"] == predictions["predicted"]).to_numpy(),
        reliability=read_csv(paths.reliability(name, seed), ("scaling",)),
    )


def main() -> None:
    params = P.load()
    variants, seeds = P.get(params, "train.variants"), P.seeds(params)
    samples_per_class = P.whole_number(params, "report.samples_per_class")
    shown_mistakes = P.whole_number(params, "report.misclassified", minimum=0)
    card = read_json(paths.DATA_CARD)
    data = load_splits(paths.PREPARED)
    runs = {name: {seed: load_result(name, seed) for seed in seeds} for name in variants}
    # The detailed sections and figures show each variant's first seed; the seeds section shows them all.
    results, curves, mistakes = {name: runs[name][seeds[0]] for name in variants}, {}, {}
    for name in variants:
        curves[name] = {measure: read_csv(paths.curves(name, seeds[0]) / f"{measure}.csv") for measure in ("loss", "accuracy")}
        predictions = read_csv(paths.predictions(name, seeds[0]), ("actual", "predicted"))
        wrong = predictions[predictions["actual"] != predictions["predicted"]]
        wrong = wrong.sort_values("confidence", ascending=False, kind="stable").head(shown_mistakes)
        mistakes[name] = list(wrong[["index", "actual", "predicted", "confidence"]].itertuples(index=False, name=None))

    with atomic_path(paths.FIGURES) as folder:
        folder.mkdir()
        drawn = {
            "samples": figures.sample_grid(data["train"], samples_per_class),
            "curves": figures.curves(curves),
            "reliability": figures.reliability({name: result.reliability for name, result in results.items()},
                                               {name: (result.test["ece_before_scaling"], result.test["ece"])
                                                for name, result in results.items()}),
        }
        for name, result in results.items():
            drawn[f"confusion_{name}"] = figures.confusion(result.confusion.to_numpy(), data["test"].class_names,
                                                           f"{name}: confusion matrix on the test split")
            drawn[f"misclassified_{name}"] = figures.misclassified(data["test"], mistakes[name])
        for figure_name, figure in drawn.items():
            figures.save(figure, folder / paths.figure(figure_name).name)
    experiment, optional = P.tracking(params)
    run = {"params_hash": provenance.params_hash(params), "commit": provenance.git_commit(), "dirty": provenance.git_dirty(),
           "experiment": provenance.dvc_experiment(), "versions": provenance.versions(), "mlflow_experiment": experiment}
    write_text(paths.report(), render(P.get(params, "data.dataset"), card, results, run, runs))
    write_json(paths.VARIANTS, {name: seed_summary(by_seed) for name, by_seed in runs.items()})
    print(f"wrote {paths.report().relative_to(paths.ROOT)} and {len(drawn)} figures in {paths.FIGURES.relative_to(paths.ROOT)}")

    tracked = {(name, seed): result for name, by_seed in runs.items() for seed, result in by_seed.items()}
    run_ids, candidate = dict.fromkeys(tracked), None
    local = tracking.tracking_uri() == tracking.EMBEDDED_STORE
    with tracking.reported(optional):
        run_ids = publish.record_trainings(experiment, tracked, params=params, variant=functools.partial(P.variant, params))
        for (name, seed), result in tracked.items():
            metrics = {f"test_{key}": value for key, value in tracking.numeric(result.test).items()}
            artifacts = {"predictions": paths.predictions(name, seed), "classes": paths.class_scores(name, seed),
                         "confusion": paths.confusion(name, seed), "report": paths.report(), "report/figures": paths.FIGURES}
            tags = {"imgpipe.test_device": result.test.get("device", "unknown")}
            if tracking.publish_evaluation(run_ids[name, seed], metrics, artifacts, tags):
                print(f"{name} seed {seed}: evaluation and report added to MLflow run {run_ids[name, seed]}")
        candidate = publish.register_best(experiment, runs, run_ids)
        print(f"MLflow runs table: {tracking.runs_page(experiment)}" + (" (run `mlflow ui` here first)" if local else ""))
    if None in run_ids.values():
        print("not tracked (tracking.optional: true): " + ", ".join(f"{name} seed {seed}" for name, seed in tracked))
    # The embedded store by its project-relative address: the same on every machine.
    store = "sqlite:///mlflow.db" if local else tracking.tracking_uri()
    write_json(paths.MLFLOW_RUNS, {"experiment": experiment, "tracking_uri": store, "candidate": candidate,
                                   "runs": {name: {str(seed): run_ids[name, seed] for seed in seeds} for name in variants}})


if __name__ == "__main__":
    run_stage(main)
