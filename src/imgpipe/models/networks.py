"""The model registry: every architecture a variant can name in params.yaml (`models.<variant>.model`):
the seeds' ladder below (centroid, linear, mlp, cnn), a small residual net (small_resnet), the speedruns' CNN
(speedrun_cnn) and every classifier of torchvision's registry (resnet18, mobilenet_v3_small, ...: imgpipe.models.zoo).

Each network takes normalized images (B, C, H, W) and returns class scores (B, num_classes). Its
constructor takes the input shape and class count, then its own architecture settings, which
come from params.yaml as keyword arguments.
"""

import inspect
import math

import torch
from torch import nn

from imgpipe.errors import InvalidSetting, is_int, is_number, require

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> type[nn.Module]:
    require(isinstance(name, str) and name in ACTIVATIONS, "activation",
            f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def fit_scale(scores: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (1e-3, 1e3),
              tolerance: float = 1e-7) -> float:
    """The positive factor s minimizing the mean cross-entropy of softmax(s * scores) against labels.

    The loss is convex in s, hence unimodal in log s: a golden-section search on log s within
    `bounds` finds s to a relative `tolerance`, with no gradients and no randomness. The work runs
    on the CPU in float64, so the result depends only on the scores, not on the device. Scores that
    separate the classes perfectly have no finite optimum: s then stops at the upper bound, which for
    the centroid's distances (optima of 10 to 35 on digits and MNIST) is already near-certainty.
    """
    scores = scores.detach().cpu().double()  # (N, classes)
    true = scores.gather(1, labels.cpu()[:, None]).squeeze(1)  # (N,)

    def loss(log_s: float) -> float:
        s = math.exp(log_s)
        return (torch.logsumexp(s * scores, 1) - s * true).mean().item()

    golden = (math.sqrt(5) - 1) / 2
    low, high = math.log(bounds[0]), math.log(bounds[1])
    inner_low, inner_high = high - golden * (high - low), low + golden * (high - low)
    loss_low, loss_high = loss(inner_low), loss(inner_high)
    while high - low > tolerance:
        if loss_low <= loss_high:
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - golden * (high - low)
            loss_low = loss(inner_low)
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + golden * (high - low)
            loss_high = loss(inner_high)
    return math.exp((low + high) / 2)


class CentroidNet(nn.Module):
    """Pixel similarity: the mean training image of each class; an image's scores are minus its
    L1 or L2 distances to them, times a fitted positive scale, so the nearest class wins and the
    softmax of the scores is a calibrated probability. Fitted, not trained by gradients."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, distance: str = "l2"):
        super().__init__()
        require(distance in ("l1", "l2"), "distance", f"must be l1 or l2, got {distance!r}")
        self.p = 1.0 if distance == "l1" else 2.0
        # Parameters that gradients never touch: counted, saved and loaded like any weights. The
        # scale (an inverse temperature) is fitted too, so it counts as one more learned number.
        self.centroids = nn.Parameter(torch.zeros(num_classes, math.prod(input_shape)), requires_grad=False)
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        flat = x.flatten(1).float()  # (N, C*H*W)
        onehot = torch.nn.functional.one_hot(labels, len(self.centroids)).float()  # (N, classes)
        # A matrix product rather than index_add_: deterministic on every device.
        self.centroids.copy_((onehot.T @ flat) / onehot.sum(0).clamp(min=1)[:, None])
        # Fitted on the training split like the centroids: validation stays a fair check of the
        # calibration, and test is never used to fit anything. A positive scale keeps every argmax.
        self.scale.fill_(fit_scale(-self.distances(x), labels))

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Scale-free distances (B, classes) from each image to each class mean."""
        # One way of computing for every batch size: cdist's default switches to a matrix product above 25 rows, a
        # branch torch.export traced as a limit on the served batch; evaluation's batches took that path already.
        distances = torch.cdist(x.flatten(1).float(), self.centroids, p=self.p, compute_mode="use_mm_for_euclid_dist")
        if self.p == 2.0:
            return distances / math.sqrt(self.centroids.shape[1])  # root mean square
        return distances / self.centroids.shape[1]  # mean absolute difference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.distances(x) * self.scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints saved before the scale existed hold only the centroids: they keep their raw
        # distances as scores (scale 1). load_state_dict hands modules its own copy to modify.
        state_dict.setdefault(prefix + "scale", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LinearNet(nn.Module):
    """Multinomial logistic regression: one affine map from pixels to class scores."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _is_fraction(value) -> bool:
    """A number in [0, 1) (YAML's null, a string or a boolean is not one)."""
    return is_number(value) and 0 <= value < 1


def _positive_counts(values) -> bool:
    """A list of positive whole numbers (a YAML `16` for `[16]`, or `true`, is not one)."""
    return isinstance(values, (list, tuple)) and all(is_int(v) and v > 0 for v in values)


class MLP(nn.Module):
    """Fully connected net: flatten, then hidden layers with an activation (and dropout), then scores."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        hidden: list[int] = (128,),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        require(_positive_counts(hidden), "hidden", f"must list positive layer widths, got {hidden}")
        require(_is_fraction(dropout), "dropout", f"must be in [0, 1), got {dropout!r}")
        act = _activation(activation)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), act()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _require_channel_list(channels: list[int], unit: str = "block") -> None:
    require(_positive_counts(channels) and len(channels) > 0,
            "channels", f"must list positive channel counts, one per {unit}, got {channels}")


def _require_halving_blocks(channels: list[int], height: int, width: int) -> None:
    """`channels`: one positive channel count per block, each block max-pooling the image to half its size (rounded
    down), as many as leave it a pixel."""
    _require_channel_list(channels)
    require(min(height, width) >> len(channels) > 0, "channels",
            f"{len(channels)} blocks halve {height}x{width} images to nothing; use at most {min(height, width).bit_length() - 1}")


class TinyVGG(nn.Module):
    """TinyVGG-style CNN: blocks of conv-act-conv-act-maxpool, then one linear classifier.

    Each block halves the image, so the classifier's input size follows from the image size and
    the number of blocks; the same code serves 8x8 digits and 140x140 logos, 1 or 3 channels.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: list[int] = (16, 32),
        kernel_size: int = 3,
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        hidden: int = 0,
    ):
        super().__init__()
        in_channels, height, width = input_shape
        _require_halving_blocks(channels, height, width)
        require(is_int(kernel_size) and kernel_size > 0 and kernel_size % 2 == 1, "kernel_size",
                f"must be an odd whole number >= 1, got {kernel_size}")
        require(isinstance(batch_norm, bool), "batch_norm", f"must be true or false, got {batch_norm!r}")
        out_height, out_width = height >> len(channels), width >> len(channels)
        require(_is_fraction(dropout), "dropout", f"must be in [0, 1), got {dropout!r}")
        require(is_int(hidden) and hidden >= 0, "hidden", f"must be a width >= 0 (0: none), got {hidden}")
        act = _activation(activation)

        def conv(cin: int, cout: int) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=not batch_norm)]
            return layers + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [act()]

        blocks = []
        for out_channels in channels:
            blocks += [*conv(in_channels, out_channels), *conv(out_channels, out_channels), nn.MaxPool2d(2)]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()] + ([nn.Dropout(dropout)] if dropout else [])
        width = in_channels * out_height * out_width
        if hidden:  # an extra fully connected layer, as in the CIFAR seed's Net
            head += [nn.Linear(width, hidden), act()] + ([nn.Dropout(dropout)] if dropout else [])
            width = hidden
        self.classifier = nn.Sequential(*head, nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, C, H, W) -> (B, C', H/2^k, W/2^k) -> (B, classes)


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (a strided 1x1 conv and BN where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A residual net for small images (28x28, 32x32): a 3x3 stem, then one stage per entry of `channels`,
    each of `blocks` residual blocks, every stage after the first halving the image; global average pooling
    and one linear layer. What the speedrun literature trains fast: batch norm throughout, no large layers."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, channels: list[int] = (32, 64, 128),
                 blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        in_channels, height, width = input_shape
        _require_channel_list(channels, unit="stage")  # strided convolutions round up: a stage past 1x1 runs on 1x1
        require(isinstance(blocks, int) and blocks >= 1, "blocks", f"must be a whole number >= 1, got {blocks!r}")
        require(_is_fraction(dropout), "dropout", f"must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU(inplace=True)]
        width_in = channels[0]
        for stage, out_channels in enumerate(channels):
            for block in range(blocks):
                layers.append(ResidualBlock(width_in, out_channels, stride=2 if stage and not block else 1))
                width_in = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *([nn.Dropout(dropout)] if dropout else []),
                                        nn.Linear(width_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class GlobalMaxPool(nn.Module):
    """Each channel's largest value, (B, C, H, W) -> (B, C, 1, 1): as nn.AdaptiveMaxPool2d(1) computes it, but by a
    reduction, whose CUDA backward torch's deterministic mode allows (the adaptive pool's raises there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


class SpeedrunCNN(nn.Module):
    """The CIFAR-10 speedruns' layout (Keller Jordan's airbench), for small images: blocks of conv, max-pool, BN,
    activation, conv, BN, activation. Each block halves the image right after its first convolution, so its second
    runs on a quarter of the pixels (TinyVGG's both run at full size); then a global max pool and one linear layer.
    Its work goes to depth and width at low resolution rather than to the full-size image."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, channels: list[int] = (32, 64, 128),
                 activation: str = "relu"):
        super().__init__()
        in_channels, height, width = input_shape
        _require_halving_blocks(channels, height, width)
        act = _activation(activation)
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(out_channels), act(),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), act()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(GlobalMaxPool(), nn.Flatten(), nn.Linear(in_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, C, H, W) -> (B, C', H/2^k, W/2^k) -> (B, classes)


MODELS: dict[str, type[nn.Module]] = {"centroid": CentroidNet, "linear": LinearNet, "mlp": MLP, "cnn": TinyVGG,
                                      "small_resnet": SmallResNet, "speedrun_cnn": SpeedrunCNN}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **settings) -> nn.Module:
    """Build a registered network; unknown names and settings fail listing the valid ones."""
    if name not in MODELS:
        from imgpipe.models import zoo  # here: torchvision's import, for its models only

        known = zoo.classifier_names()
        if name in known:
            return zoo.TorchvisionNet(tuple(input_shape), num_classes, name, **settings)
        close = zoo.close_matches(name, [*MODELS, *known])
        raise InvalidSetting("model", f"unknown model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                             + f" Choose one of: {', '.join(MODELS)}, or a torchvision classifier (resnet18, mobilenet_v3_small, ...)")
    cls = MODELS[name]
    valid = [p for p in inspect.signature(cls).parameters if p not in ("input_shape", "num_classes")]
    for key in settings:
        if key not in valid:
            raise InvalidSetting(key, f"not a setting of model {name!r}; its settings are: {', '.join(valid) or 'none'}")
    return cls(tuple(input_shape), num_classes, **settings)


def count_parameters(model: nn.Module) -> int:
    """Every learned number, fitted ones (the centroids and their scale) included."""
    return sum(p.numel() for p in model.parameters())


def is_fitted(net: nn.Module) -> bool:
    """A model fitted in one pass (it has fit(x, labels)) rather than trained by gradient steps."""
    return callable(getattr(net, "fit", None))


def fitted_by_name(name: str) -> bool:
    """Whether the model of this name is fitted in one pass (is_fitted), before building it."""
    return callable(getattr(MODELS.get(name), "fit", None))  # torchvision's are trained by gradients


class Classifier(nn.Module):
    """A network plus the normalization it was trained with: takes raw pixels (B, C, H, W) in 0..255.

    Keeping normalization inside the module means the checkpoint, the MLflow model and predict
    all take the same uint8 images and cannot disagree about preprocessing. The same holds for the
    temperature the scores are divided by (fitted on validation by imgpipe.evaluation.calibration; 1: the
    network's own scores): every consumer answers with the same calibrated confidences. A positive
    temperature never changes which class scores highest. And for test-time augmentation (`tta`): out of
    training, an image's scores are the average of its own and its mirror image's.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], temperature: float = 1.0,
                 tta: bool = False):
        super().__init__()
        require(temperature > 0, "temperature", f"must be positive, got {temperature}")
        self.net = net
        self.tta = tta  # a plain flag, not a buffer: torch.export traces the path it picks
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255 - self.mean) / self.std  # (B, C, H, W)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = self.normalize(pixels)
        scores = self.net(images)  # (B, classes)
        if self.tta and not self.training:  # the gradient steps see each image once, as augmentation drew it
            scores = (scores + self.net(images.flip(-1))) / 2
        return scores / self.temperature

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # State saved before the temperature existed (a training's resume state) keeps the network's own scores.
        state_dict.setdefault(prefix + "temperature", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
