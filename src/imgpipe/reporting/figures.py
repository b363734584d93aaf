"""The report's figures, drawn with matplotlib's object API (no pyplot, no display needed).

Each function returns a Figure; `save` writes it as a PNG. Images are stored as raw uint8 pixels
(normalization lives inside the model), so they are shown exactly as they were read.
"""

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from imgpipe.data.imageset import ImageSet

DPI = 100
CELL_INCHES = 0.45  # side of one confusion-matrix cell: room for a 3-digit count up to 26 classes
TILE_INCHES = 0.9  # side of one image in the sample and mistake grids
CHARACTER_POINTS = 4.8  # width of a character of the captions' 8-point type, about


def save(figure: Figure, path: Path) -> None:
    # Tight bounding box: rotated class names and captions are never cut off at the edges.
    figure.savefig(path, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)


def _mosaic(images: np.ndarray, columns: int, gap: tuple[int, int]) -> np.ndarray:
    """Images (N, C, H, W) tiled row by row into one (H', W', C) picture on a white ground, with
    `gap` (rows, columns) pixels between tiles: one imshow draws fast where an axes per image would not."""
    count, channels, height, width = images.shape
    rows = -(-count // columns)
    canvas = np.full((rows * (height + gap[0]), columns * (width + gap[1]), channels), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = (i // columns) * (height + gap[0]) + gap[0], (i % columns) * (width + gap[1])
        canvas[top:top + height, left:left + width] = image.transpose(1, 2, 0)
    return canvas


def _draw(ax, canvas: np.ndarray) -> None:
    if canvas.shape[2] == 1:
        ax.imshow(canvas[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def sample_grid(images: ImageSet, per_class: int = 8, seed: int = 0) -> Figure:
    """A row of randomly drawn training images per class, the class name at the start of its row."""
    rng = np.random.default_rng(seed)
    _, height, width = images.image_shape
    tiles = []
    for label in range(len(images.class_names)):
        members = np.flatnonzero(images.labels == label)
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        row = np.full((per_class, *images.image_shape), 255, dtype=np.uint8)  # a short class leaves blanks
        row[:len(chosen)] = images.images[chosen]
        tiles.append(row)
    gap = (max(1, height // 8), max(1, width // 8))
    canvas = _mosaic(np.concatenate(tiles), per_class, gap)
    scale = TILE_INCHES / max(height, width)  # inches per pixel
    figure = Figure(figsize=(canvas.shape[1] * scale + 1.2, canvas.shape[0] * scale + 0.6))
    ax = figure.add_axes((0, 0, 1, 1))
    _draw(ax, canvas)
    ax.set_yticks([gap[0] + r * (height + gap[0]) + height / 2 for r in range(len(tiles))], images.class_names, fontsize=11)
    ax.tick_params(left=False)
    ax.set_title(f"Training images, {per_class} per class (as stored, before normalization)", fontsize=12)
    return figure


def curves(tables: dict[str, dict[str, pd.DataFrame]]) -> Figure:
    """Loss and accuracy per epoch, train (dashed) and validation (solid), every variant on shared axes.
    tables[variant][measure]: the curve as written by training (columns epoch, train, val)."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    loss_ax, accuracy_ax = figure.subplots(1, 2, sharex=True)
    for i, (variant, measures) in enumerate(tables.items()):
        color = f"C{i % 10}"
        for ax, measure in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
            curve = measures[measure]
            marker = "o" if len(curve) == 1 else None  # a fitted model has a single epoch: show it as a point
            ax.plot(curve["epoch"], curve["train"], color=color, linestyle="--", marker=marker, alpha=0.7)
            ax.plot(curve["epoch"], curve["val"], color=color, marker=marker, label=variant)
    loss_ax.set(title="Loss (log scale)", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    accuracy_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (loss_ax, accuracy_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = accuracy_ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", linestyle="--"), Line2D([], [], color="gray")]
    labels += ["train (dashed)", "validation (solid)"]
    figure.legend(handles, labels, loc="outside right center")
    return figure


def confusion(counts: np.ndarray, class_names: tuple[str, ...], title: str) -> Figure:
    """The confusion matrix: counts in the cells (empty cells left blank), shaded by the share of
    the actual class, so rows of small and large classes read alike."""
    n = len(class_names)
    side = max(4.0, n * CELL_INCHES + 1.5)
    figure = Figure(figsize=(side, side))
    ax = figure.subplots()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = 10 if n <= 12 else 8
    for (actual, predicted), count in np.ndenumerate(counts):
        if count:
            color = "white" if shares[actual, predicted] > 0.5 else "black"
            ax.text(predicted, actual, str(count), ha="center", va="center", fontsize=fontsize, color=color)
    long_names = max(len(name) for name in class_names) > 2
    ax.set_xticks(range(n), class_names, rotation=90 if long_names else 0, fontsize=fontsize)
    ax.set_yticks(range(n), class_names, fontsize=fontsize)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    return figure


def misclassified(images: ImageSet, rows: list[tuple[int, str, str, float]], columns: int = 8) -> Figure:
    """Test images a model got wrong, each captioned with its true and predicted class and the
    model's confidence; rows are (index in the split, actual, predicted, confidence)."""
    if not rows:
        return _nothing("no misclassified test images")
    tiles = images.images[[index for index, *_ in rows]]
    return _captioned(tiles, [f"true {actual}\npred {predicted} ({confidence:.0%})" for _, actual, predicted, confidence in rows],
                      columns)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An image (C, H, W) uint8 with C 1, 3 or 4, blended with the jet colours of heat (H, W) in [0, 1]:
    (H, W, 3) uint8. Each pixel's blend weight is alpha x heat, so where heat is 0 the image shows as is."""
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"image must be (C, H, W) with C 1, 3 or 4, got shape {image.shape}")
    if heat.shape != image.shape[1:]:
        raise ValueError(f"heat {heat.shape} must have the image's height and width {image.shape[1:]}")
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]  # alpha channel dropped
    rgb = rgb.transpose(1, 2, 0).astype(np.float64)  # (H, W, 3)
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0, 1)
    colour = matplotlib.colormaps["jet"](heat)[..., :3] * 255  # (H, W, 3)
    weight = alpha * heat[..., None]
    return np.clip(np.rint(rgb * (1 - weight) + colour * weight), 0, 255).astype(np.uint8)


def explained(images: ImageSet, index: np.ndarray, heat: np.ndarray, captions: list[str], columns: int = 8) -> Figure:
    """Where a model looked: each test image with its saliency map laid over it (red: most), captioned."""
    if not len(index):
        return _nothing("no test images to explain")
    tiles = np.stack([overlay(images.images[i], map_ / 255) for i, map_ in zip(index, heat)]).transpose(0, 3, 1, 2)
    return _captioned(tiles, captions, columns)


def labelled(tiles: np.ndarray | None, captions: list[str], columns: int = 8) -> Figure:
    """Images (N, C, H, W) with a two-line caption each (the possibly mislabelled ones: id, given -> likely)."""
    if tiles is None or not len(tiles):
        return _nothing("no possibly mislabelled images")
    return _captioned(tiles, captions, columns)


def _nothing(text: str) -> Figure:
    figure = Figure(figsize=(4, 0.6))
    figure.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    return figure


def _captioned(tiles: np.ndarray, captions: list[str], columns: int) -> Figure:
    """Tiles (N, C, H, W) in rows, a two-line caption above each."""
    _, _, height, width = tiles.shape
    columns = min(columns, len(tiles))
    scale = TILE_INCHES / max(height, width)  # inches per pixel
    caption = int(np.ceil(0.5 * height))  # room above each tile for a two-line caption
    # Wide enough for the longest caption line (8-point type: about 4.8 points a character): no overlap.
    widest = max(len(line) for text in captions for line in text.split("\n")) * CHARACTER_POINTS / 72 / scale
    gap = (caption, max(2, int(0.35 * width), int(np.ceil(widest - width)) + 2))
    canvas = _mosaic(tiles, columns, gap)
    figure = Figure(figsize=(canvas.shape[1] * scale, canvas.shape[0] * scale))
    ax = figure.add_axes((0, 0, 1, 1))
    _draw(ax, canvas)
    for i, text in enumerate(captions):
        x = (i % columns) * (width + gap[1]) + width / 2 - 0.5
        y = (i // columns) * (height + gap[0]) + gap[0] - 1
        ax.text(x, y, text, ha="center", va="bottom", fontsize=8)
    return figure


def reliability(tables: dict[str, pd.DataFrame], ece: dict[str, tuple[float, float]], columns: int = 4) -> Figure:
    """Reliability diagrams, one panel per variant: accuracy per confidence bin after temperature scaling (bars)
    and before it (grey outline), against the diagonal of perfect calibration. tables[variant]: the bins as
    evaluate writes them (scaling, lower, upper, images, accuracy, confidence); ece[variant]: (before, after)."""
    columns = min(columns, len(tables))
    rows = -(-len(tables) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, (variant, table) in zip(axes, tables.items()):
        for scaling, style in (("after", {"color": "C0", "alpha": 0.8, "label": "after scaling"}),
                               ("before", {"fill": False, "edgecolor": "0.4", "linewidth": 1.2, "label": "before"})):
            bins = table[table["scaling"] == scaling]
            ax.bar(bins["lower"], bins["accuracy"], width=bins["upper"] - bins["lower"], align="edge", **style)
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8)
        before, after = ece[variant]
        ax.set_title(f"{variant}: ECE {before:.3f} → {after:.3f}", fontsize=10)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
    for ax in axes[len(tables):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("accuracy")
    for ax in axes[(rows - 1) * columns:]:
        ax.set_xlabel("confidence")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2)
    return figure
