"""torchvision's classifiers as variants: any builder of its model registry (`resnet18`, `mobilenet_v3_small`,
`efficientnet_b0`, `convnext_tiny`, `vit_b_16`, ...), from scratch or from pretrained weights.

A TorchvisionNet wraps the torchvision model with what imgpipe's images need: grey images become three
channels and every image is resized to the network's input size, on the device, per batch; the final
linear layer (the head) is replaced for the dataset's classes. Pretrained weights are loaded by
`load_pretrained`, which training calls: a checkpoint brings its own weights and never fetches any.
torchvision is imported here only, so the seeds' ladder (centroid to TinyVGG) never pays for it.
"""

import difflib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imgpipe import paths
from imgpipe.errors import InvalidSetting, require

FREEZE = ("none", "backbone")
BUILT_FOR_A_SIZE = {"vit_": "image_size", "maxvit": "input_size"}  # the builder setting that fixes the input size
AUXILIARY_HEADS = ("googlenet", "inception_v3")  # in training they answer (scores, auxiliary scores)


def _models():
    import torchvision.models  # here: a second or two of import, for these variants only

    return torchvision.models


def classifier_names() -> list[str]:
    """Every classification builder of torchvision's model registry (no detection or segmentation)."""
    models = _models()
    return models.list_models(module=models)


def close_matches(name: str, known: list[str]) -> list[str]:
    return difflib.get_close_matches(name, known, n=3, cutoff=0.6)


def _weights_enum(arch: str, weights: str):
    """The weights enum member that `weights` names (DEFAULT, IMAGENET1K_V1, ...), or None for a file path."""
    if Path(weights).suffix in (".pt", ".pth") or "/" in weights:
        return None
    enum = _models().get_model_weights(arch)
    try:
        return enum.verify(weights)
    except (KeyError, ValueError):
        names = ["DEFAULT", *enum.__members__]
        raise InvalidSetting("weights", f"{arch} has no weights {weights!r}; choose one of: {', '.join(names)}, "
                                        "null (from scratch) or the path of a state_dict file") from None


class TorchvisionNet(nn.Module):
    """A torchvision classifier for images of `input_shape` and `num_classes` classes.

    weights: None (from scratch), a weights name of the architecture (DEFAULT, IMAGENET1K_V1, ...) or
    the path of a state_dict file of the architecture. input_size: [height, width] the network sees
    (None: the weights' own size when they are named, else the images' own). freeze: "backbone" trains
    the head alone (and keeps the backbone's batch-norm statistics). head_lr: the head's learning rate
    as a multiple of train.lr. Other keys go to the torchvision builder (e.g. dropout for efficientnet).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, arch: str, weights: str | None = None,
                 input_size: list[int] | None = None, freeze: str = "none", head_lr: float = 1.0, **builder_settings):
        super().__init__()
        require(weights is None or isinstance(weights, str), "weights", f"must be null, a weights name or a file path, got {weights!r}")
        require(freeze in FREEZE, "freeze", f"must be one of: {', '.join(FREEZE)}, got {freeze!r}")
        require(isinstance(head_lr, (int, float)) and head_lr > 0, "head_lr", f"must be a number > 0, got {head_lr!r}")
        self.arch, self.weights, self.freeze, self.head_lr = arch, weights, freeze, float(head_lr)
        self.pretrained = _weights_enum(arch, weights) if weights else None
        if input_size is None:  # the size the weights were trained at, else the images' own
            crop = self.pretrained.transforms().crop_size if self.pretrained else input_shape[1:]
            input_size = [crop[0], crop[-1]]
        require(isinstance(input_size, (list, tuple)) and len(input_size) == 2 and all(isinstance(s, int) and s > 0 for s in input_size),
                "input_size", f"must be [height, width] in pixels, got {input_size!r}")
        self.input_size = tuple(input_size)
        require(arch not in AUXILIARY_HEADS, "model", f"torchvision's {arch} is not supported: in training it answers with "
                f"its auxiliary heads' scores too; use another classifier (resnet18, efficientnet_b0, ...)")
        # Built for one input size (ViT's position embeddings, MaxViT's windows): built for the size it will see.
        sized = next((key for prefix, key in BUILT_FOR_A_SIZE.items() if arch.startswith(prefix)), None)
        if sized == "image_size":
            require(self.input_size[0] == self.input_size[1], "input_size", f"{arch} takes square images, got {list(self.input_size)}")
            builder_settings.setdefault(sized, self.input_size[0])
        elif sized is not None:
            builder_settings.setdefault(sized, self.input_size)
        try:
            self.model = _models().get_model(arch, weights=None, **builder_settings)
        except TypeError as error:  # a key the builder does not take
            raise InvalidSetting(next(iter(builder_settings), "model"), f"not a setting of torchvision's {arch} ({error})") from None
        except (AssertionError, ValueError) as error:  # e.g. a ViT's patches that do not divide the image
            raise InvalidSetting("input_size", f"{arch} cannot take {list(self.input_size)} images ({error}); set input_size, "
                                 "e.g. [224, 224]") from None
        # The head: the last linear layer (fc, classifier[-1], heads.head, ...), replaced for these classes.
        linear = [(name, module) for name, module in self.model.named_modules() if isinstance(module, nn.Linear)]
        require(bool(linear), "model", f"torchvision's {arch} has no linear classifier layer to replace")
        self.head_name, head = linear[-1]
        self.model.set_submodule(self.head_name, nn.Linear(head.in_features, num_classes))
        if freeze == "backbone":
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad = name.startswith(self.head_name + ".")

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) that the named weights were trained with; None: use the data's own."""
        if self.pretrained is None:
            return None
        transforms = self.pretrained.transforms()
        return tuple(transforms.mean), tuple(transforms.std)

    def load_pretrained(self) -> None:
        """Load the weights the settings name, every layer but the head. A named one comes from torch's
        cache (downloaded into it once); a file is read as it is."""
        if self.weights is None:
            return
        if self.pretrained is None:
            path = paths.in_project(self.weights)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise InvalidSetting("weights", f"{path}: no such file") from None
            except Exception as error:
                raise InvalidSetting("weights", f"{path}: not a readable state_dict ({type(error).__name__}: {error})") from None
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        else:
            state = self._download()
        head = self.head_name + "."
        try:
            missing, unexpected = self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)}, strict=False)
        except RuntimeError as error:  # shapes that do not fit this architecture
            raise InvalidSetting("weights", f"{self.weights} does not fit {self.arch}: {' '.join(str(error).split())[:300]}") from None
        missing = [key for key in missing if not key.startswith(head)]
        require(not missing and not unexpected, "weights",
                f"{self.weights} does not fit {self.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def _download(self) -> dict:
        url = self.pretrained.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        try:
            return self.pretrained.get_state_dict(progress=True, check_hash=True)
        except Exception as error:  # no network (URLError, timeouts), a firewall's answer, a bad hash
            raise InvalidSetting("weights", f"{self.arch} {self.pretrained.name} is not in torch's cache and could not be downloaded "
                                            f"({type(error).__name__}: {' '.join(str(error).split())[:120]}); place {url} at {cached} "
                                            "(TORCH_HOME moves the cache), or set weights to the path of a state_dict file") from None

    def parameter_groups(self, lr: float) -> list[dict]:
        """The optimizer's groups: the backbone at lr (unless frozen), the head at lr x head_lr."""
        head = self.head_name + "."
        trained = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for name, p in trained if not name.startswith(head)], "lr": lr},
                  {"params": [p for name, p in trained if name.startswith(head)], "lr": lr * self.head_lr}]
        return [group for group in groups if group["params"]]

    def train(self, mode: bool = True) -> "TorchvisionNet":
        super().train(mode)
        if self.freeze == "backbone":  # a frozen backbone keeps its batch-norm statistics too
            for name, module in self.model.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(self.head_name):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey: the architectures take three channels
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)  # (B, 3, h, w)
        return self.model(x)  # (B, classes)
