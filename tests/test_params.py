import os
import subprocess
import sys

import pytest

from imgpipe import params as P
from imgpipe import settings
from imgpipe.errors import ConfigError

BASE = {
    "data": {"dataset": "digits"},
    "train": {"variants": ["linear", "cnn", "wide"], "seeds": [0, 1], "epochs": 5, "lr": 0.01, "device": "cpu"},
    "models": {"linear": {}, "cnn": {"channels": [8], "epochs": 9}, "wide": {"model": "cnn", "channels": [64]}},
}


def test_variant_takes_train_settings_and_its_own_overrides():
    cnn = settings.variant(BASE, "cnn", 1)
    assert (cnn.model, cnn.settings) == ("cnn", {"channels": [8]})
    assert (cnn.config.epochs, cnn.config.lr, cnn.config.seed) == (9, 0.01, 1)
    assert settings.variant(BASE, "linear", 0).config.epochs == 5


@pytest.mark.parametrize("spec", [[16, 32], "wide"])
def test_a_variants_settings_that_are_not_a_mapping_are_refused_in_one_line(spec):
    with pytest.raises(ConfigError) as error:
        settings.variant(BASE | {"models": {"cnn": spec}}, "cnn", 0)
    assert str(error.value) == f"params.yaml: models.cnn: must map the variant's settings to values (e.g. channels: [16, 32]), got {spec!r}"


def test_variant_may_name_another_model():
    wide = settings.variant(BASE, "wide", 0)
    assert (wide.model, wide.settings) == ("cnn", {"channels": [64]})


@pytest.mark.parametrize("patch, message", [
    ({"train": {"epochs": 0}}, "params.yaml: train.epochs: must be a whole number >= 1, got 0"),
    ({"train": {"lr": "fast"}}, "params.yaml: train.lr: must be a number > 0, got 'fast'"),
    ({"train": {"device": "tpu"}}, "params.yaml: train.device: must be one of auto, cuda, mps, cpu, got 'tpu'"),
    ({"train": {"epoch": 3}}, "params.yaml: train.epoch: unknown setting"),
    ({"models": {"cnn": {"epochs": -1}}}, "params.yaml: models.cnn.epochs: must be a whole number >= 1, got -1"),
    ({"train": {"seed": 0}}, "params.yaml: train.seed: replaced by train.seeds, a list of seeds (e.g. seeds: [0])"),
    ({"train": {"ema": 0.99, "bn_images": 0}}, "params.yaml: train.bn_images: must be > 0 with train.ema"),
    ({"models": {"cnn": {"epochs": 9, "ema": 0.9}}, "train": {"bn_images": 0}}, "params.yaml: train.bn_images: must be > 0 with train.ema"),
])
def test_bad_settings_name_their_key(patch, message):
    params = {section: dict(values) for section, values in BASE.items()}
    for section, values in patch.items():
        params[section] = params[section] | values
    with pytest.raises(ConfigError) as caught:
        settings.variant(params, "cnn", 0)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("section, key, value, refused", [
    ("train", "cutout", 7, False), ("train", "cutout", 8, True), ("models.cnn", "cutout", 100, True),
    ("train", "crop_padding", 7, False), ("models.cnn", "crop_padding", 8, True)])
def test_crops_and_cutout_as_large_as_the_image_are_refused_naming_their_key(section, key, value, refused):
    params = {name: dict(values) for name, values in BASE.items()}
    params["models"] = {**params["models"], "cnn": dict(params["models"]["cnn"])}
    (params["train"] if section == "train" else params["models"]["cnn"])[key] = value
    variant = settings.variant(params, "cnn", 0)
    if not refused:  # a crop can still hold a pixel of the image; a cutout leaves some of it
        settings.require_augmentation_fits(params, "cnn", variant.config, (1, 8, 9))
        return
    with pytest.raises(ConfigError) as caught:
        settings.require_augmentation_fits(params, "cnn", variant.config, (1, 8, 9))
    assert str(caught.value) == f"params.yaml: {section}.{key}: must be smaller than the 8x9 images, got {value}"


def test_a_variant_not_listed_is_refused():
    with pytest.raises(ConfigError, match="train.variants does not list 'mlp'"):
        settings.variant(BASE, "mlp", 0)


def test_missing_key_is_named():
    with pytest.raises(ConfigError, match="params.yaml: data.val_fraction is missing"):
        P.get(BASE, "data.val_fraction")


def test_unreadable_params_file_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        P.load(path)
    path.write_text("train: {epochs: 3}  # é\n", encoding="cp1252")
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8 text"):
        P.load(path)


def test_params_are_read_as_dvc_reads_them(tmp_path):
    """YAML 1.2, as DVC's ruamel.yaml: what `dvc params diff` shows is what the stage gets; a date is its text."""
    from dvc.utils.serialize import parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: 010\n  nesterov: true\ntracking:\n  experiment: 2026-12-04\n")
    params = P.load(path)
    assert params == {"train": {"lr": 0.001, "epochs": 10, "nesterov": True}, "tracking": {"experiment": "2026-12-04"}}
    dvc = parse_yaml(path.read_text(), str(path))
    assert dvc["train"] == params["train"]


def test_data_config_resolves_local_paths_and_refuses_unknown_keys():
    from imgpipe import paths

    config = settings.data_config({"data": {"dataset": "csv", "path": "signs/train.csv", "image_size": [28, 28],
                                     "classes": [0, 1], "val_fraction": 0.1}})
    assert config.path == paths.ROOT / "signs/train.csv" and config.image_size == (28, 28)
    with pytest.raises(ConfigError, match="params.yaml: data.label: unknown setting; valid: dataset, path"):
        settings.data_config({"data": {"dataset": "csv", "label": "y"}})
    with pytest.raises(ConfigError, match=r"params.yaml: data.channels: must be 1, 3 or null, got 4"):
        settings.data_config({"data": {"dataset": "imagefolder", "channels": 4}})


def test_in_an_experiments_copy_a_path_it_lacks_is_the_projects_own(tmp_path, monkeypatch):
    """`dvc exp run --queue/--temp` runs in .dvc/tmp/exps/.../tmpXYZ/, a copy of the tracked files: README's mirror
    beside the project (../shared/...) and an untracked folder resolve in the project DVC_ROOT names; what the copy
    holds is its own; the downloads are kept in the project."""
    from imgpipe import paths

    project, copy = tmp_path / "project", tmp_path / "project/.dvc/tmp/exps/standalone/tmpxyz"
    for folder in (copy / "tracked", project / "photos", tmp_path / "shared/fashion"):
        folder.mkdir(parents=True)
    monkeypatch.setattr(paths, "ROOT", copy)
    monkeypatch.setattr(paths, "PROJECT_ROOT", project)
    config = settings.data_config({"data": {"dataset": "fashion_mnist", "mirror": "../shared/fashion"}})
    assert config.mirror == str(project / "../shared/fashion")
    assert settings.data_config({"data": {"dataset": "imagefolder", "path": "photos"}}).path == project / "photos"
    assert settings.data_config({"data": {"dataset": "imagefolder", "path": "tracked"}}).path == copy / "tracked"
    assert settings.data_config({"data": {"dataset": "fashion_mnist", "mirror": ""}}).mirror is None  # not the project folder
    (copy / "dvc.yaml").write_text("stages: {}\n")
    shown = subprocess.run([sys.executable, "-c", "from imgpipe import paths; print(paths.ROOT, paths.DOWNLOADS, paths.MLFLOW_DB)"],
                           cwd=copy, env={**os.environ, "DVC_ROOT": str(project)}, capture_output=True, text=True, check=True)
    assert shown.stdout.split() == [str(copy), str(project / "data/downloads"), str(project / "mlflow.db")]


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1], ["a"], 3, [True]])
def test_seeds_must_be_a_list_of_distinct_whole_numbers(seeds):
    with pytest.raises(ConfigError, match=r"params.yaml: train.seeds: must list distinct whole numbers >= 0, e.g. \[0, 1, 2\]"):
        P.seeds({"train": {"seeds": seeds}})
    assert P.seeds({"train": {"seeds": [2, 0, 1]}}) == [2, 0, 1]


def test_a_stage_seed_is_a_whole_number():
    assert P.seed_argument("12") == 12
    with pytest.raises(ConfigError, match="the seed must be a whole number >= 0"):
        P.seed_argument("-1")
