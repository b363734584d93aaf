"""Which model arguments name an MLflow model rather than a file: answered without importing MLflow, so a command
given a checkpoint starts without it (about 1.6 s on a 2-core CPU)."""

SCHEMES = ("models:/", "runs:/")


def is_uri(model: str) -> bool:
    return str(model).startswith(SCHEMES)
