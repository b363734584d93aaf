"""What the served model reads from a request: image files (base64) and pixel arrays become the images
prepare would make of them. The real `mlflow models serve` answers in test_tracking_server."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgpipe.errors import ImgpipeError
from imgpipe.serving import read_request
from imgpipe.sources.image_folder import decode

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


@pytest.mark.parametrize("payload, message", [
    (pd.DataFrame({"pixels": [1]}), "the request's table has no 'image' column (it has pixels)"),
    ({"picture": ["x"]}, "the request has no 'image' field (it has picture)"),
    (pd.DataFrame({"image": [_encoded(Image.new("L", (8, 8))), base64.b64encode(b"GIF89a?").decode()]}), "image 1: not a readable image"),
    ([[[0.5, 0.25]]], "the request's pixels are not whole numbers 0..255"),
    ([[[300, 0]]], "the request's pixels are not whole numbers 0..255"),
    ([1, 2, 3], "the request's pixels are int64 of shape (3,)"),
    ([[[0, 0]], [[0]]], "the request's pixel arrays differ in shape"),
])
def test_a_bad_request_fails_in_one_line_naming_what_is_wrong(payload, message):
    with pytest.raises(ImgpipeError) as error:
        read_request(payload, (1, 8, 8), WHITE)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
