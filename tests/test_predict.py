"""predict on image files: the same answers as evaluate on the same images; bad files named and skipped.
Its command line runs in-process here (main(argv)); tests/test_pipeline.py runs `python -m imgpipe.predict`."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from datafiles import write_image_folder
from PIL import Image

from imgpipe.config import TrainConfig
from imgpipe.evaluation.evaluate import evaluate
from imgpipe.models.checkpoint import load_checkpoint, save_checkpoint
from imgpipe.predict import main, read_images
from imgpipe.training.loop import train


def test_predict_on_exported_test_images_matches_evaluate(digits_prepared, tmp_path, capsys):
    config = TrainConfig(epochs=2, device="cpu")
    model = train("linear", {}, digits_prepared, config).model
    checkpoint = tmp_path / "linear.pt"
    save_checkpoint(checkpoint, model, model_name="linear", model_settings={}, image_shape=digits_prepared.image_shape,
                    class_names=digits_prepared.class_names, config=config)
    expected = evaluate(model, digits_prepared.test, torch.device("cpu")).metrics["accuracy"]
    test = digits_prepared.test
    write_image_folder(tmp_path / "images", test.images, test.labels, test.class_names)
    (tmp_path / "images" / "3" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "images" / "notes.txt").write_text("not an image, not listed")

    output = tmp_path / "predictions.csv"
    status = main(["--model", str(checkpoint), str(tmp_path / "images"), "--output", str(output), "--top-k", "3"])
    stderr = capsys.readouterr().err
    assert status == 1  # one file could not be read
    assert "broken.png: not a readable image" in stderr and "notes.txt" not in stderr
    table = pd.read_csv(output, dtype=str)
    assert list(table.columns) == ["path", "predicted", "confidence", "top2", "top2_confidence", "top3", "top3_confidence"]
    assert len(table) == len(digits_prepared.test)
    actual = table["path"].map(lambda path: path.split("/")[-2])
    assert (actual == table["predicted"]).mean() == expected
    confidence = table[["confidence", "top2_confidence", "top3_confidence"]].astype(float)
    assert (confidence.diff(axis=1).iloc[:, 1:] <= 0).all().all()  # best first


def test_the_command_given_a_checkpoint_starts_without_mlflow_or_matplotlib(digits_prepared, tmp_path):
    """Their imports took about 2 s of the command's start on a 2-core CPU, and a checkpoint needs neither: MLflow only
    for a models:/ or runs:/ URI, matplotlib only for --explain. Python's own import log of a real run says which ran."""
    config = TrainConfig(epochs=1, device="cpu")
    model = train("linear", {}, digits_prepared, config).model
    checkpoint = tmp_path / "linear.pt"
    save_checkpoint(checkpoint, model, model_name="linear", model_settings={}, image_shape=digits_prepared.image_shape,
                    class_names=digits_prepared.class_names, config=config)
    test = digits_prepared.test
    write_image_folder(tmp_path / "images", test.images[:3], test.labels[:3], test.class_names)
    output = tmp_path / "predictions.csv"
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "imgpipe.predict", "--model", str(checkpoint),
                           str(tmp_path / "images"), "--output", str(output)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(output)) == 3
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and not imported & {"mlflow", "matplotlib"}, sorted(imported & {"mlflow", "matplotlib"})


def test_images_are_converted_resized_and_laid_on_the_background(tmp_path):
    rgba = np.zeros((20, 10, 4), dtype=np.uint8)  # fully transparent, 10 wide and 20 high
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    files, images, errors = read_images([tmp_path / "clear.png", tmp_path / "missing.png"], (3, 8, 8), (10, 20, 30))
    assert files == [tmp_path / "clear.png"] and images.shape == (1, 3, 8, 8)
    assert images[0, :, 0, 0].tolist() == [10, 20, 30]
    assert len(errors) == 1 and "missing.png" in errors[0]


def test_a_missing_model_fails_in_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "none.pt"), str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.pt'}: not found; train the model first (dvc repro)"


@pytest.mark.parametrize("top_k", ["0", "x"])
def test_a_bad_top_k_is_a_usage_error(tmp_path, top_k, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--model", "m.pt", "--top-k", top_k, str(tmp_path)])
    assert exit.value.code == 2 and "--top-k" in capsys.readouterr().err


def test_nothing_written_takes_the_place_of_a_folder_or_an_image_read(digits_prepared, tmp_path, capsys, monkeypatch):
    config = TrainConfig(epochs=1, device="cpu")
    checkpoint = tmp_path / "cnn.pt"
    save_checkpoint(checkpoint, train("cnn", {"channels": [4]}, digits_prepared, config).model, model_name="cnn",
                    model_settings={"channels": [4]}, image_shape=digits_prepared.image_shape,
                    class_names=digits_prepared.class_names, config=config)
    images = tmp_path / "images"  # a flat folder of photos
    images.mkdir()
    for index, image in enumerate(digits_prepared.test.images[:4]):
        Image.fromarray(image[0]).save(images / f"{index}.png")
    before = {path: path.read_bytes() for path in images.rglob("*") if path.is_file()}
    image = sorted(before)[0]
    (tmp_path / "notes.txt").write_text("a file")
    import imgpipe.predict

    def read_images(*args, **kwargs):
        raise AssertionError("an image was read before the refusal")

    monkeypatch.setattr(imgpipe.predict, "read_images", read_images)  # every refusal comes before the images are read
    for arguments, message in [
        (["--output", str(images)], f"error: {images}: is a folder; --output names the CSV file to write"),
        (["--output", str(image)], f"error: {image}: is one of the images to classify; --output names the CSV file to write"),
        (["--explain", str(tmp_path / "notes.txt")], f"error: {tmp_path / 'notes.txt'}: is a file; --explain names the folder"),
        (["--explain", str(images)], f"error: --explain {images}: the overlay {image} would replace the image {image}; "
                                     "choose another folder"),
        # Refused before any image is read, not after every one is classified: these too.
        (["--output", str(tmp_path / "notes.txt" / "out.csv")],
         f"error: --output {tmp_path / 'notes.txt' / 'out.csv'}: {tmp_path / 'notes.txt'} is a file, not a folder"),
        (["--explain", str(tmp_path / "notes.txt" / "maps")],
         f"error: --explain {tmp_path / 'notes.txt' / 'maps'}: {tmp_path / 'notes.txt'} is a file, not a folder"),
        (["--output", str(checkpoint)], f"error: {checkpoint}: is the model's checkpoint; --output names the CSV file"),
    ]:
        assert main(["--model", str(checkpoint), str(images), *arguments]) == 1
        assert capsys.readouterr().err.strip().startswith(message)
        assert {path: path.read_bytes() for path in images.rglob("*") if path.is_file()} == before  # nothing lost
    assert load_checkpoint(checkpoint)  # still the model
    # A file spelled otherwise (a case-insensitive disk's IMG_1.PNG for IMG_1.png, here a hard link) is the same file.
    os.link(image, tmp_path / "linked.png")
    assert main(["--model", str(checkpoint), str(images), "--output", str(tmp_path / "linked.png")]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'linked.png'}: is one of the images to classify")


def test_hidden_files_are_passed_over_and_a_name_that_is_not_utf8_is_shown(digits_prepared, tmp_path, capsys):
    """As training's image folders pass hidden files over (macOS's ._x.png beside each photo, a .thumbnails/ folder);
    a file name from an old zip (Latin-1 bytes) is one row, its stray byte shown, not the whole run's error."""
    config = TrainConfig(epochs=1, device="cpu")
    checkpoint = tmp_path / "cnn.pt"
    save_checkpoint(checkpoint, train("cnn", {"channels": [4]}, digits_prepared, config).model, model_name="cnn",
                    model_settings={"channels": [4]}, image_shape=digits_prepared.image_shape,
                    class_names=digits_prepared.class_names, config=config)
    images = tmp_path / "images"
    (images / ".thumbnails").mkdir(parents=True)
    Image.fromarray(digits_prepared.test.images[0, 0]).save(images / "a.png")
    Image.fromarray(digits_prepared.test.images[1, 0]).save(images / ".thumbnails" / "a.png")
    (images / "._a.png").write_bytes(b"AppleDouble metadata, not an image")
    with open(os.path.join(os.fsencode(images), b"caf\xe9.png"), "wb") as file:
        Image.fromarray(digits_prepared.test.images[2, 0]).save(file, format="PNG")
    assert main(["--model", str(checkpoint), str(images), "--output", str(tmp_path / "out.csv")]) == 0
    assert pd.read_csv(tmp_path / "out.csv")["path"].tolist() == [str(images / "a.png"), str(images / "caf\\xe9.png")]


def test_explain_writes_an_overlay_of_where_the_model_looked_per_image(digits_prepared, tmp_path, capsys):
    config = TrainConfig(epochs=1, device="cpu")
    model = train("cnn", {"channels": [8]}, digits_prepared, config).model
    checkpoint = tmp_path / "cnn.pt"
    save_checkpoint(checkpoint, model, model_name="cnn", model_settings={"channels": [8]}, image_shape=digits_prepared.image_shape,
                    class_names=digits_prepared.class_names, config=config)
    test = digits_prepared.test
    images = tmp_path / "images"
    for folder, image in (("cat", test.images[0]), ("dog", test.images[1]), ("dog/old", test.images[2])):  # one name, three images
        (images / folder).mkdir(parents=True)
        Image.fromarray(image[0]).save(images / folder / "001.png")
    Image.fromarray(test.images[3][0]).save(images / "dog" / "001.bmp")  # one stem, two formats
    table = tmp_path / "predictions.csv"
    assert main(["--model", str(checkpoint), str(images), "--explain", str(tmp_path / "overlays"), "--output", str(table)]) == 0
    assert "4 overlays (HiResCAM on net.features.3 (ReLU)) -> " in capsys.readouterr().err
    overlays = sorted(path.relative_to(tmp_path / "overlays").as_posix() for path in (tmp_path / "overlays").rglob("*.png"))
    assert overlays == ["cat/001.png", "dog/001.bmp.png", "dog/001.png.png", "dog/old/001.png"]
    rows = pd.read_csv(table)
    assert dict(zip(rows["path"], rows["overlay"])) == {str(images / "cat/001.png"): str(tmp_path / "overlays/cat/001.png"),
                                                        str(images / "dog/001.bmp"): str(tmp_path / "overlays/dog/001.bmp.png"),
                                                        str(images / "dog/001.png"): str(tmp_path / "overlays/dog/001.png.png"),
                                                        str(images / "dog/old/001.png"): str(tmp_path / "overlays/dog/old/001.png")}
    pictures = [np.asarray(Image.open(tmp_path / "overlays" / name)) for name in overlays]
    assert all((a != b).any() for i, a in enumerate(pictures) for b in pictures[i + 1:])  # four images, four overlays
    with Image.open(tmp_path / "overlays" / overlays[0]) as picture:
        assert picture.mode == "RGB" and picture.size == (256, 256)  # 8x8 enlarged 32 times, each pixel a block
        pixels = np.asarray(picture)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2 and (pixels[:32, :32] == pixels[0, 0]).all()
