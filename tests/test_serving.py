"""What the served model reads from a request: image files (base64) and pixel arrays become the images
prepare would make of them. The real `mlflow models serve` answers in test_tracking_server."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
from datafiles import png_header
from PIL import Image

from imgpipe.errors import ImgpipeError
from imgpipe.serving.model import read_request

WHITE = (255, 255, 255)


def _encoded(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_files_become_the_pixels_they_hold():
    """Files whose pixels are known: transparency laid on the background, grey spread to 3 channels, colour
    to grey by ITU-R 601-2 luma, a resize that keeps flat regions flat; values worked out by hand."""
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:8, :8] = (255, 0, 0, 255)  # opaque red
    rgba[:8, 8:] = (9, 9, 9, 0)  # fully transparent: the background (0, 128, 0)
    rgba[8:] = (200, 40, 0, 128)  # half transparent: 200 * 128/255 = 100.4, 40 * 128/255 + 128 * 127/255 = 83.8
    halves = np.zeros((32, 32), dtype=np.uint8)
    halves[:, 16:] = 200  # grey, left half black, twice the size asked for
    flat_grey = Image.new("L", (8, 8), 77)  # a JPEG of one grey level, half the size asked for
    request = pd.DataFrame({"image": [_encoded(Image.fromarray(rgba, "RGBA")), _encoded(Image.fromarray(halves, "L")),
                                      _encoded(flat_grey, "JPEG")]})
    images = read_request(request, (3, 16, 16), (0, 128, 0))
    assert images.dtype == np.uint8 and images.shape == (3, 3, 16, 16)
    assert (images[0][:, :8, :8] == np.array([255, 0, 0])[:, None, None]).all()
    assert (images[0][:, :8, 8:] == np.array([0, 128, 0])[:, None, None]).all()
    assert (np.abs(images[0][:, 8:].astype(int) - np.array([100, 84, 0])[:, None, None]) <= 1).all()
    assert (images[1] == images[1][0]).all()  # grey: three equal channels
    assert (images[1][0][:, :7] == 0).all() and (images[1][0][:, 9:] == 200).all()  # 16 columns: 0 left, 200 right
    assert ((0 < images[1][0][:, 7:9]) & (images[1][0][:, 7:9] < 200)).all()  # and the edge between them, blended
    assert (np.abs(images[2].astype(int) - 77) <= 1).all()  # JPEG: within a level
    # `instances` and `inputs` with a field arrive as a dict of arrays.
    assert np.array_equal(read_request({"image": np.array(request["image"])}, (3, 16, 16), (0, 128, 0)), images)

    quarters = np.zeros((8, 8, 3), dtype=np.uint8)
    quarters[:4, :4], quarters[:4, 4:], quarters[4:, :4], quarters[4:, 4:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (100, 150, 200)
    grey = read_request(pd.DataFrame({"image": [_encoded(Image.fromarray(quarters, "RGB"))]}), (1, 8, 8), WHITE)[0, 0]
    # L = 0.299 R + 0.587 G + 0.114 B: 76.2, 149.7, 29.1, 140.75
    assert (grey[:4, :4] == 76).all() and (grey[:4, 4:] == 150).all() and (grey[4:, :4] == 29).all()
    assert (np.abs(grey[4:, 4:].astype(int) - 141) <= 1).all()


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_pixel_arrays_in_any_layout_give_the_same_images(layout):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    pixels = {"NHW": grey, "NHWC": grey[..., None], "NCHW": grey[:, None]}[layout]
    images = read_request(pixels.astype(np.int64).tolist(), (1, 8, 8), WHITE)  # as JSON lists arrive: int64
    assert np.array_equal(images, grey[:, None])
    colour = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)  # (N, C, H, W), as prepare stores images
    sent = colour.transpose(0, 2, 3, 1) if layout == "NHWC" else colour
    if layout != "NHW":
        assert np.array_equal(read_request(sent.astype(np.int64).tolist(), (3, 8, 8), WHITE), colour)
    flat = np.broadcast_to(np.array([[10, 20, 30], [200, 100, 0]], dtype=np.uint8)[:, :, None, None], (2, 3, 8, 8))
    assert np.array_equal(read_request(flat, (3, 4, 4), WHITE),  # resized, a flat colour stays that colour
                          np.broadcast_to(flat[:, :, :1, :1], (2, 3, 4, 4)))


def test_tiny_channels_first_images_are_read_by_the_model_s_channels():
    """(N, 3, 4, 4): channels first or 3x4 images of 4 channels? The model takes 3 channels: channels first."""
    colour = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    assert np.array_equal(read_request(colour, (3, 4, 4), WHITE), colour)


def test_transparent_pixel_arrays_are_laid_on_the_background():
    rgba = np.zeros((1, 8, 8, 4), dtype=np.uint8)
    rgba[0, :, :4] = (30, 60, 90, 255)  # left half opaque, right half transparent
    images = read_request(rgba, (3, 8, 8), (0, 128, 0))
    assert (images[0][:, :, :4] == np.array([30, 60, 90])[:, None, None]).all()
    assert (images[0][:, :, 4:] == np.array([0, 128, 0])[:, None, None]).all()


def _png_header(width: int, height: int) -> str:
    return base64.b64encode(png_header(width, height)).decode()


GOOD = _encoded(Image.new("L", (8, 8)))


@pytest.mark.parametrize("payload, message", [
    (pd.DataFrame({"pixels": [1]}), "the request's table has no 'image' column (it has pixels)"),
    ({"picture": ["x"]}, "the request has no 'image' field (it has picture)"),
    (pd.DataFrame({"image": [GOOD, base64.b64encode(b"GIF89a?").decode()]}), "image 1: not a readable image file (cannot identify image file)"),
    (pd.DataFrame({"image": [GOOD, _png_header(10_000, 8_000)]}), "image 1: too many pixels (10000x8000, more than 50,000,000)"),
    (pd.DataFrame({"image": [_png_header(20_000, 20_000)]}), "image 0: too many pixels (400,000,000 pixels, more than 178,956,970"),
    (pd.DataFrame({"image": ["this is not base64!"]}), "image 0: not base64 text (send each image file base64-encoded)"),
    (pd.DataFrame.from_records([{"image": GOOD}, {}]), "image 1: missing or not text (float); send every image file base64"),
    ({"image": [GOOD, 7]}, "image 1: missing or not text (int); send every image file base64-encoded"),
    (pd.DataFrame.from_records([{}, {"image": GOOD}]), "image 0: missing or not text (float); send every image file base64"),
    ({"image": np.array(7)}, "the request's pixels are int64 of shape (1,)"),
    (pd.DataFrame({"image": [GOOD] * 1025}), "the request holds 1,025 images, more than 1,024 (IMGPIPE_SERVE_MAX_IMAGES)"),
    ([[[0.5, 0.25]]], "image 0: pixels must be whole numbers 0..255, found 0.5"),
    ([[[0, 0]], [[300, 0]]], "image 1: pixels must be whole numbers 0..255, found 300"),
    ([1, 2, 3], "the request's pixels are int64 of shape (3,)"),
    ([[[0, 0]], [[0]]], "the request's pixel arrays differ in shape"),
    (np.zeros((16, 16, 3), np.uint8), "the request's pixels have shape (16, 16, 3): one colour image without its batch axis"),
    ([[[]]], "the request's pixel arrays have shape (1, 1, 0): images with no pixels"),
])
def test_a_bad_request_fails_in_one_line_naming_what_is_wrong(payload, message):
    with pytest.raises(ImgpipeError) as error:
        read_request(payload, (1, 8, 8), WHITE)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert "object at 0x" not in str(error.value) and "remove or replace" not in str(error.value)  # advice for folders, not requests


def test_one_image_sent_as_a_single_value_is_read():
    """MLflow parses {"inputs": {"image": "<base64>"}} and {"inputs": "<base64>"} into 0-d arrays: one image."""
    for payload in ({"image": np.array(GOOD)}, np.array(GOOD), {"image": GOOD}):
        assert read_request(payload, (1, 8, 8), WHITE).shape == (1, 1, 8, 8)


def test_a_base64_file_with_line_breaks_is_read():
    wrapped = "\n".join(GOOD[i:i + 76] for i in range(0, len(GOOD), 76))  # as `base64` writes without -w0
    assert read_request(pd.DataFrame({"image": [wrapped]}), (1, 8, 8), WHITE).shape == (1, 1, 8, 8)


def test_the_refusal_stays_one_line_when_the_scoring_server_prefixes_the_payload():
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    from imgpipe.serving.model import RefusedRequest

    refused = RefusedRequest("image 0: not base64 text", error_code=BAD_REQUEST)
    refused.message = f"Failed to predict data '{'x' * 1000}'. \nError: {refused.message}"  # what MLflow's server does
    assert refused.message == "image 0: not base64 text" and refused.get_http_status_code() == 400
