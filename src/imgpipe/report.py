"""The comparison report: one markdown page setting the variants side by side."""

COLUMNS = [  # (heading, where the value comes from, format, higher is better)
    ("test accuracy", ("test", "accuracy"), "{:.4f}", True),
    ("val accuracy", ("train", "val_accuracy"), "{:.4f}", True),
    ("parameters", ("train", "parameters"), "{:,}", False),
    ("train seconds", ("train", "train_seconds"), "{:.1f}", False),
    ("epochs", ("train", "epochs"), "{}", None),
]


def comparison_table(results: dict[str, dict[str, dict]]) -> str:
    """results[variant] = {"train": train metrics, "test": test metrics}; the best of each column in bold."""
    lines = [
        "| variant | model | " + " | ".join(heading for heading, *_ in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    best = {}
    for heading, (source, key), _, higher in COLUMNS:
        if higher is not None:
            values = [r[source][key] for r in results.values()]
            best[heading] = max(values) if higher else min(values)
    for variant, result in results.items():
        cells = []
        for heading, (source, key), fmt, _ in COLUMNS:
            value = result[source][key]
            text = fmt.format(value)
            cells.append(f"**{text}**" if best.get(heading) == value and len(results) > 1 else text)
        lines.append(f"| {variant} | {result['train']['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(dataset: str, stats: dict, results: dict[str, dict[str, dict]]) -> str:
    mean = ", ".join(f"{m:.4f}" for m in stats["mean"])
    std = ", ".join(f"{s:.4f}" for s in stats["std"])
    channels, height, width = stats["image_shape"]
    counts = stats["counts"]
    best = max(results, key=lambda v: results[v]["test"]["accuracy"])
    return "\n".join([
        f"# imgpipe report: {dataset}",
        "",
        f"{len(stats['class_names'])} classes ({', '.join(stats['class_names'])}), "
        f"{height}x{width} images with {channels} channel{'s' if channels > 1 else ''}; "
        f"{counts['train']} train / {counts['val']} val / {counts['test']} test images. "
        f"Normalization (train split): mean {mean}, std {std}.",
        "",
        "## Variants",
        "",
        comparison_table(results),
        "",
        f"Best on the {counts['test']} test images: **{best}** ({results[best]['test']['accuracy']:.4f}); "
        "bold marks the best value of each column. Training ran on "
        + ", ".join(sorted({r["train"]["device"] for r in results.values()})) + ".",
        "",
    ])
