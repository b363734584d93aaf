"""Reading params.yaml, for the stages only: the library takes plain values, never this file.

Errors name the key as the user types it (`train.epochs`, `models.cnn.channels`).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from imgpipe import paths
from imgpipe.config import DataConfig, TrainConfig
from imgpipe.errors import ConfigError, InvalidSetting

# Every TrainConfig field but the seed, which comes from train.seeds: DVC expands that list into one
# train@<variant>-<seed> stage per variant and seed, and hands each stage its seed on the command line.
TRAIN_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name != "seed")
SOURCE_SETTINGS = tuple(f.name for f in fields(DataConfig))
PREPARE_SETTINGS = ("classes", "val_fraction", "test_fraction", "seed", "exclude")


def load(path: Path = paths.PARAMS) -> dict:
    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: must be a mapping of sections (data:, train:, models:)")
    return params


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


@contextmanager
def reported_as(section: str) -> Iterator[None]:
    """Report a library's InvalidSetting under its params.yaml key, e.g. `models.cnn.channels`."""
    try:
        yield
    except InvalidSetting as error:
        raise ConfigError(f"params.yaml: {section}.{error.name}: {error.reason}") from None


@dataclass(frozen=True)
class Variant:
    """One entry of `train.variants`: which model, its architecture settings, how to train it."""

    name: str
    model: str  # a name in the model registry; defaults to the variant's own name
    settings: dict  # the model's architecture keyword arguments
    config: TrainConfig


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


def variant(params: dict, name: str, seed: int) -> Variant:
    """One variant's training settings for one seed (an entry of train.seeds)."""
    variants = get(params, "train.variants")
    if name not in variants:
        raise ConfigError(f"params.yaml: train.variants does not list {name!r} (it lists: {', '.join(variants)})")
    train_section = get(params, "train")
    for key in train_section:
        if key == "seed":
            raise ConfigError("params.yaml: train.seed: replaced by train.seeds, a list of seeds (e.g. seeds: [0])")
        if key not in (*TRAIN_SETTINGS, "variants", "seeds"):
            raise ConfigError(f"params.yaml: train.{key}: unknown setting; valid: variants, seeds, {', '.join(TRAIN_SETTINGS)}")
    spec = dict(get(params, f"models.{name}", None) or {})
    model = spec.pop("model", name)
    overrides = {key: spec.pop(key) for key in TRAIN_SETTINGS if key in spec}
    base = {key: value for key, value in train_section.items() if key not in ("variants", "seeds")}
    with reported_as("train"):
        TrainConfig(**base)  # train: must be valid even where a variant overrides it
    try:
        config = TrainConfig(**base | overrides, seed=seed)
    except InvalidSetting as error:
        section = f"models.{name}" if error.name in overrides else "train"
        raise ConfigError(f"params.yaml: {section}.{error.name}: {error.reason}") from None
    return Variant(name, model, spec, config)


def section_of(params: dict, name: str, key: str) -> str:
    """Where a variant's training setting comes from: `models.<name>` where it overrides `train`."""
    return f"models.{name}" if key in (get(params, f"models.{name}", None) or {}) else "train"


def _local(value: str | None) -> Path | None:
    """A path from params.yaml, relative to the project root."""
    return None if value is None else paths.ROOT / Path(str(value)).expanduser()


def data_config(params: dict) -> DataConfig:
    """The source settings of `data:`; unknown keys fail listing the valid ones."""
    section = dict(get(params, "data"))
    for key in section:
        if key not in (*SOURCE_SETTINGS, *PREPARE_SETTINGS):
            raise ConfigError(f"params.yaml: data.{key}: unknown setting; valid: {', '.join(SOURCE_SETTINGS + PREPARE_SETTINGS)}")
    settings = {key: section[key] for key in SOURCE_SETTINGS if section.get(key) is not None}
    for key in ("path", "test_path"):
        if key in settings:
            settings[key] = _local(settings[key])
    mirror = settings.get("mirror")
    if mirror is not None and "://" not in str(mirror):
        settings["mirror"] = str(_local(mirror))
    for key in ("image_size", "background", "class_names"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    with reported_as("data"):
        return DataConfig(**settings)


def tracking(params: dict) -> tuple[str, bool]:
    """(MLflow experiment name, whether a tracking failure may be ignored) from `tracking:`."""
    experiment = get(params, "tracking.experiment", None) or get(params, "data.dataset")
    optional = get(params, "tracking.optional", False)
    if not isinstance(optional, bool):
        raise ConfigError(f"params.yaml: tracking.optional: must be true or false, got {optional!r}")
    return str(experiment), optional
