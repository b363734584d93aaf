"""Every file the pipeline reads or writes, in one place (dvc.yaml names the same paths)."""

import os
from pathlib import Path


def _project_root() -> Path:
    """The folder holding dvc.yaml: DVC runs stages there, but a user may call a stage from a subfolder."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


ROOT = _project_root()
PARAMS = ROOT / "params.yaml"
DVC_LOCK = ROOT / "dvc.lock"

DOWNLOADS = ROOT / "data" / "downloads"  # kept across fetch runs: not a DVC output
RAW = ROOT / "data" / "raw"
PREPARED = ROOT / "data" / "prepared"
MODELS = ROOT / "models"
METRICS = ROOT / "metrics"
DATA_CARD = METRICS / "data_card.json"
REPORTS = ROOT / "reports"
FIGURES = REPORTS / "figures"

# Queued experiments (`dvc queue start`) run in copies of the project under .dvc/tmp/exps/; DVC_ROOT,
# which DVC sets for every stage it runs, names the project they belong to, so their MLflow runs
# land in the project's own store rather than in a copy that is thrown away.
TRACKING_ROOT = Path(os.environ.get("DVC_ROOT") or ROOT)
MLFLOW_DB = TRACKING_ROOT / "mlflow.db"
MLFLOW_ARTIFACTS = TRACKING_ROOT / "mlruns"  # MLflow's own default name, beside the store


def checkpoint(variant: str) -> Path:
    return MODELS / f"{variant}.pt"


def resume_state(variant: str) -> Path:
    """A training's state after its last finished epoch, removed when it completes."""
    return MODELS / ".resume" / f"{variant}.pt"


def train_metrics(variant: str) -> Path:
    return METRICS / "train" / f"{variant}.json"


def curves(variant: str) -> Path:
    """Per-epoch train and val curves, loss.csv and accuracy.csv: DVC plots."""
    return METRICS / "curves" / variant


def test_metrics(variant: str) -> Path:
    return METRICS / "test" / f"{variant}.json"


def predictions(variant: str) -> Path:
    """One row per test image (index, actual, predicted, confidence): the confusion-matrix plot."""
    return METRICS / "predictions" / f"{variant}.csv"


def class_scores(variant: str) -> Path:
    """Precision, recall, F1 and support per class on the test split."""
    return METRICS / "classes" / f"{variant}.csv"


def confusion(variant: str) -> Path:
    """The confusion matrix as a count table with class names."""
    return METRICS / "confusion" / f"{variant}.csv"


def report() -> Path:
    return REPORTS / "report.md"


def figure(name: str) -> Path:
    """A PNG of the report: samples, curves, confusion_<variant>, misclassified_<variant>."""
    return FIGURES / f"{name}.png"
