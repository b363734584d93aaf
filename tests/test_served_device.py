"""Where the served model computes: on the serving machine's accelerator where it has one (IMGPIPE_SERVE_DEVICE:
auto, or a device the server's environment names), the exported program moved there whole."""

import types

import numpy as np
import pytest
import torch

from imgpipe.errors import ImgpipeError
from imgpipe.models.networks import Classifier, build_model
from imgpipe.serving import export
from imgpipe.serving.model import SERVE_DEVICE, Exported, ImageClassifier, serving_device
from imgpipe.serving.preprocessing import Preprocessing

CLASSES = tuple("0123456789")
PREPROCESSING = Preprocessing(class_names=CLASSES, image_shape=(1, 8, 8), background=(255, 255, 255), temperature=1.0)
IMAGES = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)  # (N, H, W, C) pixel arrays


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, str]:
    torch.manual_seed(0)
    model = Classifier(build_model("cnn", (1, 8, 8), 10, channels=[4]), (0.3,), (0.4,)).eval()
    return export.artifacts(model, np.zeros((2, 1, 8, 8), dtype=np.uint8), PREPROCESSING, tmp_path_factory.mktemp("served"))


def served(artifacts: dict[str, str]) -> ImageClassifier:
    model = ImageClassifier()
    model.load_context(types.SimpleNamespace(artifacts=artifacts))
    return model


def _has(monkeypatch, cuda: bool, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_auto_serves_on_the_accelerator_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv(SERVE_DEVICE, raising=False)
    _has(monkeypatch, cuda=True)
    assert serving_device() == torch.device("cuda")
    _has(monkeypatch, cuda=False, mps=True)
    assert serving_device() == torch.device("mps")
    _has(monkeypatch, cuda=False)
    assert serving_device() == torch.device("cpu")
    _has(monkeypatch, cuda=True)
    monkeypatch.setenv(SERVE_DEVICE, "cpu")
    assert serving_device() == torch.device("cpu")


@pytest.mark.parametrize("value, reason", [("gpu", "unknown device 'gpu'; choose one of: auto, cuda, mps, cpu"),
                                           ("cuda", "cuda was asked for but is not available on this machine; use auto")])
def test_a_device_it_cannot_have_is_one_line_naming_the_variable(monkeypatch, artifacts, value, reason):
    _has(monkeypatch, cuda=False)
    monkeypatch.setenv(SERVE_DEVICE, value)
    with pytest.raises(ImgpipeError) as error:
        served(artifacts)
    assert str(error.value) == f"{SERVE_DEVICE}: {reason}"


def test_the_program_traced_on_the_cpu_moves_whole_to_the_device(artifacts):
    """On the meta device (shapes, no data) a program left on the CPU fails: its weights and constants are not there."""
    network = Exported(torch.export.load(artifacts["program"]), torch.device("meta"))
    logits = network(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy()))
    assert logits.device.type == "meta" and logits.shape == (5, 10)
    with pytest.raises(RuntimeError, match="device"):
        torch.export.load(artifacts["program"]).module()(torch.zeros((1, 1, 8, 8), dtype=torch.uint8, device="meta"))


def test_served_on_the_cpu_where_there_is_no_accelerator(monkeypatch, artifacts):
    _has(monkeypatch, cuda=False)
    monkeypatch.delenv(SERVE_DEVICE, raising=False)
    model = served(artifacts)
    assert model.network.device == torch.device("cpu")
    assert len(model.predict(None, {"image": IMAGES})) == 5
    # One image: the program was traced on two, and its batch dimension is dynamic down to one.
    assert model.predict(None, {"image": IMAGES[:1]})["predicted"].tolist() == model.predict(None, {"image": IMAGES})["predicted"].tolist()[:1]


@pytest.mark.parametrize("variable", ["IMGPIPE_SERVE_MAX_IMAGES", "IMGPIPE_SERVE_MAX_PIXELS"])
def test_a_bad_request_limit_stops_the_server_as_it_starts(monkeypatch, artifacts, variable):
    """Not a refusal of every client's request later, as if each client were at fault."""
    monkeypatch.setenv(variable, "many")
    with pytest.raises(ImgpipeError) as error:
        served(artifacts)
    assert str(error.value) == f"{variable}: must be a whole number >= 1, got 'many'"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_served_on_the_gpu_answers_as_on_the_cpu(monkeypatch, artifacts):
    monkeypatch.delenv(SERVE_DEVICE, raising=False)
    on_gpu = served(artifacts)
    monkeypatch.setenv(SERVE_DEVICE, "cpu")
    on_cpu = served(artifacts)
    assert on_gpu.network.device.type == "cuda" and on_cpu.network.device.type == "cpu"
    gpu, cpu = on_gpu.predict(None, {"image": IMAGES}), on_cpu.predict(None, {"image": IMAGES})
    assert gpu["predicted"].tolist() == cpu["predicted"].tolist()
    assert gpu["confidence"].tolist() == pytest.approx(cpu["confidence"].tolist(), abs=1e-4)
