"""What the served model reads from a request: image files (base64) and pixel arrays become the images
prepare would make of them. The real `mlflow models serve` answers in test_tracking_server."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
from datafiles import png_header
from PIL import Image

from imgpipe.data.decode import decode
from imgpipe.errors import ImgpipeError
from imgpipe.serving.model import read_request

WHITE = (255, 255, 255)


def _encoded(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_files_are_read_as_prepare_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")  # transparency, another size
    grey = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L")
    rgba.save(tmp_path / "rgba.png")
    grey.save(tmp_path / "grey.jpg")
    request = pd.DataFrame({"image": [_encoded(rgba), _encoded(grey, "JPEG")]})
    images = read_request(request, (3, 16, 16), (0, 128, 0))
    assert images.dtype == np.uint8 and images.shape == (2, 3, 16, 16)
    assert np.array_equal(images[0], decode(tmp_path / "rgba.png", 3, (16, 16), (0, 128, 0)))
    assert np.array_equal(images[1], decode(tmp_path / "grey.jpg", 3, (16, 16), (0, 128, 0)))
    # `instances` and `inputs` with a field arrive as a dict of arrays.
    assert np.array_equal(read_request({"image": np.array(request["image"])}, (3, 16, 16), (0, 128, 0)), images)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_pixel_arrays_in_any_layout_give_the_same_images(layout):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    pixels = {"NHW": grey, "NHWC": grey[..., None], "NCHW": grey[:, None]}[layout]
    images = read_request(pixels.astype(np.int64).tolist(), (1, 8, 8), WHITE)  # as JSON lists arrive: int64
    assert np.array_equal(images, grey[:, None])
    colour = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    assert np.array_equal(read_request(colour, (3, 4, 4), WHITE),
                          np.stack([decode(_file(image), 3, (4, 4), WHITE) for image in colour]))


def _file(image: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer


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
    (pd.DataFrame({"image": [GOOD] * 1025}), "the request holds 1,025 images, more than 1,024 (IMGPIPE_SERVE_MAX_IMAGES)"),
    ([[[0.5, 0.25]]], "image 0: pixels must be whole numbers 0..255, found 0.5"),
    ([[[0, 0]], [[300, 0]]], "image 1: pixels must be whole numbers 0..255, found 300"),
    ([1, 2, 3], "the request's pixels are int64 of shape (3,)"),
    ([[[0, 0]], [[0]]], "the request's pixel arrays differ in shape"),
])
def test_a_bad_request_fails_in_one_line_naming_what_is_wrong(payload, message):
    with pytest.raises(ImgpipeError) as error:
        read_request(payload, (1, 8, 8), WHITE)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert "object at 0x" not in str(error.value) and "remove or replace" not in str(error.value)  # advice for folders, not requests


def test_a_base64_file_with_line_breaks_is_read():
    wrapped = "\n".join(GOOD[i:i + 76] for i in range(0, len(GOOD), 76))  # as `base64` writes without -w0
    assert read_request(pd.DataFrame({"image": [wrapped]}), (1, 8, 8), WHITE).shape == (1, 1, 8, 8)


def test_the_refusal_stays_one_line_when_the_scoring_server_prefixes_the_payload():
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    from imgpipe.serving.model import RefusedRequest

    refused = RefusedRequest("image 0: not base64 text", error_code=BAD_REQUEST)
    refused.message = f"Failed to predict data '{'x' * 1000}'. \nError: {refused.message}"  # what MLflow's server does
    assert refused.message == "image 0: not base64 text" and refused.get_http_status_code() == 400
