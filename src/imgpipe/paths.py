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

RAW = ROOT / "data" / "raw"
PREPARED = ROOT / "data" / "prepared"
MODELS = ROOT / "models"
METRICS = ROOT / "metrics"
DATA_CARD = METRICS / "data_card.json"
LABEL_ISSUES = METRICS / "label_issues.csv"  # possibly mislabelled images, surest first, written by label_issues
LABEL_ISSUES_SUMMARY = METRICS / "label_issues.json"  # how many, per split and class, and how they were found
VARIANTS = METRICS / "variants.json"  # each variant over all its seeds (mean, std), written by the report
REPORTS = ROOT / "reports"
FIGURES = REPORTS / "figures"
MLFLOW_RUNS = REPORTS / "mlflow_runs.json"  # the MLflow run of each variant and seed, written by the publish stage
SWEEP_REPORT = REPORTS / "sweep.md"  # the last sweep's summary (python -m imgpipe.sweep): not a pipeline output
SWEEP_DB = ROOT / "sweep.db"  # Optuna's studies, unless sweep.storage names another database
SWEEPS = ROOT / "sweeps"  # sweeps/<study>/trial-<n>.pt: the checkpoint of each completed trial

# Queued and --temp experiments (`dvc exp run --queue`, `--temp`) run in copies of the project under .dvc/tmp/exps/;
# DVC_ROOT, which DVC sets for every stage it runs, names the project they belong to. What outlives a run lives
# there, not in a copy that is thrown away: the MLflow store, and the downloads (an offline machine has them there).
PROJECT_ROOT = Path(os.environ.get("DVC_ROOT") or ROOT)
MLFLOW_DB = PROJECT_ROOT / "mlflow.db"
DOWNLOADS = PROJECT_ROOT / "data" / "downloads"  # kept across fetch runs: not a DVC output


def in_project(given: str | Path) -> Path:
    """A path a user gave (params.yaml, IMGPIPE_MIRROR), relative to the project root; an absolute one as it is. In a
    queued or --temp experiment's copy, one the copy lacks (an untracked folder, a mirror beside the project:
    ../shared/...) is the project's own."""
    given = Path(given).expanduser()
    return ROOT / given if (ROOT / given).exists() else PROJECT_ROOT / given


# A variant is trained once per seed of train.seeds: each (variant, seed) has its own files, in a
# folder per variant, e.g. models/cnn/seed0.pt and metrics/test/cnn/seed0.json.


def checkpoint(variant: str, seed: int) -> Path:
    return MODELS / variant / f"seed{seed}.pt"


def resume_state(variant: str, seed: int) -> Path:
    """A training's state after its last finished epoch, removed once its checkpoint and metrics are written."""
    return MODELS / ".resume" / variant / f"seed{seed}.pt"


def train_metrics(variant: str, seed: int) -> Path:
    return METRICS / "train" / variant / f"seed{seed}.json"


def curves(variant: str, seed: int) -> Path:
    """Per-epoch train and val curves, loss.csv and accuracy.csv: DVC plots."""
    return METRICS / "curves" / variant / f"seed{seed}"


def test_metrics(variant: str, seed: int) -> Path:
    return METRICS / "test" / variant / f"seed{seed}.json"


def predictions(variant: str, seed: int) -> Path:
    """One row per test image (index, actual, predicted, confidence): the confusion-matrix plot."""
    return METRICS / "predictions" / variant / f"seed{seed}.csv"


def class_scores(variant: str, seed: int) -> Path:
    """Precision, recall, F1 and support per class on the test split."""
    return METRICS / "classes" / variant / f"seed{seed}.csv"


def confusion(variant: str, seed: int) -> Path:
    """The confusion matrix as a count table with class names."""
    return METRICS / "confusion" / variant / f"seed{seed}.csv"


def reliability(variant: str, seed: int) -> Path:
    """Confidence bins on the test split, before and after temperature scaling: the reliability diagram."""
    return METRICS / "reliability" / variant / f"seed{seed}.csv"


def saliency(variant: str, seed: int) -> Path:
    """Saliency maps of a few test images (their index, heat 0..255, the method): the report's overlays."""
    return METRICS / "saliency" / variant / f"seed{seed}.npz"


def evaluation_files(variant: str, seed: int) -> list[Path]:
    """Everything the evaluate stage writes of one variant and seed."""
    return [test_metrics(variant, seed), predictions(variant, seed), class_scores(variant, seed),
            confusion(variant, seed), reliability(variant, seed), saliency(variant, seed)]


# The evaluate stage's folders (one DVC output each), and the record of what each result in them was made from:
# a model whose inputs are unchanged keeps its results (see imgpipe.evaluation.freshness).
EVALUATION_FOLDERS = tuple(path.parent.parent for path in evaluation_files("v", 0))
EVALUATED = METRICS / "evaluated.json"


def report() -> Path:
    return REPORTS / "report.md"


def figure(name: str) -> Path:
    """A PNG of the report: samples, curves, reliability, confusion_<variant>, misclassified_<variant>,
    saliency_<variant>, label_issues."""
    return FIGURES / f"{name}.png"
