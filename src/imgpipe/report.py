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
        + f" images. Normalization (train split): mean {mean}, std {std}.",
        "",
        "| class | " + " | ".join(splits) + " |",
        "|---|" + "---:|" * len(splits),
    ]
    for name in card["classes"]:
        lines.append(f"| {name} | " + " | ".join(str(info["per_class"][name]) for info in splits.values()) + " |")
    lines += [""] + [f"> **Warning:** {flag}." for flag in card["flagged"]]
    return "\n".join(lines)


def render(dataset: str, card: dict, results: dict[str, dict[str, dict]]) -> str:
    best = max(results, key=lambda v: results[v]["test"]["accuracy"])
    devices = ", ".join(sorted({r["train"]["device"] for r in results.values()}))
    return "\n".join([
        f"# imgpipe report: {dataset}",
        "",
        "## Variants",
        "",
        comparison_table(results),
        "",
        f"Best on the {card['splits']['test']['images']} test images: **{best}** "
        f"({results[best]['test']['accuracy']:.4f}); bold marks the best value of each column. "
        f"Training ran on {devices}.",
        "",
        "## Data",
        "",
        data_card_section(card),
        "",
    ])
