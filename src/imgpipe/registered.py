"""A model from MLflow (`models:/imgpipe-digits@champion`, `runs:/<id>/model`) as predict uses a checkpoint:
a module taking uint8 images (B, C, H, W), and the preprocessing its images need (class names, image
shape, background), which the report stage stored in the logged model's metadata."""

import torch
from torch import nn

from imgpipe import tracking
from imgpipe.errors import ImgpipeError

SCHEMES = ("models:/", "runs:/")


def is_uri(model: str) -> bool:
    return str(model).startswith(SCHEMES)


class Exported(nn.Module):
    """The loaded model (in MLflow's default PyTorch format, a torch.export program, traced in eval mode on
    the CPU) as a plain module: such a program takes neither eval() nor to(), so it is held outside the
    module tree, and it always runs on the CPU."""

    def __init__(self, program):
        super().__init__()
        self._program = [program]  # a list: not a child module, so eval() and to() leave it alone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._program[0](pixels.cpu())


def load(uri: str) -> tuple[nn.Module, dict]:
    """The model at an MLflow URI and its preprocessing: {class_names, image_shape, background}."""
    tracking.store_client()  # the store the stages use (MLFLOW_TRACKING_URI, else the project's mlflow.db)
    try:
        import mlflow.pytorch

        preprocessing = (mlflow.models.get_model_info(uri).metadata or {}).get("imgpipe")
        program = mlflow.pytorch.load_model(uri)
    except Exception as error:  # MLflow raises many kinds: no such model or alias, store unreachable
        raise ImgpipeError(f"{uri}: cannot load it from MLflow at {tracking.tracking_uri()} "
                           f"({type(error).__name__}: {' '.join(str(error).split())[:200]})") from None
    if not preprocessing:
        raise ImgpipeError(f"{uri}: logged by an older imgpipe, without the preprocessing predict needs (class names, "
                           "image shape); give its checkpoint instead (models/<variant>/seed<seed>.pt)")
    return Exported(program), preprocessing
