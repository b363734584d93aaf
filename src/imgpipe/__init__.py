"""imgpipe: a reproducible image-classification pipeline (DVC stages, PyTorch models, MLflow tracking)."""

__version__ = "0.1.0"
