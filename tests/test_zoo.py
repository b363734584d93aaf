"""torchvision classifiers as variants, offline: from scratch, from a state_dict file or a pre-filled torch
cache, frozen or not; the checkpoint, predict, evaluate and the MLflow model give the same outputs."""

import urllib.error

import mlflow
import numpy as np
import pytest
import torch
import torchvision.models

from imgpipe.config import TrainConfig
from imgpipe.data.imageset import ImageSet
from imgpipe.data.prepared import Prepared
from imgpipe.errors import InvalidSetting
from imgpipe.evaluation.evaluate import evaluate
from imgpipe.models.checkpoint import load_checkpoint, save_checkpoint
from imgpipe.models.networks import build_model
from imgpipe.serving.answer import top_classes as predict
from imgpipe.serving.preprocessing import Preprocessing
from imgpipe.tracking import runs
from imgpipe.training.loop import train

CLASSES = ("circle", "square", "triangle")


def tiny_data(channels: int = 1, size: int = 16) -> Prepared:
    rng = np.random.default_rng(0)

    def split(n: int) -> ImageSet:
        return ImageSet(rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8), np.arange(n) % 3, CLASSES, None)

    return Prepared(split(24), split(6), split(6), (0.5,) * channels, (0.25,) * channels)


def saved_resnet18(path, seed: int = 1) -> dict:
    """A resnet18 state_dict as torchvision makes it (1,000 ImageNet classes), random but reproducible."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_a_torchvision_model_trains_from_scratch_on_grey_images_of_any_size():
    data = tiny_data(channels=1, size=16)
    config = TrainConfig(epochs=1, batch_size=8, device="cpu")
    torch.manual_seed(config.seed)  # as train() seeds before it builds: the same starting weights
    net = build_model("resnet18", data.image_shape, len(CLASSES))
    before = net.model.conv1.weight.clone()
    result = train("resnet18", {}, data, config)
    assert result.model.net.model.fc.out_features == 3  # the head, replaced for these classes
    assert not torch.equal(result.model.net.model.conv1.weight, before)  # the backbone learned too
    assert np.isfinite(result.summary()["train_loss"]) and result.summary()["parameters"] > 11_000_000
    assert net.input_size == (16, 16) and net.normalization is None  # from scratch: the data's size and statistics


def test_weights_from_a_state_dict_file_load_every_layer_but_the_head(tmp_path):
    state = saved_resnet18(tmp_path / "resnet18.pth")
    net = build_model("resnet18", (3, 32, 32), len(CLASSES), weights=str(tmp_path / "resnet18.pth"))
    net.load_pretrained()
    assert torch.equal(net.model.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert net.model.fc.weight.shape == (3, 512)  # a new head, not the file's 1,000 classes


def test_named_weights_come_from_a_prefilled_cache_with_their_size_and_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    state = saved_resnet18(tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    net = build_model("resnet18", (1, 28, 28), len(CLASSES), weights="DEFAULT")
    net.load_pretrained()  # no network: the cached file serves
    assert torch.equal(net.model.conv1.weight, state["conv1.weight"])
    assert net.input_size == (224, 224)
    assert net.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_named_weights_missing_offline_name_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    # The download itself, wherever the test runs: torchvision holds its own name for load_state_dict_from_url,
    # which looks this one up in torch.hub at each call.
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    net = build_model("resnet18", (3, 32, 32), 2, weights="IMAGENET1K_V1")
    with pytest.raises(InvalidSetting) as error:
        net.load_pretrained()
    message = str(error.value)
    assert message.startswith("weights: resnet18 IMAGENET1K_V1 is not in torch's cache")
    assert f"at {tmp_path}/hub/checkpoints/resnet18-f37072fd.pth" in message and "\n" not in message


@pytest.mark.parametrize(("name", "settings", "message"), [
    ("resnet19", {}, "unknown model 'resnet19'; did you mean resnet18"),
    ("resnet18", {"weights": "IMAGENET9K"}, "resnet18 has no weights 'IMAGENET9K'; choose one of: DEFAULT, IMAGENET1K_V1"),
    ("resnet18", {"freeze": "head"}, "must be one of: none, backbone"),
    ("resnet18", {"wings": 2}, "not a setting of torchvision's resnet18"),
    ("vit_b_16", {"input_size": [40, 40]}, "input_size: vit_b_16 cannot take [40, 40] images (Input shape indivisible by patch"),
    ("vit_b_16", {"input_size": [32, 48]}, "input_size: vit_b_16 takes square images, got [32, 48]"),
    ("googlenet", {}, "torchvision's googlenet is not supported: in training it answers with its auxiliary heads' scores too"),
])
def test_bad_names_and_settings_fail_in_one_line(name, settings, message):
    with pytest.raises(InvalidSetting) as error:
        build_model(name, (3, 32, 32), 2, **settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_vision_transformer_is_built_for_the_size_it_sees():
    """ViT's position embeddings fix its input size: built for 224 whatever it was given, it refused every other one at
    its first forward pass (32x32 here, 384 for weights trained at 384)."""
    net = build_model("vit_b_16", (1, 28, 28), 10, input_size=[32, 32])
    assert net.model.image_size == 32 and net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("vit_b_16", (3, 32, 32), 10, weights="IMAGENET1K_SWAG_E2E_V1").model.image_size == 384  # nothing downloaded yet


def test_a_frozen_backbone_stays_as_it_was_and_the_head_learns_faster(tmp_path):
    saved_resnet18(tmp_path / "resnet18.pth")
    settings = {"weights": str(tmp_path / "resnet18.pth"), "freeze": "backbone"}
    torch.manual_seed(0)  # as train() seeds (train.seed 0) before it builds the model: the new head's first weights
    net = build_model("resnet18", (1, 16, 16), 3, **settings)
    net.load_pretrained()
    before = {name: value.clone() for name, value in net.model.state_dict().items()}
    # One step of plain SGD on all 24 images, in each of two runs: the head moves by its learning rate times the same gradient.
    one_step = TrainConfig(epochs=1, batch_size=24, device="cpu", optimizer="sgd", momentum=0.0, lr=0.01, schedule="constant",
                           precision="fp32")
    moved = {}
    for head_lr in (1, 10):
        after = train("resnet18", settings | {"head_lr": head_lr}, tiny_data(), one_step).model.net.model.state_dict()
        changed = {name for name in before if not torch.equal(before[name], after[name])}
        assert changed == {"fc.weight", "fc.bias"}  # batch-norm statistics included: frozen layers stay in eval mode
        moved[head_lr] = torch.cat([(after[name] - before[name]).flatten() for name in sorted(changed)])
    torch.testing.assert_close(moved[10], 10 * moved[1], rtol=1e-3, atol=1e-7)


def test_checkpoint_predict_evaluate_and_the_mlflow_model_agree(tmp_path, monkeypatch, mlflow_store, experiment):
    data = tiny_data(channels=1, size=16)
    settings = {"input_size": [24, 24]}
    config = TrainConfig(epochs=1, batch_size=8, device="cpu")
    model = train("mobilenet_v3_small", settings, data, config).model.eval()
    path = tmp_path / "seed0.pt"
    save_checkpoint(path, model, model_name="mobilenet_v3_small", model_settings=settings, image_shape=data.image_shape,
                    class_names=CLASSES, config=config)
    loaded, meta = load_checkpoint(path)
    images = torch.from_numpy(data.test.images)
    with torch.no_grad():
        expected = model(images)
        assert torch.equal(loaded(images), expected)
    predicted = predict(loaded, data.test.images, CLASSES, top_k=1, device=torch.device("cpu"))
    assert predicted["predicted"].tolist() == [CLASSES[i] for i in expected.argmax(1).tolist()]
    assert evaluate(loaded, data.test, torch.device("cpu")).metrics["accuracy"] == pytest.approx(
        float((expected.argmax(1).numpy() == data.test.labels).mean()))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    metrics = {"val_accuracy": 0.5, "train_seconds": 1.0, "started": "2026-11-23T10:00:00+00:00"}
    run_id = runs.log_training(experiment, "mobilenet", training="0" * 16, params={}, curves={}, metrics=metrics,
                                   model=loaded, example=data.val.images[:2], tags={}, datasets=[],
                                   preprocessing=Preprocessing.of({key: meta[key] for key in ("class_names", "image_shape", "background")}))
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model().network
    with torch.no_grad():
        assert torch.allclose(logged(images), expected, atol=1e-5)
