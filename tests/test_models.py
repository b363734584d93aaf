import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from imgpipe.config import TrainConfig
from imgpipe.errors import InvalidSetting
from imgpipe.models.checkpoint import load_checkpoint, save_checkpoint
from imgpipe.models.networks import MODELS, Classifier, TinyVGG, build_model, count_parameters, fit_scale

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 140, 140), (1, 28, 20)]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_model_maps_images_to_class_scores(name, shape):
    model = build_model(name, shape, num_classes=7)
    assert model(torch.randn(5, *shape)).shape == (5, 7)


def test_linear_is_one_affine_map():
    model = build_model("linear", (3, 32, 32), num_classes=10)
    assert count_parameters(model) == 3 * 32 * 32 * 10 + 10


def test_mlp_layer_widths_follow_settings():
    model = build_model("mlp", (3, 32, 32), 10, hidden=[1024, 512, 128], activation="tanh")
    # The CIFAR seed's 3072-1024-512-128-10 net.
    assert count_parameters(model) == (3072 * 1024 + 1024) + (1024 * 512 + 512) + (512 * 128 + 128) + (128 * 10 + 10)


def test_cnn_classifier_input_follows_image_size():
    for size, blocks in [(8, 2), (28, 2), (140, 3)]:
        model = TinyVGG((1, size, size), 10, channels=[4] * blocks)
        expected = 4 * (size >> blocks) ** 2
        assert model.classifier[-1].in_features == expected


def test_unknown_model_lists_the_registry():
    with pytest.raises(InvalidSetting, match="unknown model 'resnet'.*linear, mlp, cnn"):
        build_model("resnet", (1, 8, 8), 10)


def test_unknown_setting_lists_the_valid_ones():
    with pytest.raises(InvalidSetting, match="chanels.*channels, kernel_size, activation") as caught:
        build_model("cnn", (1, 8, 8), 10, chanels=[8])
    assert caught.value.name == "chanels"


@pytest.mark.parametrize("model, setting, value", [
    ("cnn", "channels", 16), ("speedrun_cnn", "channels", 32), ("small_resnet", "channels", 32),  # `16` for `[16]`
    ("cnn", "channels", [True, True]), ("mlp", "hidden", 128), ("mlp", "hidden", [64, 0]), ("cnn", "hidden", True)])
def test_a_width_that_is_not_a_list_of_counts_is_refused_by_name(model, setting, value):
    with pytest.raises(InvalidSetting, match=re.escape(f"got {value}")) as caught:  # a setting error, not a TypeError's traceback
        build_model(model, (1, 8, 8), 10, **{setting: value})
    assert caught.value.name == setting


@pytest.mark.parametrize("model, setting, value", [
    ("mlp", "dropout", None), ("cnn", "dropout", "0.2"), ("speedrun_cnn", "activation", ["relu"]), ("cnn", "batch_norm", "no"),
    ("cnn", "kernel_size", True), ("cnn", "kernel_size", -1)])
def test_a_setting_of_the_wrong_type_is_refused_by_name_not_by_a_traceback(model, setting, value):
    with pytest.raises(InvalidSetting) as caught:
        build_model(model, (1, 8, 8), 10, **{setting: value})
    assert caught.value.name == setting and (repr(value) in caught.value.reason or str(value) in caught.value.reason)


@pytest.mark.parametrize("model", ["cnn", "speedrun_cnn"])
@pytest.mark.parametrize("height, most", [(8, 3), (7, 2)])
def test_too_many_blocks_for_the_image_is_refused(model, height, most):
    with pytest.raises(InvalidSetting, match=rf"{most + 1} blocks halve {height}x8 images to nothing; use at most {most}") as caught:
        build_model(model, (1, height, 8), 10, channels=[4] * (most + 1))
    assert caught.value.name == "channels"
    assert build_model(model, (1, height, 8), 10, channels=[4] * most)(torch.zeros(2, 1, height, 8)).shape == (2, 10)


def test_the_speedrun_cnn_halves_the_image_once_a_block_and_counts_its_parameters_by_hand():
    net = build_model("speedrun_cnn", (1, 28, 28), 10, channels=[32, 64, 128])
    assert net.features(torch.zeros(2, 1, 28, 28)).shape == (2, 128, 3, 3)  # 28 -> 14 -> 7 -> 3
    convolutions = 9 * (1 * 32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)  # no biases: batch norm follows
    norms = 2 * 2 * (32 + 64 + 128)  # two per block, a weight and a bias per channel
    assert count_parameters(net) == convolutions + norms + 128 * 10 + 10 == 288_170


def test_classifier_normalizes_raw_pixels_with_stored_statistics():
    net = torch.nn.Flatten()
    model = Classifier(net, mean=(0.5, 0.25), std=(0.5, 0.25))
    pixels = torch.tensor([[[[255]], [[0]]]], dtype=torch.uint8)  # (1, 2, 1, 1)
    assert model(pixels).tolist() == [[1.0, -1.0]]


def fitted_centroid(data, distance="l2") -> Classifier:
    """The centroid baseline fitted as train() fits it: on the normalized training split."""
    model = Classifier(build_model("centroid", data.image_shape, len(data.class_names), distance=distance),
                       data.mean, data.std).eval()
    model.net.fit(model.normalize(torch.from_numpy(data.train.images)), torch.from_numpy(data.train.labels))
    return model


def test_fit_scale_agrees_with_scipy():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(500, 4, generator=generator, dtype=torch.float64)
    labels = (scores + 2 * torch.randn(500, 4, generator=generator, dtype=torch.float64)).argmax(1)

    def loss(log_s: float) -> float:
        return F.cross_entropy(torch.exp(torch.tensor(log_s)) * scores, labels).item()

    reference = minimize_scalar(loss, bounds=(-5, 5), method="bounded", options={"xatol": 1e-9}).x
    assert fit_scale(scores, labels) == pytest.approx(torch.exp(torch.tensor(reference)).item(), rel=1e-5)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_centroid_scale_minimizes_the_training_loss_and_keeps_predictions(digits_prepared, distance):
    model = fitted_centroid(digits_prepared, distance)
    net = model.net
    x = model.normalize(torch.from_numpy(digits_prepared.train.images))
    labels = torch.from_numpy(digits_prepared.train.labels)
    with torch.no_grad():
        raw = -net.distances(x)

        def loss(s: float) -> float:
            return F.cross_entropy(s * raw, labels).item()

        scale = net.scale.item()
        assert scale > 1 and loss(scale) <= min(loss(scale * 1.1), loss(scale / 1.1))
        assert loss(scale) < 0.5 * loss(1.0)
        test_x = model.normalize(torch.from_numpy(digits_prepared.test.images))
        nearest = torch.cdist(test_x.flatten(1), net.centroids, p=net.p).argmin(1)
        assert torch.equal(net(test_x).argmax(1), nearest)
    # The scale is fitted like the centroids, so it counts as one more learned number.
    assert count_parameters(net) == 10 * 64 + 1


def test_centroid_loss_and_confidence_are_calibrated_on_digits(digits_prepared):
    model = fitted_centroid(digits_prepared)
    with torch.no_grad():
        logits = model(torch.from_numpy(digits_prepared.val.images))
    labels = torch.from_numpy(digits_prepared.val.labels)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    confidence = logits.softmax(1).max(1).values.mean().item()
    # Unscaled distances gave a loss of about 2.0 (ln 10 = 2.3 is chance) and a confidence of 0.14.
    assert F.cross_entropy(logits, labels).item() < 1.0
    assert 0.5 < confidence < 0.99 and abs(confidence - accuracy) < 0.1


def save_centroid(path, model, data) -> None:
    save_checkpoint(path, model, model_name="centroid", model_settings={"distance": "l2"},
                    image_shape=data.image_shape, class_names=data.class_names, config=TrainConfig(epochs=1))


def test_a_checkpoint_write_that_fails_midway_keeps_the_earlier_one(digits_prepared, tmp_path, monkeypatch):
    path = tmp_path / "centroid.pt"
    save_centroid(path, fitted_centroid(digits_prepared), digits_prepared)
    before = path.read_bytes()

    def disk_full(checkpoint, file):  # half the file written, then the disk is full
        Path(file).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device", str(file))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_centroid(path, fitted_centroid(digits_prepared), digits_prepared)
    assert path.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["centroid.pt"]


def test_centroid_checkpoint_keeps_its_calibrated_scores(digits_prepared, tmp_path):
    model = fitted_centroid(digits_prepared)
    save_centroid(tmp_path / "centroid.pt", model, digits_prepared)
    loaded, _ = load_checkpoint(tmp_path / "centroid.pt")
    images = torch.from_numpy(digits_prepared.test.images)
    assert loaded.net.scale.item() == model.net.scale.item() != 1.0
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_a_centroid_saved_before_the_scale_loads_with_scale_one(digits_prepared, tmp_path):
    path = tmp_path / "centroid.pt"
    save_centroid(path, fitted_centroid(digits_prepared), digits_prepared)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["scale"]  # as checkpoints were saved before the scale existed
    torch.save(checkpoint, path)
    loaded, _ = load_checkpoint(path)
    images = torch.from_numpy(digits_prepared.test.images)
    with torch.no_grad():
        assert loaded.net.scale.item() == 1.0
        assert torch.equal(loaded(images), -loaded.net.distances(loaded.normalize(images)))


def test_the_speedrun_cnns_global_max_pool_is_the_adaptive_pools_by_a_reduction():
    """The same values and gradients as nn.AdaptiveMaxPool2d(1), by amax, whose CUDA backward deterministic mode allows."""
    from imgpipe.models.networks import GlobalMaxPool

    x = torch.randn(4, 6, 3, 3, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    pooled, reference = GlobalMaxPool()(x), torch.nn.AdaptiveMaxPool2d(1)(y)
    assert torch.equal(pooled, reference)
    (pooled * torch.arange(24.0).view(4, 6, 1, 1)).sum().backward()
    (reference * torch.arange(24.0).view(4, 6, 1, 1)).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_a_gpu_that_only_emulates_bf16_is_not_taken_for_one_that_computes_it(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a V100 or T4 by default (emulated): precision auto would pick bf16."""
    from imgpipe.device import has_native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not has_native_bf16(torch.device("cuda"))
