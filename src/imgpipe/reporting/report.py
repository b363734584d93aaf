"""The comparison report: one markdown page (GitHub-flavoured) setting the variants side by side.

`render` takes plain values and returns the text; the figures it links to are drawn by
`imgpipe.reporting.figures` into reports/figures/ beside it.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from imgpipe import paths
from imgpipe.evaluation.results import VariantResult, choose
from imgpipe.evaluation.stats import CONFIDENCE, RESAMPLES, PairedTest, most_confused, paired_tests


def _size(size: int) -> str:
    return f"{size / 1024:,.1f} KB" if size < 2**20 else f"{size / 2**20:,.1f} MB"


@dataclass(frozen=True)
class Column:
    heading: str
    source: str  # "train" or "test": the metrics file the value comes from
    key: str
    fmt: str | Callable[[object], str]
    higher: bool | None  # higher is better; None: no best
    interval: bool = False  # the file holds key_low and key_high too, shown beside the value


COLUMNS = [
    Column("test accuracy", "test", "accuracy", "{:.4f}", True, interval=True),
    Column("macro-F1", "test", "macro_f1", "{:.4f}", True, interval=True),
    Column("top-{k} accuracy", "test", "top_{k}_accuracy", "{:.4f}", True),
    Column("test ECE before scaling", "test", "ece_before_scaling", "{:.4f}", False),
    Column("test ECE", "test", "ece", "{:.4f}", False),
    Column("temperature", "train", "temperature", "{:.3f}", None),
    Column("val accuracy", "train", "val_accuracy", "{:.4f}", True),
    Column("parameters", "train", "parameters", "{:,}", False),
    Column("size on disk", "test", "model_bytes", _size, False),
    Column("train seconds", "train", "train_seconds", "{:.1f}", False),
    Column("images/s", "test", "images_per_second", "{:,.0f}", True),
    Column("test device", "test", "device", "{}", None),
    Column("epochs", "train", "epochs", "{}", None),
]


def _top_k(results: dict[str, VariantResult]) -> int | None:
    """The k of the top-k accuracy that evaluate measured (none when there are k classes or fewer)."""
    keys = {key for result in results.values() for key in result.test if key.startswith("top_")}
    return int(sorted(keys)[0].split("_")[1]) if keys else None


def comparison_table(results: dict[str, VariantResult]) -> str:
    """Every variant's figures in one table, the best of each column in bold, intervals in brackets."""
    k = _top_k(results)
    columns = [replace(c, heading=c.heading.format(k=k), key=c.key.format(k=k))
               for c in COLUMNS if k is not None or "{k}" not in c.key]
    # Figures older metrics files lack (calibration before imgpipe measured it) leave their column out.
    columns = [c for c in columns if all(c.key in getattr(r, c.source) for r in results.values())]
    first = next(iter(results.values()))
    text_columns = {c.heading for c in columns if isinstance(getattr(first, c.source)[c.key], str)}
    lines = [
        "| variant | model | " + " | ".join(column.heading for column in columns) + " |",
        "|---|---|" + "".join("---|" if column.heading in text_columns else "---:|" for column in columns),
    ]
    best = {}
    for column in columns:
        if column.higher is not None and len(results) > 1:
            values = [getattr(r, column.source)[column.key] for r in results.values()]
            best[column.heading] = _shown(column, max(values) if column.higher else min(values))
    for variant, result in results.items():
        cells = []
        for column in columns:
            figures = getattr(result, column.source)
            text = _shown(column, figures[column.key])
            if column.heading in best and best[column.heading] == text:  # what reads the same is marked the same
                text = f"**{text}**"
            if column.interval:
                text += f" ({_interval(figures, column.key)})"
            cells.append(text)
        lines.append(f"| {variant} | {result.train['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shown(column: Column, value) -> str:
    return column.fmt(value) if callable(column.fmt) else column.fmt.format(value)


def _interval(figures: dict, key: str) -> str:
    return f"{figures[f'{key}_low']:.3f}–{figures[f'{key}_high']:.3f}"


def _p(p_value: float) -> str:
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def _listed(names: list[str], last: str = "and") -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {last} {names[-1]}"


def verdict(test: PairedTest) -> str:
    return f"real at the {test.level:.0%} level: {test.better} is better" if test.real else "cannot be told apart"


def differences_section(tests: list[PairedTest], test_images: int) -> str:
    """McNemar's test for every pair of variants, and in words which differences are real."""
    if not tests:
        return "A single variant: nothing to compare."
    level = tests[0].level
    lines = [
        f"Each pair of variants on the same {test_images} test images, by McNemar's exact test: only the images "
        "exactly one of the two gets right tell them apart, and p is the chance of a split at least this uneven "
        f"if the two were equally accurate. The {len(tests)} pair{'s are' if len(tests) > 1 else ' is'} tested "
        "together with Holm's correction, so that the chance of calling any difference real by luck alone stays "
        f"below {level:.0%}; the verdict reads the adjusted p.",
        "",
        "| first | second | only first right | only second right | p | Holm-adjusted p | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for test in tests:
        lines.append(f"| {test.first} | {test.second} | {test.only_first_right} | {test.only_second_right} | "
                     f"{_p(test.p_value)} | {_p(test.adjusted_p_value)} | {verdict(test)} |")
    return "\n".join(lines + ["", _differences_in_words(tests, test_images)])


def _differences_in_words(tests: list[PairedTest], test_images: int) -> str:
    """The real differences in as few clauses as they allow: grouped by the better variant ("cnn is better than
    linear and centroid") or by the worse one ("linear, mlp and cnn are each better than centroid")."""
    by_winner: dict[str, list[str]] = {}
    by_loser: dict[str, list[str]] = {}
    for test in tests:
        if test.real:
            by_winner.setdefault(test.better, []).append(test.other(test.better))
            by_loser.setdefault(test.other(test.better), []).append(test.better)
    if not by_winner:
        return (f"No two variants can be told apart on these {test_images} images: the differences in the "
                "table above are within what chance alone gives.")
    if len(by_loser) < len(by_winner):
        clauses = [f"{_listed(winners)} {'are each' if len(winners) > 1 else 'is'} better than {loser}"
                   for loser, winners in by_loser.items()]
    else:
        clauses = [f"{winner} is better than {_listed(losers)}" for winner, losers in by_winner.items()]
    ties = sum(not test.real for test in tests)
    rest = f"The other {ties} pair{'s' if ties > 1 else ''} cannot be told apart." if ties else "Every pair differs for real."
    return "; ".join(clauses) + ". " + rest


def standing(best: str, tests: list[PairedTest]) -> str:
    """Where the chosen variant stands against each other one on the test images, in words."""
    mine = [test for test in tests if best in (test.first, test.second)]
    beaten = [test.other(best) for test in mine if test.better == best]
    ties = [test.other(best) for test in mine if not test.real]
    ahead = [test.other(best) for test in mine if test.real and test.better != best]
    every = len(mine) > 1
    parts = []
    if beaten:
        parts.append("is better than every other variant" if every and len(beaten) == len(mine)
                     else f"is better than {_listed(beaten)}")
    if ties:
        parts.append("cannot be told apart from any other variant" if every and len(ties) == len(mine)
                     else f"cannot be told apart from {_listed(ties, 'or')}")
    if ahead:
        parts.append(f"is worse than {_listed(ahead)}")
    return "it " + _listed(parts)


# The figures summarized over seeds: name in metrics/variants.json -> (metrics file, key)
OVER_SEEDS = {"val_accuracy": ("train", "val_accuracy"), "test_accuracy": ("test", "accuracy"),
              "test_macro_f1": ("test", "macro_f1")}


def seed_summary(by_seed: dict[int, VariantResult]) -> dict[str, float | int | None]:
    """A variant's figures over its seeds: mean and sample standard deviation (None for one seed)."""
    summary: dict[str, float | int | None] = {"seeds": len(by_seed)}
    for name, (source, key) in OVER_SEEDS.items():
        values = np.array([getattr(result, source)[key] for result in by_seed.values()], dtype=np.float64)
        summary[f"{name}_mean"] = float(values.mean())
        summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
    return summary


def _spread(summary: dict, name: str) -> str:
    std = summary[f"{name}_std"]
    return f"{summary[f'{name}_mean']:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def seeds_section(runs: dict[str, dict[int, VariantResult]]) -> str:
    """Each variant's mean ± standard deviation over its seeds, then every seed's own figures."""
    lines = ["| variant | seeds | val accuracy | test accuracy | macro-F1 |", "|---|---:|---:|---:|---:|"]
    for variant, by_seed in runs.items():
        summary = seed_summary(by_seed)
        lines.append(f"| {variant} | {summary['seeds']} | " + " | ".join(_spread(summary, name) for name in OVER_SEEDS) + " |")
    lines += ["", "| variant | seed | val accuracy | test accuracy | macro-F1 |", "|---|---:|---:|---:|---:|"]
    for variant, by_seed in runs.items():
        for seed, result in by_seed.items():
            lines.append(f"| {variant} | {seed} | {result.train['val_accuracy']:.4f} | {result.test['accuracy']:.4f} | "
                         f"{result.test['macro_f1']:.4f} |")
    return "\n".join(lines)


def class_f1_table(results: dict[str, VariantResult]) -> str:
    """F1 per class (rows) and variant (columns), with each class's test images."""
    first = next(iter(results.values())).classes
    lines = ["| class | test images | " + " | ".join(results) + " |", "|---|---:|" + "---:|" * len(results)]
    for row, name in enumerate(first["class"]):  # a class without test images has no recall: no F1 worth a number
        scores = [f"{result.classes['f1'].iloc[row]:.3f}" if first["support"].iloc[row] else "n/a" for result in results.values()]
        lines.append(f"| {name} | {first['support'].iloc[row]} | " + " | ".join(scores) + " |")
    return "\n".join(lines)


def confusion_section(variant: str, result: VariantResult) -> str:
    """The confusion image, the top confusions, and the count table folded away."""
    names = tuple(str(name) for name in result.confusion.columns)
    pairs = most_confused(result.confusion.to_numpy(), names)
    top = "; ".join(f"{actual} taken for {predicted} ({count}x)" for actual, predicted, count in pairs)
    return "\n".join([
        f"### {variant}",
        "",
        f"![confusion matrix of {variant}]({_link(f'confusion_{variant}')})",
        "",
        f"Most confused (actual taken for predicted): {top or 'none, every test image is right'}.",
        "",
        "<details><summary>Counts (rows: actual, columns: predicted)</summary>",
        "",
        _count_table(result.confusion),
        "",
        "</details>",
        "",
    ])


def _count_table(confusion: pd.DataFrame) -> str:
    """(pandas' to_markdown would need the optional `tabulate` package.)"""
    lines = ["| actual \\ predicted | " + " | ".join(map(str, confusion.columns)) + " |",
             "|---|" + "---:|" * len(confusion.columns)]
    for name, row in confusion.iterrows():
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def data_card_section(card: dict) -> str:
    """The dataset at a glance: size, statistics, and images per class in each split."""
    height, width = card["image_size"]
    channels = card["channels"]
    mean = ", ".join(f"{m:.4f}" for m in card["mean"])
    std = ", ".join(f"{s:.4f}" for s in card["std"])
    splits = card["splits"]
    lines = [
        f"{len(card['classes'])} classes, {height}x{width} images with {channels} channel{'s' if channels > 1 else ''}; "
        + " / ".join(f"{info['images']} {split}" for split, info in splits.items())
        + f" images. Normalization (train split, pixels scaled to 0..1): mean {mean}, std {std}.",
        "",
        "| class | " + " | ".join(splits) + " |",
        "|---|" + "---:|" * len(splits),
    ]
    for name in card["classes"]:
        lines.append(f"| {name} | " + " | ".join(str(info["per_class"][name]) for info in splits.values()) + " |")
    decisions = card.get("decisions", [])  # what fetch decided from the data itself, e.g. the channel count
    if decisions:
        lines += ["", "Decided from the data: " + "; ".join(decisions) + "."]
    lines += [""] + [f"> **Warning:** {flag}." for flag in card["flagged"]]
    return "\n".join(lines)


def run_card(card: dict, results: dict[str, VariantResult]) -> str:
    """Where these results came from; card holds params_hash, commit, dirty, experiment, versions, mlflow_experiment."""
    devices = ", ".join(sorted({r.train["device"] for r in results.values()}))
    commit = card["commit"][:12] or "not a git repository"
    lines = [
        "| | |",
        "|---|---|",
        f"| params hash | `{card['params_hash']}` |",
        f"| git commit | `{commit}`{' with uncommitted changes' if card['dirty'] else ''} |",
        f"| DVC experiment | {card['experiment'] or 'none (dvc repro)'} |",
        f"| training device | {devices} |",
        "| versions | " + ", ".join(f"{name} {version}" for name, version in card["versions"].items()) + " |",
        f"| MLflow | experiment `{card['mlflow_experiment']}`, one run per variant and seed (ids: `{paths.MLFLOW_RUNS.relative_to(paths.ROOT).as_posix()}`) |",
    ]
    return "\n".join(lines)


def calibration_section(results: dict[str, VariantResult]) -> list[str]:
    """The reliability diagram and how to read it; nothing for results measured before calibration was."""
    if any(result.reliability is None or "ece" not in result.test for result in results.values()):
        return []
    return [
        "## Calibration",
        "",
        "Is a confidence of 0.99 worth 0.99? A model's confidence is its largest softmax probability; on the test "
        "images, cut into 15 equal-width confidence bins, a calibrated model is right as often as it is confident. "
        "The expected calibration error (ECE) is the gap between the two, averaged over the images. Temperature "
        "scaling divides every class score by one number T > 0, fitted on the validation split by minimizing its "
        "negative log-likelihood: it changes the confidences, never the predicted class. The checkpoint and the "
        "MLflow model carry T, so `predict`, the served model and the figures above (test loss included) use the "
        "scaled confidences. A fitted model (centroid) keeps T = 1: it fits its own scale on the training split. So "
        "does a model right on every validation image, which leaves nothing to fit T on (its NLL falls without end as "
        "T goes to 0).",
        "",
        f"![reliability diagrams before and after temperature scaling]({_link('reliability')})",
        "",
        "Bars: accuracy per confidence bin after scaling; grey outline: before; the diagonal is perfect calibration.",
        "",
    ]


def _link(figure: str) -> str:
    """The report's relative link to one of its figures."""
    return paths.figure(figure).relative_to(paths.REPORTS).as_posix()


def headline(dataset: str, card: dict, runs: dict[str, dict[int, VariantResult]], results: dict[str, VariantResult]) -> list[str]:
    """The title and the model the run puts forward, chosen on validation (imgpipe.evaluation.results.choose,
    as the registry's candidate is), with its test figures and where it stands against the other variants' runs
    shown below (results)."""
    seeds = len(next(iter(runs.values())))
    choice = choose({variant: {seed: r.train for seed, r in by_seed.items()} for variant, by_seed in runs.items()})
    best, chosen = choice.variant, runs[choice.variant][choice.seed]
    # The chosen seed's answers (the report stage shows each variant's seed best on validation below: the same ones).
    tests = paired_tests({variant: (chosen if variant == best else result).correct for variant, result in results.items()})
    over_seeds = (f" Over its {seeds} seeds: val accuracy {_spread(seed_summary(runs[best]), 'val_accuracy')}, "
                  f"test accuracy {_spread(seed_summary(runs[best]), 'test_accuracy')} (mean ± standard deviation)."
                  if seeds > 1 else "")
    compared = (f" On these images {standing(best, tests)} (McNemar's exact test with Holm's correction, at the "
                f"{tests[0].level:.0%} level; see below)." if tests else "")
    ci = f"{CONFIDENCE:.0%} CI"
    return [
        f"# imgpipe report: {dataset}",
        "",
        f"Best on validation: **{best}** (val accuracy {chosen.train['val_accuracy']:.4f} on "
        f"{card['splits']['val']['images']} images, val loss {chosen.train['val_loss']:.4f}"
        + (f"; seed {choice.seed}, its best" if seeds > 1 else "") + "). "
        f"On the {card['splits']['test']['images']} test images it scores {chosen.test['accuracy']:.4f} accuracy "
        f"({ci} {_interval(chosen.test, 'accuracy')}), macro-F1 {chosen.test['macro_f1']:.4f} "
        f"({ci} {_interval(chosen.test, 'macro_f1')}).{compared}{over_seeds} The variant is chosen on the validation "
        "split" + (" (its mean over the seeds)" if seeds > 1 else "") + "; test figures are shown, never used to choose.",
        "",
    ]


def saliency_section(methods: dict[str, str]) -> list[str]:
    """Where each variant looked, in the images drawn by evaluate (metrics/saliency/); methods: variant -> method."""
    if not methods:
        return []
    lines = ["## Where the models looked", "",
             "Each test image with a heat map laid over it (red: where the predicted class's score depends most on the "
             "image; for HiResCAM, what raised it most): first the "
             "right answers (each class's most confident), then the most confident mistakes. A model that looks at a "
             "watermark, a border or the background instead of the object shows it here. Networks with convolutions get "
             "HiResCAM on the output of their last convolution's block (Draelos & Carin, 2020: the activations times the "
             "score's gradient, place by place; Grad-CAM's channel averages can cancel behind a flatten head); the others, "
             "which have no spatial layer, the "
             "size of the score's gradient with respect to each pixel. Each map is scaled to its own maximum.", ""]
    for variant, method in methods.items():
        lines += [f"### {variant}", "", f"{method[0].upper()}{method[1:]}.", "",
                  f"![where {variant} looked]({_link(f'saliency_{variant}')})", ""]
    return lines


def label_issues_section(summary: dict | None, table: pd.DataFrame | None) -> list[str]:
    """The possibly mislabelled images: how many, where, the surest of them, and what to do about them."""
    if summary is None:
        return []
    by_split = ", ".join(f"{count} in {split}" for split, count in summary["by_split"].items())
    classes = {name: count for name, count in summary["by_class"].items() if count}
    lines = ["## Possibly mislabelled", "",
             f"Model problem or label problem? {summary['method']} The judges are {summary['folds'] * summary['repeats']} "
             f"{summary['judged_by']} models ({summary['cross_fit_epochs']} epochs each; {summary['repeats']} cross-fitting(s) of "
             f"{summary['folds']} folds of all the images), each trained on the other folds less an eighth, on which it picks its "
             "epoch and temperature.", "",
             f"**{summary['issues']}** of {summary['images']:,} images are flagged ({by_split}). "
             f"`{paths.LABEL_ISSUES.relative_to(paths.ROOT).as_posix()}` lists them first, then the "
             f"{summary['listed'] - summary['issues']} most suspicious others, each part by label quality ({summary['quality']}), "
             "lowest first."]
    if classes:
        lines += ["", "| given class | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes),
                  "| flagged | " + " | ".join(str(count) for count in classes.values()) + " |"]
    if table is not None and len(table):
        lines += ["", "| id | split | given | likely | p(given) | p(likely) | flagged |", "|---|---|---|---|---:|---:|---|"]
        lines += [f"| {row.id} | {row.split} | {row.given} | {row.suggested} | {row.given_probability:.3f} | "
                  f"{row.suggested_probability:.3f} | {'yes' if row.flagged else 'no'} |" for row in table.head(10).itertuples()]
        lines += ["", f"![the first {len(table)} listed]({_link('label_issues')})"]
    lines += ["", "A listed image is worth a look, not proof: a wrong label, an ambiguous image, or a model's blind spot. "
              "To train without the ones you judge mislabelled, list their ids in the file `data.exclude` names "
              "(`excluded.txt`) and run again: only the training split loses them, so both runs are scored on the same "
              "test images (`dvc exp show`, `dvc metrics diff`).", ""]
    return lines


def comparison_sections(results: dict[str, VariantResult], runs: dict[str, dict[int, VariantResult]],
                        tests: list[PairedTest], test_images: int) -> list[str]:
    """The variants side by side, which of their differences are real, and their spread over the seeds."""
    seeds, first_seed = len(next(iter(runs.values()))), next(iter(next(iter(runs.values()))))
    ci = f"{CONFIDENCE:.0%} CI"
    return [
        "## Variants",
        "",
        comparison_table(results),
        "",
        f"In brackets: {ci}s on the test images, Wilson's score interval for accuracy and a percentile bootstrap "
        f"over the test images ({RESAMPLES:,} resamples) for macro-F1. Bold marks the best value of each column, "
        "not a difference that is real: the next section tells those apart. Val accuracy is that of the kept "
        "weights (the most accurate validation epoch). Images/s: inference on the test split's first images (64 MB of "
        "them at most), in batches of up to 1,024 (16 MB of float32 input), on the test device; train seconds: the whole training, its validation after each epoch included, on the training device in the run card. Size on disk: the checkpoint file.",
        "",
        "## Which differences are real",
        "",
        differences_section(tests, test_images),
        "",
        "## Seeds",
        "",
        f"Each variant is trained once per seed of `train.seeds` ({seeds} here); the headline's model is its variant's "
        f"seed best on validation, the other sections show seed {first_seed}, the first. Mean ± sample standard "
        "deviation over the seeds, then every seed:",
        "",
        seeds_section(runs),
        "",
    ]


def per_variant_sections(results: dict[str, VariantResult]) -> list[str]:
    """Training curves, confusion matrices, F1 per class and the most confident mistakes of each variant."""
    sections = [
        "## Training curves",
        "",
        f"![loss and accuracy per epoch]({_link('curves')})",
        "",
        "Dashed: training split; solid: validation split. A fitted model (centroid) has a single point.",
        "",
        "## Confusion matrices",
        "",
        "Cells count test images; shading is the share of the actual class (the row).",
        "",
        *[confusion_section(variant, result) for variant, result in results.items()],
        "## F1 per class",
        "",
        class_f1_table(results),
        "",
        "## Misclassified test images",
        "",
        "The most confident mistakes first: true class, predicted class and the model's confidence.",
        "",
    ]
    for variant in results:
        sections += [f"### {variant}", "", f"![misclassified by {variant}]({_link(f'misclassified_{variant}')})", ""]
    return sections


def render(dataset: str, card: dict, results: dict[str, VariantResult], provenance: dict,
           runs: dict[str, dict[int, VariantResult]] | None = None, *, saliency: dict[str, str] | None = None,
           label_issues: tuple[dict, pd.DataFrame] | None = None) -> str:
    """results: each variant's run shown in detail (its seed best on validation); runs: every variant's run per seed;
    saliency: the method of each variant's saliency maps (figures saliency_<variant>); label_issues: the summary, the
    list and how many of it the figure label_issues shows."""
    runs = runs or {variant: {0: result} for variant, result in results.items()}
    tests = paired_tests({variant: result.correct for variant, result in results.items()})
    sections = [
        *headline(dataset, card, runs, results),
        *comparison_sections(results, runs, tests, card["splits"]["test"]["images"]),
        *calibration_section(results),
        *per_variant_sections(results),
        *saliency_section(saliency or {}),
        *label_issues_section(*(label_issues or (None, None))),
        "## Data",
        "",
        data_card_section(card),
        "",
        f"![training images per class]({_link('samples')})",
        "",
        "## Run card",
        "",
        run_card(provenance, results),
        "",
    ]
    return "\n".join(sections)
