"""The report's figures: drawn without a display, labels legible and nothing overlapping."""

import string

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from imgpipe.data.imageset import ImageSet
from imgpipe.reporting import figures

LETTERS = tuple(f"{letter}{'-sign' * (i % 3)}" for i, letter in enumerate(string.ascii_uppercase))  # 26 classes


def drawn(figure):
    """The figure laid out and drawn, and the renderer that measured it."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    return renderer


def no_overlaps(boxes, axis: int) -> bool:
    """Consecutive boxes along x (0) or y (1) do not overlap."""
    spans = sorted((box.x0, box.x1) if axis == 0 else (box.y0, box.y1) for box in boxes)
    return all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def test_a_26_class_confusion_matrix_stays_readable(tmp_path):
    counts = np.random.default_rng(0).integers(0, 1000, size=(26, 26))  # 3-digit counts in every cell
    figure = figures.confusion(counts, LETTERS, "cnn: confusion matrix")
    renderer = drawn(figure)
    ax = figure.axes[0]
    cell = ax.transData.transform((1, 1)) - ax.transData.transform((0, 0))
    cell_width, cell_height = abs(cell[0]), abs(cell[1])
    assert len(ax.texts) == np.count_nonzero(counts)
    for text in ax.texts:  # every count fits inside its cell
        box = text.get_window_extent(renderer)
        assert box.width < cell_width and box.height < cell_height
    assert [label.get_text() for label in ax.get_xticklabels()] == list(LETTERS)
    assert [label.get_text() for label in ax.get_yticklabels()] == list(LETTERS)
    assert no_overlaps([label.get_window_extent(renderer) for label in ax.get_xticklabels()], axis=0)
    assert no_overlaps([label.get_window_extent(renderer) for label in ax.get_yticklabels()], axis=1)
    figures.save(figure, tmp_path / "confusion.png")
    with Image.open(tmp_path / "confusion.png") as image:
        assert image.format == "PNG" and min(image.size) > 26 * 30  # at least 30 pixels per class


def images_of(classes: int, per_class: int, shape=(3, 12, 16)) -> ImageSet:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(classes), per_class)
    return ImageSet(rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8), labels, LETTERS[:classes])


def test_sample_grid_has_a_captioned_row_per_class(tmp_path):
    images = images_of(classes=5, per_class=3)  # fewer than asked for: the row is padded
    figure = figures.sample_grid(images, per_class=4)
    drawn(figure)
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == list(LETTERS[:5])
    mosaic = ax.get_images()[0].get_array()
    assert mosaic.shape[0] > 5 * 12 and mosaic.shape[1] > 4 * 16  # 5 rows, 4 columns of 12x16 images
    first = images.images[0].transpose(1, 2, 0)
    assert any(np.array_equal(mosaic[top:top + 12, :16], first) for top in range(mosaic.shape[0] - 12))
    figures.save(figure, tmp_path / "samples.png")


def test_misclassified_grid_captions_every_image():
    images = images_of(classes=3, per_class=4, shape=(1, 8, 8))
    rows = [(0, "A", "B-sign", 0.91), (5, "B-sign", "C-sign-sign", 0.5), (9, "C-sign-sign", "A", 0.34)]
    figure = figures.misclassified(images, rows, columns=2)
    drawn(figure)
    captions = [text.get_text() for text in figure.axes[0].texts]
    assert captions == ["true A\npred B-sign (91%)", "true B-sign\npred C-sign-sign (50%)", "true C-sign-sign\npred A (34%)"]
    assert "no misclassified" in figures.misclassified(images, []).texts[0].get_text()


def test_curves_put_every_variant_on_shared_axes(tmp_path):
    def curve(values):
        return pd.DataFrame({"epoch": range(1, len(values) + 1), "train": values, "val": values})

    tables = {"centroid": {"loss": curve([2.0]), "accuracy": curve([0.9])},
              "cnn": {"loss": curve([1.0, 0.5, 0.2]), "accuracy": curve([0.5, 0.8, 0.9])}}
    figure = figures.curves(tables)
    loss_ax, accuracy_ax = figure.axes
    assert loss_ax.get_yscale() == "log" and loss_ax.get_shared_x_axes().joined(loss_ax, accuracy_ax)
    assert len(accuracy_ax.lines) == 4  # train and val for each variant
    assert [text.get_text() for text in figure.legends[0].get_texts()][:2] == ["centroid", "cnn"]
    figures.save(figure, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("classes", [2, 10])
def test_small_confusion_matrices_keep_a_readable_size(classes):
    figure = figures.confusion(np.eye(classes, dtype=int) * 5, LETTERS[:classes], "t")
    assert min(figure.get_size_inches()) >= 4
