"""The model each run logs, and `mlflow models serve` serves: a trained network as a torch.export program
(traced on the CPU in eval mode; loading it needs neither the checkpoint nor unpickling the network)
behind an MLflow pyfunc that takes images as a client has them and answers with class names:

    mlflow models serve -m models:/imgpipe-digits@champion --env-manager local --port 5001
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d "{\\"dataframe_records\\": [{\\"image\\": \\"$(base64 -w0 digit.png)\\"}]}"

Accepted payloads, one image per row:
- `{"dataframe_records": [{"image": "<base64 PNG/JPEG/...>"}, ...]}` (or `dataframe_split`, `instances`
  with an `image` field): encoded image files, of any size and mode;
- `{"inputs": [...]}`: uint8 pixel arrays, (N, H, W) grey or (N, H, W, C) / (N, C, H, W) with C 1, 3 or 4.
Every image goes through prepare's preprocessing, as in predict: the model's channel count and size,
transparency laid on its background colour. The answer is predict's table, one row per image:
`predicted`, `confidence`, then the next best classes `top2`, `top2_confidence`, ... The confidences are
calibrated: the exported network divides its scores by the temperature fitted on the validation split
(imgpipe.models.networks.Classifier), which `preprocessing.json` records too.

The model computes on the serving machine's accelerator where it has one: IMGPIPE_SERVE_DEVICE, in the serving
process's environment, says where (auto, the default: cuda, else mps, else cpu; or cuda, mps, cpu).

A request it cannot answer gets HTTP 400 with one line naming the image and what is wrong with it (not a
readable image file, too many pixels, not base64, pixels outside 0..255 or of the wrong shape). Limits, in
the serving process's environment: IMGPIPE_SERVE_MAX_IMAGES (images per request, default 1,024) and
IMGPIPE_SERVE_MAX_PIXELS (pixels per image file, default 50,000,000: a 12-megapixel photo passes, a
decompression bomb does not).
"""

import base64
import binascii
import io
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from PIL import Image
from torch.export.passes import move_to_device_pass

from imgpipe.data.decode import conform, decode
from imgpipe.device import pick_device
from imgpipe.errors import ImgpipeError, InvalidSetting
from imgpipe.serving.answer import top_classes
from imgpipe.serving.preprocessing import Preprocessing

PROGRAM, PREPROCESSING = "program", "preprocessing"  # the model's artifacts: its torch.export program, a JSON file
TOP_K = 3  # classes per image in the answer, as predict's default
MAX_IMAGES, MAX_PIXELS = 1024, 50_000_000  # defaults of IMGPIPE_SERVE_MAX_IMAGES and IMGPIPE_SERVE_MAX_PIXELS
SERVE_DEVICE = "IMGPIPE_SERVE_DEVICE"  # where the model computes: auto (cuda, else mps, else cpu), cuda, mps or cpu


def _limit(variable: str, default: int) -> int:
    value = os.environ.get(variable, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ImgpipeError(f"{variable}: must be a whole number >= 1, got {value!r}")
    return int(value)


class RefusedRequest(MlflowException):
    """HTTP 400 with one line. MLflow's scoring server rewrites the message of an MlflowException raised in
    predict to begin with the whole request ("Failed to predict data '<payload>'"): this one keeps its first."""

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):
            self._line = value


def serving_device() -> torch.device:
    """The device IMGPIPE_SERVE_DEVICE names (default auto); one line naming the variable if it cannot be had."""
    try:
        return pick_device(os.environ.get(SERVE_DEVICE, "auto"))
    except InvalidSetting as error:
        raise ImgpipeError(f"{SERVE_DEVICE}: {error.reason}") from None


class Exported(torch.nn.Module):
    """A torch.export program as a plain module, on the device it was moved to (traced on the CPU, it is moved
    whole, constants and device arguments too: move_to_device_pass). Such a program takes
    neither eval() nor to(), so it is held outside the module tree."""

    def __init__(self, program: torch.export.ExportedProgram, device: torch.device):
        super().__init__()
        if device.type != "cpu":
            program = move_to_device_pass(program, device)
        self.device = device
        self._program = [program.module()]  # a list: not a child module, so eval() and to() leave it alone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._program[0](pixels.to(self.device))


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The served model: the network, and the preprocessing its images need."""

    # MLflow wants predict's type hints, to infer a schema and check requests against it; a request comes
    # in two forms (image files, pixel arrays) that no one schema states, and read_request checks it.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.network = Exported(torch.export.load(context.artifacts[PROGRAM]), serving_device())
        self.preprocessing = Preprocessing.read(Path(context.artifacts[PREPROCESSING]))
        # Read as the server starts: a bad value stops it in one line, rather than refusing every client's request.
        self.max_images = _limit("IMGPIPE_SERVE_MAX_IMAGES", MAX_IMAGES)
        self.max_pixels = _limit("IMGPIPE_SERVE_MAX_PIXELS", MAX_PIXELS)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            images = read_request(model_input, self.preprocessing.image_shape, self.preprocessing.background,
                                  max_images=self.max_images, max_pixels=self.max_pixels)
        except ImgpipeError as error:
            raise RefusedRequest(str(error), error_code=BAD_REQUEST) from None
        return top_classes(self.network, images, self.preprocessing.class_names, TOP_K, self.network.device)


def read_request(payload, image_shape: tuple[int, int, int], background: tuple[int, int, int], *,
                 max_images: int = MAX_IMAGES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A request's images, as the parsed payload MLflow hands a pyfunc, as uint8 (N, C, H, W)."""
    channels, height, width = image_shape
    if isinstance(payload, pd.DataFrame):
        if "image" not in payload.columns:
            raise ImgpipeError(f"the request's table has no 'image' column (it has {', '.join(map(str, payload.columns))}); "
                               "send base64-encoded image files under 'image'")
        payload = payload["image"].tolist()
    elif isinstance(payload, dict):
        if "image" not in payload:
            raise ImgpipeError(f"the request has no 'image' field (it has {', '.join(payload)})")
        payload = payload["image"]
    if isinstance(payload, np.ndarray) and payload.ndim == 0:  # MLflow's parse of one value: {"inputs": {"image": "<base64>"}}
        payload = payload.item()
    if not isinstance(payload, (list, tuple, np.ndarray)):  # one image sent as a single value, not in a list
        payload = [payload]
    if len(payload) > max_images:
        raise ImgpipeError(f"the request holds {len(payload):,} images, more than {max_images:,} "
                           "(IMGPIPE_SERVE_MAX_IMAGES); send them in several requests")
    # Encoded image files where any row holds text (a row without its image is then named by _bytes), else pixel arrays.
    if any(isinstance(item, (str, bytes)) for item in payload):
        return np.stack([decode(io.BytesIO(_bytes(item, row)), channels, (height, width), background, name=f"image {row}",
                                max_pixels=max_pixels) for row, item in enumerate(payload)])
    return np.stack([conform(image, channels, (height, width), background) for image in _pixel_images(payload, channels)])


def _bytes(item: str | bytes, row: int) -> bytes:
    if isinstance(item, bytes):
        return item
    if not isinstance(item, str):  # a row without its image (a table's NaN), or a number among files
        raise ImgpipeError(f"image {row}: missing or not text ({type(item).__name__}); send every image file base64-encoded")
    try:
        return base64.b64decode("".join(item.split()), validate=True)  # line breaks allowed (base64 without -w0)
    except (binascii.Error, ValueError):
        raise ImgpipeError(f"image {row}: not base64 text (send each image file base64-encoded)") from None


def _pixel_images(payload, channels: int) -> list[Image.Image]:
    """uint8 arrays as PIL images: (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    try:
        pixels = np.asarray(payload)
    except ValueError:
        raise ImgpipeError("the request's pixel arrays differ in shape; send images of one shape per request") from None
    if pixels.dtype.kind not in "iuf" or pixels.ndim not in (3, 4):
        raise ImgpipeError(f"the request's pixels are {pixels.dtype} of shape {pixels.shape}; "
                           "send uint8 (N, H, W), (N, H, W, C) or (N, C, H, W) arrays, or base64 image files under 'image'")
    wrong = (pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))
    if wrong.any():
        row = int(np.argmax(wrong.reshape(len(pixels), -1).any(1)))
        raise ImgpipeError(f"image {row}: pixels must be whole numbers 0..255, found {pixels[row][wrong[row]].flat[0].item()} "
                           "(send uint8 values, not normalized ones)")
    pixels = pixels.astype(np.uint8)
    if pixels.ndim == 3 and len(pixels) and pixels.shape[-1] in (3, 4):
        raise ImgpipeError(f"the request's pixels have shape {pixels.shape}: one colour image without its batch axis, or "
                           f"greyscale images {pixels.shape[-1]} pixels wide? Send (1, H, W, {pixels.shape[-1]}) for one image")
    if pixels.ndim == 4 and pixels.shape[1] in (1, 3, 4) and (pixels.shape[-1] not in (1, 3, 4)
                                                              or pixels.shape[1] == channels != pixels.shape[-1]):
        pixels = pixels.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C); both readable: the model's channels decide
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise ImgpipeError(f"the request's pixel arrays have shape {pixels.shape}: images with no pixels")
    if pixels.ndim == 4:
        if pixels.shape[-1] not in (1, 3, 4):
            raise ImgpipeError(f"the request's pixel arrays have shape {pixels.shape}; their channels must be 1, 3 or 4")
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    return [Image.fromarray(image) for image in pixels]
