"""imgpipe.evaluation.saliency: maps that light where a trained model's answer comes from."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from torch import nn

from imgpipe.evaluation.saliency import gradcam, hirescam, input_gradients, last_conv, saliency
from imgpipe.models.networks import SmallResNet
from imgpipe.reporting.figures import overlay

SIZE = 16
REGION = (slice(2, 6), slice(10, 14))  # rows 2..5, cols 10..13: the only place the label shows


class Pixels(nn.Module):
    """A net behind uint8 normalization, as imgpipe's Classifier wraps one (not imported: it may move)."""

    def __init__(self, net: nn.Module, mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels.float() / 255 - self.mean) / self.std)


def cnn(channels: int = 1, classes: int = 2, inplace: bool = False) -> Pixels:
    return Pixels(nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(inplace), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * (SIZE // 2) ** 2, classes)))


def linear(classes: int = 2) -> Pixels:
    return Pixels(nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, classes)))


def patch_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images (n, 1, 16, 16) whose label is whether the 4x4 patch at REGION is bright (1) or
    dark (0); two equally strong patches elsewhere, bright or dark at random, tell nothing."""
    rng = np.random.default_rng(seed)
    images = rng.integers(64, 192, size=(n, 1, SIZE, SIZE))
    labels = rng.integers(0, 2, size=n)
    images[:, 0, REGION[0], REGION[1]] = np.where(labels, 255, 0)[:, None, None]
    for image in images:
        for _ in range(2):
            row, col = rng.integers(0, SIZE - 3, size=2)
            while -4 < row - REGION[0].start < 4 and -4 < col - REGION[1].start < 4:  # overlapping the region
                row, col = rng.integers(0, SIZE - 3, size=2)
            image[0, row:row + 4, col:col + 4] = rng.choice([0, 255])
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def task() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"train": patch_task(2000, seed=0), "test": patch_task(200, seed=1)}


def trained(model: Pixels, task: dict, steps: int = 300) -> Pixels:
    torch.manual_seed(0)
    images, labels = task["train"]
    # Weight decay pulls the weights that carry no label information (noise, distractors) toward zero.
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0)
    for _ in range(steps):
        batch = torch.randint(0, len(images), (64,))
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    images, labels = task["test"]
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9, f"the model did not learn the task (held-out accuracy {accuracy:.2f}): its maps would mean nothing"
    return model.eval()


def in_region() -> torch.Tensor:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[REGION] = True
    return inside


def inside_over_outside(maps: torch.Tensor) -> float:
    inside = in_region()
    return (maps[:, inside].mean() / maps[:, ~inside].mean()).item()


@pytest.mark.parametrize("method", [gradcam, hirescam])
def test_class_activation_maps_light_the_region_the_answer_depends_on(task, method):
    torch.manual_seed(0)
    model = trained(cnn(), task)
    images, labels = task["test"]
    maps = method(model, images, labels)
    assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == torch.float32
    ratio = inside_over_outside(maps)
    assert ratio > 3, f"{method.__name__}'s heat inside the region is only {ratio:.2f}x the heat outside"
    # The distractors are as bright or dark as the region's patch: the map follows the answer, not contrast.
    # (Grad-CAM's channel weights are global, so a distractor alike to the region's patch still gets some heat.)
    distractors = ((images[:, 0] == 0) | (images[:, 0] == 255)) & ~in_region()
    region = maps[:, in_region()].mean().item()
    assert region > 1.2 * maps[distractors].mean().item(), f"{method.__name__} lights the distractors as much as the region"


def test_behind_a_flatten_head_grad_cam_can_go_empty_where_hirescam_draws_the_evidence():
    """A head whose weights differ place by place (TinyVGG's flatten-linear): two places push the class score in
    opposite directions through the same channel. Grad-CAM's averaged gradient cancels and leaves an empty map;
    HiResCAM keeps the place that raised the score."""
    model = Pixels(nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(SIZE * SIZE, 2, bias=False)))
    with torch.no_grad():
        model.net[0].weight.fill_(1.0)
        weights = torch.zeros(2, SIZE, SIZE)
        weights[0, 2, 3], weights[0, 10, 12] = 1.0, -1.0  # class 0: up at (2, 3), down at (10, 12)
        model.net[3].weight.copy_(weights.flatten(1))
    image = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8)
    image[0, 0, 2, 3], image[0, 0, 10, 12] = 255, 200  # both places lit; the raising one brighter
    assert torch.equal(gradcam(model, image, torch.tensor([0])), torch.zeros(1, SIZE, SIZE))
    heat = hirescam(model, image, torch.tensor([0]))[0]
    assert heat.max() == 1 and heat[2, 3] > 0.5 and heat[10, 12] == 0


def test_input_gradients_light_the_region_a_linear_model_depends_on(task):
    torch.manual_seed(0)
    model = trained(linear(), task)
    images, labels = task["test"]
    maps = input_gradients(model, images, labels)
    assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == torch.float32
    ratio = inside_over_outside(maps)
    assert ratio > 3, f"the input gradients inside the region are only {ratio:.2f}x those outside"
    hottest = maps.flatten(1).argmax(1)
    assert in_region().flatten()[hottest].all(), "an image's largest input gradient lies outside the region"


@pytest.mark.parametrize("build, method", [
    (lambda: cnn(3, 4), "HiResCAM on net.3 (ReLU)"),  # the second Conv2d of the Sequential inside Pixels
    (lambda: Pixels(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 16), nn.ReLU(), nn.Linear(16, 4))),
     "input gradients"),
])
def test_saliency_picks_the_method_and_leaves_the_model_as_it_was(build, method):
    torch.manual_seed(0)
    model = build().train()
    model.net[1].eval()  # a part kept in eval while the rest trains (as a frozen backbone's batch norm)
    modes = [module.training for module in model.modules()]
    images = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8)
    classes = torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        maps, name = saliency(model, images, classes)
    assert name == method
    assert (last_conv(model) is None) == (method == "input gradients")
    assert maps.shape == (5, SIZE, SIZE) and maps.dtype == torch.float32
    peaks = maps.flatten(1).amax(1)  # each scaled by its max; an untrained net may find no evidence at all: 0
    assert maps.min() >= 0 and ((peaks == 1) | (peaks == 0)).all() and (peaks == 1).sum() >= 3
    assert all(parameter.grad is None for parameter in model.parameters())
    assert [module.training for module in model.modules()] == modes


def test_maps_do_not_depend_on_chunking_or_on_the_other_images():
    torch.manual_seed(0)
    model = cnn(3, 4).eval()
    images = torch.randint(0, 256, (70, 3, SIZE, SIZE), dtype=torch.uint8)  # more than one chunk
    classes = torch.arange(70) % 4
    together = gradcam(model, images, classes)
    alone = torch.cat([gradcam(model, images[i:i + 1], classes[i:i + 1]) for i in range(0, 70, 9)])
    torch.testing.assert_close(together[::9], alone)
    other_class = gradcam(model, images[:1], classes[:1] + 1)
    assert (other_class - alone[:1]).abs().max() > 0.1, "the map does not depend on the class asked about"


def test_with_test_time_flips_the_map_explains_both_passes_and_mirrors_with_the_image():
    """The flips' score, f(x) + f(mirror of x), is the same for an image and its mirror: so must its map be, mirrored.
    A map from one pass alone (the mirror's, not flipped back) is not."""
    from imgpipe.models.networks import Classifier

    torch.manual_seed(0)
    model = Classifier(cnn(1, 3).net, (0.5,), (0.25,), tta=True)
    images = torch.randint(0, 256, (4, 1, SIZE, SIZE), dtype=torch.uint8)
    classes = torch.tensor([0, 1, 2, 0])
    maps, mirrored = hirescam(model, images, classes), hirescam(model, images.flip(-1), classes)
    torch.testing.assert_close(maps, mirrored.flip(-1))
    model.tta = False
    assert (hirescam(model, images, classes) - maps).abs().max() > 0.05  # not the image's own pass alone either


def test_gradcam_works_on_frozen_layers_with_in_place_activations():
    torch.manual_seed(0)
    plain = cnn(3, 4).eval()
    frozen = cnn(3, 4, inplace=True).eval()
    frozen.load_state_dict(plain.state_dict())
    frozen.requires_grad_(False)  # a frozen backbone on uint8 pixels: nothing upstream requires grad
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    classes = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(gradcam(frozen, images, classes), gradcam(plain, images, classes))


def test_a_map_without_evidence_stays_zero():
    model = cnn(1, 2).eval()
    nn.init.zeros_(model.net[-1].weight)  # scores that no activation changes: zero gradients everywhere
    images = torch.randint(0, 256, (3, 1, SIZE, SIZE), dtype=torch.uint8)
    for method in (gradcam, hirescam, input_gradients):
        maps = method(model, images, torch.tensor([0, 1, 0]))
        assert torch.equal(maps, torch.zeros(3, SIZE, SIZE))


def test_gradcam_on_a_torchvision_resnet_looks_at_its_last_block():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = Pixels(torchvision.models.resnet18(weights=None, num_classes=3), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    maps, name = saliency(model, images, torch.tensor([0, 2]))
    assert name == "HiResCAM on net.layer4.1.bn2 (BatchNorm2d)"  # the block's residual sum and ReLU are no modules of their own
    assert maps.shape == (2, 32, 32) and 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_overlay_shows_the_image_where_there_is_no_heat(channels):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, size=(channels, 5, 7), dtype=np.uint8)
    heat = np.zeros((5, 7))
    heat[2:, 3:] = 1.0
    out = overlay(image, heat, alpha=1.0)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    rgb = np.repeat(image, 3, 0) if channels == 1 else image[:3]
    np.testing.assert_array_equal(out[heat == 0], rgb.transpose(1, 2, 0)[heat == 0])
    jet_top = np.rint(np.array(colormaps["jet"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(out[heat == 1], np.broadcast_to(jet_top, (int(heat.sum()), 3)))
    half = overlay(image, heat, alpha=0.5)[4, 6].astype(float)  # half the image, half the colour
    np.testing.assert_allclose(half, (rgb[:, 4, 6] + jet_top) / 2, atol=1)


def test_on_the_small_resnet_the_map_is_of_the_last_block_not_its_shortcut():
    """The last block halves the image, so its 1x1 projection shortcut is the last convolution registered: the map is of
    the block's body (its second convolution and batch norm, before the residual sum, as torchvision's ResNets above)."""
    torch.manual_seed(0)
    model = Pixels(SmallResNet((3, 32, 32), 3), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    maps, name = saliency(model, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 2]))
    assert name == "HiResCAM on net.features.5.body.4 (BatchNorm2d)"
    assert maps.shape == (2, 32, 32)
