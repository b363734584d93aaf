"""Reading params.yaml, for the stages only: the library takes plain values, never this file.

Errors name the key as the user types it (`train.epochs`, `models.cnn.channels`).
"""

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ruamel.yaml import YAML, YAMLError

from imgpipe import paths
from imgpipe.errors import ConfigError, InvalidSetting


def load(path: Path = paths.PARAMS) -> dict:
    """params.yaml as DVC reads it (ruamel.yaml, YAML 1.2): `lr: 1e-3` is a number and `010` is ten to both, as
    `dvc params diff` and `dvc exp show` show them (PyYAML's YAML 1.1 read the text '1e-3', and eight)."""
    try:
        params = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: must be a mapping of sections (data:, train:, models:)")
    return _dates_as_text(params)


def _dates_as_text(node):
    """A date (tracking.experiment: 2026-12-04) is the text it was written as: no setting takes a date, and the
    run's records (its params hash, MLflow's params) are JSON."""
    if isinstance(node, dict):
        return {key: _dates_as_text(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_dates_as_text(value) for value in node]
    return node.isoformat() if isinstance(node, datetime.date) else node


def get(params: dict, key: str, default=...):
    """The value at a dotted key; a missing key fails naming it unless a default is given."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise ConfigError(f"params.yaml: {key} is missing")
        node = node[part]
    return node


def whole_number(params: dict, key: str, minimum: int = 1) -> int:
    """A count from params.yaml, e.g. evaluate.top_k; fails naming the key."""
    value = get(params, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"params.yaml: {key}: must be a whole number >= {minimum}, got {value!r}")
    return value


def one_of(params: dict, key: str, options: tuple[str, ...]) -> str:
    """A choice from params.yaml, e.g. label_issues.quality; fails naming the key and the options."""
    value = get(params, key)
    if value not in options:
        raise ConfigError(f"params.yaml: {key}: must be one of {', '.join(options)}, got {value!r}")
    return value


@contextmanager
def reported_as(section: str) -> Iterator[None]:
    """Report a library's InvalidSetting under its params.yaml key, e.g. `models.cnn.channels`."""
    try:
        yield
    except InvalidSetting as error:
        raise ConfigError(f"params.yaml: {section}.{error.name}: {error.reason}") from None


def seeds(params: dict) -> list[int]:
    """train.seeds: the seeds every variant is trained with, one training (and MLflow run) each."""
    value = get(params, "train.seeds")
    if not (isinstance(value, list) and value and len(set(map(str, value))) == len(value)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
        raise ConfigError(f"params.yaml: train.seeds: must list distinct whole numbers >= 0, e.g. [0, 1, 2], got {value!r}")
    return value


def seed_argument(text: str) -> int:
    """A stage's seed from its command line (dvc.yaml passes one entry of train.seeds)."""
    if not text.isdigit():
        raise ConfigError(f"the seed must be a whole number >= 0 (one of params.yaml train.seeds), got {text!r}")
    return int(text)


def tracking(params: dict) -> tuple[str, bool]:
    """(MLflow experiment name, whether a tracking failure may be ignored) from `tracking:`."""
    experiment = get(params, "tracking.experiment", None) or get(params, "data.dataset")
    optional = get(params, "tracking.optional", False)
    if not isinstance(optional, bool):
        raise ConfigError(f"params.yaml: tracking.optional: must be true or false, got {optional!r}")
    return str(experiment), optional
