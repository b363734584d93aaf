"""Where an image classifier looked: a heat map per image, for the report and `predict --explain`
(imgpipe.reporting.figures.overlay lays one over its image).

The method follows from the model. A model with a convolution gets a class activation map on the output
of its last convolution's block (the convolution, then its normalization and activation), which keeps the
image's layout while holding the most class-specific features: HiResCAM (Draelos & Carin 2020), the
activations times the class score's gradient, place by place, summed over the channels. Grad-CAM (Selvaraju
et al. 2017) averages each channel's gradient over the places first; with a global-average-pooling head
(ResNet, MobileNet, EfficientNet) the two maps are the same up to scale, but behind TinyVGG's flatten-linear
head, whose weights differ place by place, the averages cancel: on the real FashionMNIST Grad-CAM left 12
of 16 maps empty where HiResCAM drew all 16. A model without a convolution (linear, MLP, centroid) has no
spatial layer to look at, so it gets the magnitude of the score's gradient with respect to the pixels.

Every map is (N, H, W) float32 in [0, 1], scaled per image by its maximum: maps show where a model
looked within an image, not how strongly compared with other images. Models are anything that takes
uint8 pixels (N, C, H, W) and returns class scores (N, classes), as imgpipe's Classifier does; the
model's parameters, their gradients and its training modes are left as they were.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

CHUNK = 32  # images per forward and backward pass: bounds the activations kept for the gradients


# Layers that keep the map's layout and change each value alone: the last convolution's block ends with them.
ELEMENTWISE = (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU,
               nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Sigmoid, nn.Tanh)


SHORTCUTS = {"shortcut", "downsample"}  # the names residual blocks give their projection shortcut


def last_conv(model: nn.Module) -> nn.Module | None:
    """The last nn.Conv2d in module order; None when the model has none."""
    convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    return convs[-1] if convs else None


def _target(model: nn.Module) -> tuple[str, nn.Module | None]:
    """Where the class activation map looks: the output of the last convolution's block, the convolution and the normalization
    and activation registered right after it (TinyVGG's conv-ReLU, MobileNet's conv-BN-Hardswish). A rectified
    map is what the classifier reads; the raw convolution's output mixes signs, and its map lights a few
    pixels only."""
    modules = list(model.named_modules())
    # A residual block's projection shortcut (SmallResNet's, torchvision's downsample) is a side path registered after
    # the block's own convolutions: the map is of the block's body, not of the previous block's projection.
    convs = [i for i, (name, module) in enumerate(modules)
             if isinstance(module, nn.Conv2d) and not SHORTCUTS & set(name.split("."))]
    if not convs:
        return "", None
    end = convs[-1]
    while end + 1 < len(modules) and isinstance(modules[end + 1][1], ELEMENTWISE):
        end += 1
    return modules[end]


def hirescam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """HiResCAM maps (N, H, W) in [0, 1] of uint8 images (N, C, H, W) for their classes (N,)."""
    return _cam(model, images, classes, place_by_place=True)


def gradcam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] of uint8 images (N, C, H, W) for their classes (N,)."""
    return _cam(model, images, classes, place_by_place=False)


def _cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, place_by_place: bool) -> torch.Tensor:
    layer = _target(model)[1]
    if layer is None:
        raise ValueError("a class activation map needs a model with a convolution (nn.Conv2d); use input_gradients")
    return _chunked(model, images, classes, lambda x, c: _cam_chunk(model, layer, x, c, place_by_place))


def input_gradients(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """|d score / d pixel|, the largest over channels: maps (N, H, W) in [0, 1] of images (N, C, H, W)."""
    return _chunked(model, images, classes, lambda x, c: _input_gradient_chunk(model, x, c))


def saliency(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Maps (N, H, W) in [0, 1] by the method that fits the model, and that method's name."""
    name, layer = _target(model)
    if layer is None:
        return input_gradients(model, images, classes), "input gradients"
    return hirescam(model, images, classes), f"HiResCAM on {name or type(layer).__name__} ({type(layer).__name__})"


def _chunked(model: nn.Module, images: torch.Tensor, classes: torch.Tensor,
             method: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    if images.ndim != 4 or classes.shape != images.shape[:1]:
        raise ValueError(f"images must be (N, C, H, W) and classes (N,), got {tuple(images.shape)} and {tuple(classes.shape)}")
    classes = classes.to(images.device, torch.long)
    # enable_grad: callers (evaluation, predict) usually run under no_grad, and the maps are gradients.
    with _eval_mode(model), torch.enable_grad():
        maps = [method(images[i:i + CHUNK], classes[i:i + CHUNK]) for i in range(0, len(images), CHUNK)]
    if not maps:
        return torch.zeros(0, *images.shape[2:], device=images.device)
    return _scale_to_unit(torch.cat(maps)).float()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Each module's own flag is restored, not just the top one: some models keep parts in eval while
    # training (a frozen backbone's batch norm), which a plain model.train(previous) would undo.
    modes = {module: module.training for module in model.modules()}
    model.eval()  # dropout off and batch norm on its running statistics: the map of the model as it predicts
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _class_score(scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    # A sum of per-image scores: each image's gradient is its own score's, as images do not interact in eval mode.
    return scores.gather(1, classes[:, None]).sum()


def _cam_chunk(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: torch.Tensor,
               place_by_place: bool) -> torch.Tensor:
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # a frozen layer on uint8 pixels: the activation itself is what needs grad
            output.requires_grad_()
        captured.append(output)
        # The layers after it get a copy: an in-place activation (ReLU(inplace=True)) would otherwise
        # overwrite the kept activation, or fail on it when it is a leaf.
        return output.clone()

    handle = layer.register_forward_hook(keep)
    try:
        scores = model(images)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the model's forward never called {layer}, the end of its last convolution's block")
    # Test-time flips (Classifier.tta): the score averages two passes, the image's and then its mirror's, so the map
    # is the sum of both passes' maps, the mirror's flipped back. In each pass, a layer called twice: the nearest the scores.
    passes = 2 if getattr(model, "tta", False) else 1
    activations = [captured[len(captured) * (k + 1) // passes - 1] for k in range(passes)]  # each (n, K, h, w)
    # autograd.grad rather than backward(): no parameter's .grad is written.
    gradients = torch.autograd.grad(_class_score(scores, classes), activations)
    maps = []
    for activation, gradient in zip(activations, gradients):
        weights = gradient if place_by_place else gradient.mean((2, 3), keepdim=True)  # (n, K, h, w) or (n, K, 1, 1)
        maps.append((weights * activation).sum(1, keepdim=True))  # (n, 1, h, w)
    signed = maps[0] if passes == 1 else maps[0] + maps[1].flip(-1)
    cam = torch.relu(signed).detach()
    return nn.functional.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]


def _input_gradient_chunk(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    pixels = images.float().requires_grad_()  # the same 0..255 values, now differentiable
    (gradient,) = torch.autograd.grad(_class_score(model(pixels), classes), pixels)
    return gradient.abs().amax(1)  # (n, H, W)


def _scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    # Per image by its maximum; an all-zero map (no evidence) stays zero rather than dividing by zero.
    peak = maps.flatten(1).amax(1).clamp(min=torch.finfo(maps.dtype).tiny)
    return (maps / peak[:, None, None]).clamp(0, 1)
