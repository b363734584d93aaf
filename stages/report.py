"""report: every variant side by side in reports/report.md, with its figures in reports/figures/, and
each variant over its seeds in metrics/variants.json.

Draws the sample grid, the training curves, the reliability diagrams, the surest label issues
(metrics/label_issues.csv), and per variant (its seed best on validation) a confusion matrix, a grid of misclassified test
images and where the model looked (metrics/saliency/); the report compares every pair of variants on the same
test images, read from metrics/predictions/.

MLflow records it all in the next stage (stages/publish.py), so a report edit does not relog the runs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

import numpy as np

from imgpipe import params as P
from imgpipe import paths, provenance
from imgpipe.data.imageset import load_splits
from imgpipe.errors import run_stage
from imgpipe.evaluation.results import best_on_validation, load_results
from imgpipe.files import atomic_path, read_arrays, read_csv, read_json, write_json, write_text
from imgpipe.reporting import figures
from imgpipe.reporting.report import render, seed_summary

LABEL_ISSUES_SHOWN = 24  # of the label check's list, the first shown in its grid (the report's table: the first 10)


def main() -> None:
    params = P.load()
    variants, seeds = P.get(params, "train.variants"), P.seeds(params)
    samples_per_class = P.whole_number(params, "report.samples_per_class")
    shown_mistakes = P.whole_number(params, "report.misclassified", minimum=0)
    card = read_json(paths.DATA_CARD)
    data = load_splits(paths.PREPARED)
    runs = load_results(variants, seeds)
    # The detailed sections and figures show each variant's seed best on validation (the headline's, for the variant
    # it puts forward: its verdict and the tables below are about the same answers); the seeds section shows them all.
    shown = {name: best_on_validation({seed: result.train for seed, result in runs[name].items()}) for name in variants}
    results, curves, mistakes, explained = {name: runs[name][shown[name]] for name in variants}, {}, {}, {}
    for name in variants:
        curves[name] = {measure: read_csv(paths.curves(name, shown[name]) / f"{measure}.csv") for measure in ("loss", "accuracy")}
        predictions = read_csv(paths.predictions(name, shown[name]), ("actual", "predicted"))
        wrong = predictions[predictions["actual"] != predictions["predicted"]]
        wrong = wrong.sort_values("confidence", ascending=False, kind="stable").head(shown_mistakes)
        mistakes[name] = list(wrong[["index", "actual", "predicted", "confidence"]].itertuples(index=False, name=None))
        explained[name] = read_arrays(paths.saliency(name, shown[name]))
        rows = predictions.set_index("index").loc[explained[name]["index"]]
        explained[name]["captions"] = [f"true {row.actual}\npred {row.predicted} ({row.confidence:.0%})" for row in rows.itertuples()]

    issues = read_csv(paths.LABEL_ISSUES, ("id", "split", "given", "suggested")).head(LABEL_ISSUES_SHOWN)
    experiment, _ = P.tracking(params)  # checked here too: publish reads it
    run = {"params_hash": provenance.params_hash(params), "commit": provenance.git_commit(), "dirty": provenance.git_dirty(),
           "experiment": provenance.dvc_experiment(), "versions": provenance.versions(), "mlflow_experiment": experiment}
    # Composed before anything is written: a setting or file it fails on leaves the figures as they were too.
    report = render(P.get(params, "data.dataset"), card, results, run, runs, saliency={name: str(maps["method"]) for name, maps in explained.items()},
                    label_issues=(read_json(paths.LABEL_ISSUES_SUMMARY), issues))
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
            maps = explained[name]
            drawn[f"saliency_{name}"] = figures.explained(data["test"], maps["index"], maps["heat"], maps["captions"])
        drawn["label_issues"] = figures.labelled(
            np.stack([data[split].images[index] for split, index in zip(issues["split"], issues["index"])]) if len(issues) else None,
            [f"{row.id}\n{row.given} -> {row.suggested}?" for row in issues.itertuples()])
        for figure_name, figure in drawn.items():
            figures.save(figure, folder / paths.figure(figure_name).name)
    write_text(paths.report(), report)
    write_json(paths.VARIANTS, {name: seed_summary(by_seed) for name, by_seed in runs.items()})
    print(f"wrote {paths.report().relative_to(paths.ROOT)} and {len(drawn)} figures in {paths.FIGURES.relative_to(paths.ROOT)}")


if __name__ == "__main__":
    run_stage(main)
