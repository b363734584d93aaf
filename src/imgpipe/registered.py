"""A model from MLflow (`models:/imgpipe-digits@champion`, `runs:/<id>/model`) as predict uses a checkpoint:
a module taking uint8 images (B, C, H, W), and the preprocessing its images need (class names, image
shape, background), which the report stage stored as the logged model's config (imgpipe.serving)."""

from torch import nn

from imgpipe import tracking
from imgpipe.errors import ImgpipeError

SCHEMES = ("models:/", "runs:/")


def is_uri(model: str) -> bool:
    return str(model).startswith(SCHEMES)


def load(uri: str) -> tuple[nn.Module, dict]:
    """The model at an MLflow URI and its preprocessing: {class_names, image_shape, background, temperature}
    (temperature: recorded since calibration; the network applies it already)."""
    tracking.store_client()  # the store the stages use (MLFLOW_TRACKING_URI, else the project's mlflow.db)
    try:
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(uri)
    except Exception as error:  # MLflow raises many kinds: no such model or alias, store unreachable
        raise ImgpipeError(f"{uri}: cannot load it from MLflow at {tracking.tracking_uri()} "
                           f"({type(error).__name__}: {' '.join(str(error).split())[:200]})") from None
    from imgpipe.serving import ImageClassifier

    try:
        served = model.unwrap_python_model()
    except mlflow.exceptions.MlflowException:  # another flavour: an older imgpipe logged torch's own format
        served = None
    if not isinstance(served, ImageClassifier):
        raise ImgpipeError(f"{uri}: not a model this imgpipe logged (an older one's, or another kind); give its "
                           "checkpoint instead (models/<variant>/seed<seed>.pt)")
    return served.network, served.preprocessing
