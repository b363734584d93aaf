import pytest
import torch

from imgpipe.errors import InvalidSetting
from imgpipe.models import MODELS, Classifier, TinyVGG, build_model, count_parameters

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


def test_too_many_blocks_for_the_image_is_refused():
    with pytest.raises(InvalidSetting, match="4 blocks halve 8x8 images to nothing; use at most 3"):
        build_model("cnn", (1, 8, 8), 10, channels=[4, 4, 4, 4])


def test_classifier_normalizes_raw_pixels_with_stored_statistics():
    net = torch.nn.Flatten()
    model = Classifier(net, mean=(0.5, 0.25), std=(0.5, 0.25))
    pixels = torch.tensor([[[[255]], [[0]]]], dtype=torch.uint8)  # (1, 2, 1, 1)
    assert model(pixels).tolist() == [[1.0, -1.0]]
