"""Image files decoded at the size they are used: a large JPEG at a reduced scale (draft), alike in fetch,
predict and the served model; other formats as before; a decompression bomb refused in one line."""

import base64
import sys

import numpy as np
import pandas as pd
import pytest
from datafiles import png_header
from PIL import Image

from imgpipe.config import DataConfig
from imgpipe.data import decode as decoding
from imgpipe.data.decode import decode
from imgpipe.data.imageset import save_fetched
from imgpipe.data.sources import fetch, fetch_dataset
from imgpipe.errors import ImgpipeError
from imgpipe.predict import read_images
from imgpipe.serving.model import read_request

image_folder = sys.modules["imgpipe.data.sources.image_folder"]  # the package names its function so too
WHITE = (255, 255, 255)


def _photo(height: int = 1200, width: int = 1600, seed: int = 0) -> Image.Image:
    """Photo-like: a colour gradient, soft blobs drawn small and scaled up, and grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack([x / width * 200 + 30, y / height * 180 + 40, (1 - x / width) * 160 + 50], -1)
    blobs = np.asarray(Image.fromarray(rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
    pixels = 0.6 * gradient + 0.4 * blobs + rng.normal(0, 4, (height, width, 3))  # (H, W, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    _photo().save(path, quality=90)
    return path


def _decoded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The (width, height) of every image decode hands to conform: what the file was decoded at, before resizing."""
    sizes, conform = [], decoding.conform
    monkeypatch.setattr(decoding, "conform", lambda image, *args: sizes.append(image.size) or conform(image, *args))
    return sizes


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(224, 224), (48, 64), (300, 100)])
def test_a_large_jpeg_decoded_reduced_matches_a_full_decode_and_resize(photo_jpeg, channels, size):
    reduced = decode(photo_jpeg, channels, size, WHITE).astype(np.int16)
    full = decode(photo_jpeg, channels, size, WHITE, reduced=False).astype(np.int16)
    assert reduced.shape == full.shape == (channels, *size)
    difference = np.abs(reduced - full)
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 6  # DCT-domain scaling, not bit-identical


@pytest.mark.parametrize("size, decoded", [
    ((224, 224), (400, 300)),  # 1600x1200: 1/4 covers 224 both ways (1/8 would give 150 rows)
    ((100, 100), (200, 150)),  # 1/8, the smallest libjpeg has
    ((600, 800), (800, 600)),  # 1/2 exactly
    ((700, 100), (1600, 1200)),  # 700 rows: no reduction still covers them
    ((1200, 1600), (1600, 1200)),  # the file's own size
    (None, (1600, 1200)),  # no resize asked: decoded as it is
])
def test_a_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_size(photo_jpeg, monkeypatch, size, decoded):
    sizes = _decoded_sizes(monkeypatch)
    decode(photo_jpeg, 3, size, WHITE)
    decode(photo_jpeg, 3, size, WHITE, reduced=False)
    assert sizes == [decoded, (1600, 1200)]


def test_a_png_is_decoded_at_full_size_as_before(tmp_path, monkeypatch):
    _photo().save(tmp_path / "photo.png")
    sizes = _decoded_sizes(monkeypatch)
    for channels in (1, 3):
        assert np.array_equal(decode(tmp_path / "photo.png", channels, (224, 224), WHITE),
                              decode(tmp_path / "photo.png", channels, (224, 224), WHITE, reduced=False))
    assert sizes == [(1600, 1200)] * 4


@pytest.mark.parametrize("channels", [1, 3])
def test_fetch_predict_and_the_served_model_read_a_jpeg_alike(tmp_path, photo_jpeg, channels):
    (tmp_path / "photos" / "garden").mkdir(parents=True)
    file = tmp_path / "photos" / "garden" / "photo.jpg"
    file.write_bytes(photo_jpeg.read_bytes())
    shape, background = (channels, 56, 72), (0, 128, 0)
    fetched = fetch(DataConfig(dataset="imagefolder", path=tmp_path / "photos", channels=channels,
                               image_size=shape[1:], background=background))["train"].images[0]
    files, predicted, errors = read_images([file], shape, background)
    served = read_request(pd.DataFrame({"image": [base64.b64encode(file.read_bytes()).decode()]}), shape, background)
    assert files == [file] and not errors
    assert np.array_equal(fetched, predicted[0]) and np.array_equal(fetched, served[0])
    assert np.array_equal(fetched, decode(file, channels, shape[1:], background))
    assert not np.array_equal(fetched, decode(file, channels, shape[1:], background, reduced=False))  # reduced, all three


QUADRANTS = {(0, 0): (255, 0, 0), (0, 1): (0, 255, 0), (1, 0): (0, 0, 255), (1, 1): (255, 255, 0)}  # upright: red top left...
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}  # tag: upright -> stored


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_photo_comes_out_upright_as_its_exif_orientation_says(tmp_path, orientation):
    """A phone's portrait, stored on its side with a rotation tag: fetch, predict and the served model all see it upright."""
    upright = np.zeros((400, 300, 3), dtype=np.uint8)  # (H, W, C): a portrait of four coloured quadrants
    for (row, column), colour in QUADRANTS.items():
        upright[row * 200:(row + 1) * 200, column * 150:(column + 1) * 150] = colour
    stored = Image.fromarray(upright)
    if orientation in STORED_AS:
        stored = stored.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "photos" / "portraits").mkdir(parents=True)
    file = tmp_path / "photos" / "portraits" / "photo.jpg"
    stored.save(file, quality=95, exif=exif)
    assert Image.open(file).size == ((400, 300) if orientation in (6, 8) else (300, 400))  # as the phone stored it
    shape = (3, 40, 30)
    fetched = fetch(DataConfig(dataset="imagefolder", path=tmp_path / "photos", image_size=shape[1:]))["train"].images[0]
    served = read_request(pd.DataFrame({"image": [base64.b64encode(file.read_bytes()).decode()]}), shape, WHITE)[0]
    kept = fetch(DataConfig(dataset="imagefolder", path=tmp_path / "photos"))["train"].images[0]  # no image_size: its own
    assert kept.shape == (3, 400, 300)
    for image in (decode(file, 3, shape[1:], WHITE), read_images([file], shape, WHITE)[1][0], fetched, served):
        assert image.shape == shape
        for (row, column), colour in QUADRANTS.items():  # each quadrant's middle, well inside its edges
            middle = image[:, row * 20 + 5:row * 20 + 15, column * 15 + 4:column * 15 + 11].reshape(3, -1).mean(1)
            assert np.abs(middle - colour).max() < 30, (orientation, row, column, middle)


@pytest.mark.parametrize("channels", [None, 3])  # None: refused as fetch looks at every file's mode; 3: as it decodes
def test_a_decompression_bomb_fails_in_one_line_naming_the_file(tmp_path, channels):
    assert 20_000 * 20_000 > 2 * Image.MAX_IMAGE_PIXELS  # PIL's own limit, unchanged
    (tmp_path / "photos" / "a").mkdir(parents=True)
    bomb = tmp_path / "photos" / "a" / "bomb.png"
    bomb.write_bytes(png_header(20_000, 20_000))
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a" / "fine.png")
    expected = (f"{bomb}: too many pixels (400,000,000 pixels, more than {2 * Image.MAX_IMAGE_PIXELS:,}, "
                "PIL's guard against decompression bombs); shrink or remove it")
    with pytest.raises(ImgpipeError) as error:
        fetched = fetch_dataset(DataConfig(dataset="imagefolder", path=tmp_path / "photos", channels=channels, image_size=(8, 8)))
        save_fetched(fetched, tmp_path / "raw")
    assert str(error.value) == expected
    files, _, errors = read_images([bomb, tmp_path / "photos" / "a" / "fine.png"], (3, 8, 8), WHITE)
    assert len(files) == 1 and errors == [expected]
    with pytest.raises(ImgpipeError, match=r"^image 0: too many pixels \(400,000,000 pixels"):
        read_request({"image": [base64.b64encode(bomb.read_bytes()).decode()]}, (3, 8, 8), WHITE)


def test_the_decoding_pool_counts_bytes_as_well_as_files(tmp_path, monkeypatch):
    from imgpipe.data.sources.image_folder import pool_size

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    small = [tmp_path / f"small{i}.png" for i in range(300)]
    photos = [tmp_path / f"photo{i}.jpg" for i in range(12)]
    for file, size in [*((f, 2_000) for f in small), *((f, 3 * 2**20) for f in photos)]:
        with open(file, "wb") as handle:
            handle.truncate(size)  # sparse: the size is what counts
    assert pool_size(small) == 1  # 300 small files: a pool would cost more than it gathers
    assert pool_size(small * 2) == 2  # 600 files
    assert pool_size(photos) == 2  # 12 phone photos, 36 MB to decode
    assert pool_size(photos[:4]) == 1


@pytest.mark.parametrize("mode, key", [("L", 7), ("RGB", (7, 7, 7)), ("I;16", 7 * 257)])
def test_a_transparent_colour_key_is_laid_on_the_background(tmp_path, mode, key):
    """A PNG's tRNS key (one value fully transparent, as optimizers store on-or-off transparency) in a grayscale, RGB
    or 16-bit file: its pixels take the background colour, as an alpha channel's do; the others keep theirs."""
    pixels = np.full((4, 6), 7, np.uint8)
    pixels[1:3, 2:4] = 200  # an opaque square on a keyed field
    image = {"L": lambda: Image.fromarray(pixels, "L"), "RGB": lambda: Image.fromarray(np.repeat(pixels[..., None], 3, -1)),
             "I;16": lambda: Image.fromarray(pixels.astype(np.uint16) * 257)}[mode]()
    image.save(tmp_path / "keyed.png", transparency=key)
    assert Image.open(tmp_path / "keyed.png").info["transparency"] == key
    decoded = decode(tmp_path / "keyed.png", 3, None, (0, 128, 0))  # (C, H, W)
    assert decoded[:, 0, 0].tolist() == [0, 128, 0] and decoded[:, 1, 2].tolist() == [200, 200, 200]
    assert (decoded[1] == 128).sum() == 24 - 4


def test_a_16_bit_rgb_png_s_colour_key_is_laid_on_the_background_too(tmp_path):
    """PIL reads a 16-bit RGB PNG as 8-bit (each value's high byte) but keeps its tRNS key at 16 bits, which then
    matched no pixel. Written by hand here: PIL writes no 16-bit RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    keyed, white = (0x1234, 0x5678, 0x9ABC), (0xFFFF, 0xFFFF, 0xFFFF)
    row = b"\x00" + struct.pack(">6H", *keyed, *white)  # filter byte, then two 16-bit RGB pixels
    (tmp_path / "keyed16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
                                        + chunk(b"tRNS", struct.pack(">3H", *keyed)) + chunk(b"IDAT", zlib.compress(row))
                                        + chunk(b"IEND", b""))
    decoded = decode(tmp_path / "keyed16.png", 3, None, (0, 128, 0))
    assert decoded[:, 0, 0].tolist() == [0, 128, 0] and decoded[:, 0, 1].tolist() == [255, 255, 255]
