"""params.yaml's sections as typed settings, for the stages: a variant's model, its settings and its
TrainConfig (train: with the variant's own overrides), and the data source's DataConfig. Errors name the
key as the user types it (`train.epochs`, `models.cnn.channels`)."""

from dataclasses import dataclass, fields
from pathlib import Path

from imgpipe import params as P
from imgpipe import paths
from imgpipe.config import DataConfig, TrainConfig
from imgpipe.errors import ConfigError, InvalidSetting

# Every TrainConfig field but the seed, which comes from train.seeds: DVC expands that list into one
# train@<variant>-<seed> stage per variant and seed, and hands each stage its seed on the command line.
TRAIN_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name != "seed")
SOURCE_SETTINGS = tuple(f.name for f in fields(DataConfig))
PREPARE_SETTINGS = ("classes", "val_fraction", "test_fraction", "seed", "exclude")


@dataclass(frozen=True)
class Variant:
    """One entry of `train.variants`: which model, its architecture settings, how to train it."""

    name: str
    model: str  # a name in the model registry; defaults to the variant's own name
    settings: dict  # the model's architecture keyword arguments
    config: TrainConfig


def variant(params: dict, name: str, seed: int) -> Variant:
    """One variant's training settings for one seed (an entry of train.seeds)."""
    variants = P.get(params, "train.variants")
    if name not in variants:
        raise ConfigError(f"params.yaml: train.variants does not list {name!r} (it lists: {', '.join(variants)})")
    train_section = P.get(params, "train")
    for key in train_section:
        if key == "seed":
            raise ConfigError("params.yaml: train.seed: replaced by train.seeds, a list of seeds (e.g. seeds: [0])")
        if key not in (*TRAIN_SETTINGS, "variants", "seeds"):
            raise ConfigError(f"params.yaml: train.{key}: unknown setting; valid: variants, seeds, {', '.join(TRAIN_SETTINGS)}")
    spec = P.get(params, f"models.{name}", None) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"params.yaml: models.{name}: must map the variant's settings to values (e.g. channels: [16, 32]), "
                          f"got {spec!r}")
    spec = dict(spec)
    model = spec.pop("model", name)
    overrides = {key: spec.pop(key) for key in TRAIN_SETTINGS if key in spec}
    base = {key: value for key, value in train_section.items() if key not in ("variants", "seeds")}
    with P.reported_as("train"):
        TrainConfig(**base)  # train: must be valid even where a variant overrides it
    try:
        config = TrainConfig(**base | overrides, seed=seed)
    except InvalidSetting as error:
        section = f"models.{name}" if error.name in overrides else "train"
        raise ConfigError(f"params.yaml: {section}.{error.name}: {error.reason}") from None
    return Variant(name, model, spec, config)


def chosen_variant(params: dict, key: str, best: str) -> str:
    """The variant a setting such as label_issues.variant picks: the one it names (which train.variants must list),
    or where it is null `best`, the variant best on validation (imgpipe.evaluation.results.best_over_seeds). A
    default follows the variants the user chose; only a name the user set can be refused."""
    variants, name = P.get(params, "train.variants"), P.get(params, key, None)
    if name is not None and name not in variants:
        raise ConfigError(f"params.yaml: {key}: {name!r} is not among train.variants ({', '.join(variants)}); "
                          "name one of them, or null for the one best on validation")
    return best if name is None else name


def section_of(params: dict, name: str, key: str) -> str:
    """Where a variant's training setting comes from: `models.<name>` where it overrides `train`."""
    return f"models.{name}" if key in (P.get(params, f"models.{name}", None) or {}) else "train"


def require_augmentation_fits(params: dict, name: str, config: TrainConfig, image_shape: tuple[int, int, int]) -> None:
    """Crop padding and cutout smaller than the images: else a crop can be all padding, a cutout a whole image."""
    _, height, width = image_shape
    for key in ("crop_padding", "cutout"):
        value = getattr(config, key)
        if value >= min(height, width):
            raise ConfigError(f"params.yaml: {section_of(params, name, key)}.{key}: must be smaller than the "
                              f"{height}x{width} images, got {value}")


def _local(value: str | None) -> Path | None:
    """A path from params.yaml: paths.in_project's."""
    return None if value is None else paths.in_project(str(value))


def data_config(params: dict) -> DataConfig:
    """The source settings of `data:`; unknown keys fail listing the valid ones."""
    section = dict(P.get(params, "data"))
    for key in section:
        if key not in (*SOURCE_SETTINGS, *PREPARE_SETTINGS):
            raise ConfigError(f"params.yaml: data.{key}: unknown setting; valid: {', '.join(SOURCE_SETTINGS + PREPARE_SETTINGS)}")
    settings = {key: section[key] for key in SOURCE_SETTINGS if section.get(key) is not None}
    for key in ("path", "test_path"):
        if key in settings:
            settings[key] = _local(settings[key])
    if settings.get("mirror") == "":  # as CI writes an unset variable into it: no mirror, not the project's folder
        del settings["mirror"]
    mirror = settings.get("mirror")
    if mirror is not None and "://" not in str(mirror):
        settings["mirror"] = str(_local(mirror))
    for key in ("image_size", "background", "class_names"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    with P.reported_as("data"):
        return DataConfig(**settings)


