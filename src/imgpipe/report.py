"""The comparison report: one markdown page (GitHub-flavoured) setting the variants side by side.

`render` takes plain values and returns the text; the figures it links to are drawn by
`imgpipe.figures` into reports/figures/ beside it.
"""

from dataclasses import dataclass

import pandas as pd

from imgpipe import paths
from imgpipe.scores import most_confused
from imgpipe.selection import best_on_validation


@dataclass(frozen=True)
class VariantResult:
    train: dict  # metrics/train/<variant>.json
    test: dict  # metrics/test/<variant>.json
    classes: pd.DataFrame  # metrics/classes/<variant>.csv: class, precision, recall, f1, support
    confusion: pd.DataFrame  # metrics/confusion/<variant>.csv: counts, actual classes as the index


def _size(size: int) -> str:
    return f"{size / 1024:,.1f} KB" if size < 2**20 else f"{size / 2**20:,.1f} MB"


COLUMNS = [  # (heading, where the value comes from, format, higher is better; None: no best)
    ("test accuracy", ("test", "accuracy"), "{:.4f}", True),
    ("macro-F1", ("test", "macro_f1"), "{:.4f}", True),
    ("top-{k} accuracy", ("test", "top_{k}_accuracy"), "{:.4f}", True),
    ("val accuracy", ("train", "val_accuracy"), "{:.4f}", True),
    ("parameters", ("train", "parameters"), "{:,}", False),
    ("size on disk", ("test", "model_bytes"), _size, False),
    ("train seconds", ("train", "train_seconds"), "{:.1f}", False),
    ("images/s", ("test", "images_per_second"), "{:,.0f}", True),
    ("test device", ("test", "device"), "{}", None),
    ("epochs", ("train", "epochs"), "{}", None),
]


def _top_k(results: dict[str, VariantResult]) -> int | None:
    """The k of the top-k accuracy that evaluate measured (none when there are k classes or fewer)."""
    keys = {key for result in results.values() for key in result.test if key.startswith("top_")}
    return int(sorted(keys)[0].split("_")[1]) if keys else None


def comparison_table(results: dict[str, VariantResult]) -> str:
    """Every variant's figures in one table, the best of each column in bold."""
    k = _top_k(results)
    columns = [(heading.format(k=k), (source, key.format(k=k)), fmt, higher)
               for heading, (source, key), fmt, higher in COLUMNS if k is not None or "{k}" not in key]
    lines = [
        "| variant | model | " + " | ".join(heading for heading, *_ in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    best = {}
    for heading, (source, key), _, higher in columns:
        if higher is not None and len(results) > 1:
            values = [getattr(r, source)[key] for r in results.values()]
            best[heading] = max(values) if higher else min(values)
    for variant, result in results.items():
        cells = []
        for heading, (source, key), fmt, _ in columns:
            value = getattr(result, source)[key]
            text = fmt(value) if callable(fmt) else fmt.format(value)
            cells.append(f"**{text}**" if heading in best and best[heading] == value else text)
        lines.append(f"| {variant} | {result.train['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def class_f1_table(results: dict[str, VariantResult]) -> str:
    """F1 per class (rows) and variant (columns), with each class's test images."""
    first = next(iter(results.values())).classes
    lines = ["| class | test images | " + " | ".join(results) + " |", "|---|---:|" + "---:|" * len(results)]
    for row, name in enumerate(first["class"]):
        scores = [f"{result.classes['f1'].iloc[row]:.3f}" for result in results.values()]
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
    """Where these results came from; card holds params_hash, commit, dirty, experiment, versions."""
    devices = ", ".join(sorted({r.train["device"] for r in results.values()}))
    commit = card["commit"][:12] or "not a git repository"
    runs = ", ".join(f"{variant} `{r.train['mlflow_run_id']}`" for variant, r in results.items() if r.train["mlflow_run_id"])
    lines = [
        "| | |",
        "|---|---|",
        f"| params hash | `{card['params_hash']}` |",
        f"| git commit | `{commit}`{' with uncommitted changes' if card['dirty'] else ''} |",
        f"| DVC experiment | {card['experiment'] or 'none (dvc repro)'} |",
        f"| training device | {devices} |",
        "| versions | " + ", ".join(f"{name} {version}" for name, version in card["versions"].items()) + " |",
        f"| MLflow runs | {runs or 'not tracked'} |",
    ]
    return "\n".join(lines)


def _link(figure: str) -> str:
    """The report's relative link to one of its figures."""
    return paths.figure(figure).relative_to(paths.REPORTS).as_posix()


def render(dataset: str, card: dict, results: dict[str, VariantResult], provenance: dict) -> str:
    best = best_on_validation({variant: result.train for variant, result in results.items()})
    chosen = results[best]
    test_images = card["splits"]["test"]["images"]
    sections = [
        f"# imgpipe report: {dataset}",
        "",
        f"Best on validation: **{best}** (val accuracy {chosen.train['val_accuracy']:.4f} on "
        f"{card['splits']['val']['images']} images, val loss {chosen.train['val_loss']:.4f}). "
        f"On the {test_images} test images it scores {chosen.test['accuracy']:.4f} accuracy, "
        f"macro-F1 {chosen.test['macro_f1']:.4f}. The variant is chosen on the validation split; "
        "test figures are shown, never used to choose.",
        "",
        "## Variants",
        "",
        comparison_table(results),
        "",
        "Bold marks the best value of each column. Val accuracy is that of the kept weights (the most accurate "
        "validation epoch). Images/s: inference on the test split, in batches of 1,024, on the test device; "
        "train seconds: on the training device in the run card. Size on disk: the checkpoint file.",
        "",
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
    sections += [
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
