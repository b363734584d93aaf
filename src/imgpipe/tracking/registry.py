"""The registered model imgpipe-<experiment>: the variant best on validation registered as its `candidate`,
promoted to `champion` by hand (imgpipe.promote), and a registered or logged model (`models:/imgpipe-digits@champion`,
`runs:/<id>/model`) loaded as predict uses a checkpoint: a module taking uint8 images (B, C, H, W), and the
preprocessing its images need."""

from typing import TYPE_CHECKING

import mlflow

from imgpipe.errors import ImgpipeError
from imgpipe.tracking.runs import MODEL_URI
from imgpipe.tracking.store import store_client, store_lock, tracking_uri

if TYPE_CHECKING:
    from torch import nn

    from imgpipe.serving.preprocessing import Preprocessing

CANDIDATE, CHAMPION = "candidate", "champion"  # aliases of registered versions (MLflow's stages are deprecated)
FROM_RUN = ("imgpipe.variant", "imgpipe.seed", "imgpipe.data_fingerprint", "imgpipe.dvc_experiment", "mlflow.source.git.commit")


def registered_name(experiment: str) -> str:
    return f"imgpipe-{experiment}"


@store_lock()
def register_candidate(experiment: str, run_id: str, figures: dict[str, float]) -> str:
    """Register a run's model as a version of imgpipe-<experiment> with the alias `candidate`, tagged with
    where it came from (the run's variant, seed, data fingerprint, DVC experiment, commit) and `figures`.
    A run registered before keeps its version. Returns the version."""
    client = store_client()
    name = registered_name(experiment)
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        version = found[0].version
    else:
        run_tags = client.get_run(run_id).data.tags
        tags = {key: run_tags[key] for key in FROM_RUN if key in run_tags} | {key: str(value) for key, value in figures.items()}
        version = mlflow.register_model(run_tags.get(MODEL_URI, f"runs:/{run_id}/model"), name, tags=tags).version
    client.set_registered_model_alias(name, CANDIDATE, version)
    return str(version)


SCHEMES = ("models:/", "runs:/")


def is_uri(model: str) -> bool:
    return str(model).startswith(SCHEMES)


def load(uri: str) -> tuple["nn.Module", "Preprocessing"]:
    """The model at an MLflow URI and its preprocessing (its temperature: the network applies it already)."""
    store_client()  # the store the stages use (MLFLOW_TRACKING_URI, else the project's mlflow.db)
    try:
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(uri)
    except Exception as error:  # MLflow raises many kinds: no such model or alias, store unreachable
        raise ImgpipeError(f"{uri}: cannot load it from MLflow at {tracking_uri()} "
                           f"({type(error).__name__}: {' '.join(str(error).split())[:200]})") from None
    from imgpipe.serving.model import ImageClassifier  # here: torch's import, for a logged model only

    try:
        served = model.unwrap_python_model()
    except mlflow.exceptions.MlflowException:  # another flavour: an older imgpipe logged torch's own format
        served = None
    if not isinstance(served, ImageClassifier):
        raise ImgpipeError(f"{uri}: not a model this imgpipe logged (an older one's, or another kind); give its "
                           "checkpoint instead (models/<variant>/seed<seed>.pt)")
    return served.network, served.preprocessing
