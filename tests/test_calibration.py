"""Calibration: the ECE against a plain loop and a hand computation, temperature scaling fitted on validation
(lower NLL, no predicted class changed), the temperature kept by checkpoints and applied by evaluate and
predict, and the report's columns and reliability diagram."""

import numpy as np
import pandas as pd
import pytest
import torch
from datafiles import write_image_folder
from test_report import CARD, RESULTS, RUN

from imgpipe.config import TrainConfig
from imgpipe.data.imageset import ImageSet
from imgpipe.evaluation.calibration import calibrate, confidences, expected_calibration_error, fit_temperature, nll, reliability
from imgpipe.evaluation.evaluate import evaluate, reliability_table
from imgpipe.models.checkpoint import load_checkpoint, save_checkpoint
from imgpipe.models.networks import Classifier, LinearNet
from imgpipe.predict import main
from imgpipe.reporting import figures
from imgpipe.reporting.report import comparison_table, render
from imgpipe.training.loop import train


def ece_by_loop(confidence, correct, bins=15) -> float:
    """The textbook definition, one bin at a time: bin m holds confidences in (m/bins, (m+1)/bins]."""
    confidence, total = [float(c) for c in confidence], 0.0
    for m in range(bins):
        inside = [i for i, c in enumerate(confidence) if m / bins < c <= (m + 1) / bins]
        if inside:
            accuracy = sum(correct[i] for i in inside) / len(inside)
            mean_confidence = sum(confidence[i] for i in inside) / len(inside)
            total += len(inside) / len(confidence) * abs(accuracy - mean_confidence)
    return total


def test_ece_by_hand():
    # Bin (0.2, 0.267]: 0.25 and 0.25, one right: |0.5 - 0.25| = 0.25, weight 2/5.
    # Bin (0.933, 1]: 0.95, 0.95, 1.0, all right: |1 - 0.9667| = 0.0333, weight 3/5. ECE = 0.1 + 0.02 = 0.12.
    confidence, correct = np.array([0.25, 0.25, 0.95, 0.95, 1.0]), np.array([True, False, True, True, True])
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.12)
    bins = reliability(confidence, correct)
    assert bins.bin.tolist() == [3, 14] and bins.images.tolist() == [2, 3]
    np.testing.assert_allclose(bins.accuracy, [0.5, 1.0])
    np.testing.assert_allclose(bins.confidence, [0.25, 2.9 / 3])
    np.testing.assert_allclose(bins.lower, [0.2, 14 / 15])


def test_each_bin_holds_its_upper_edge():
    edges = np.linspace(0, 1, 16)
    bins = reliability(edges[1:], np.ones(15, bool))  # every upper edge: (lower, upper] puts each in its own bin
    assert bins.bin.tolist() == list(range(15)) and bins.images.tolist() == [1] * 15


def test_ece_agrees_with_a_plain_loop_on_made_up_predictions():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(2000, 10)) * 3)
    labels = torch.from_numpy(rng.integers(0, 10, 2000))
    labels[:1000] = logits[:1000].argmax(1)  # half right by construction
    confidence, correct = confidences(logits, labels)
    assert confidence.shape == correct.shape == (2000,) and correct.mean() > 0.5
    assert expected_calibration_error(confidence, correct) == pytest.approx(ece_by_loop(confidence, correct), abs=1e-12)
    assert reliability(confidence, correct).images.sum() == 2000


def test_temperature_minimizes_the_nll_and_keeps_every_argmax():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(500, 5)) * 4)  # over-confident scores: right only 60% of the time
    labels = torch.where(torch.from_numpy(rng.random(500) < 0.6), logits.argmax(1), torch.from_numpy(rng.integers(0, 5, 500)))
    temperature = fit_temperature(logits, labels)
    assert temperature > 1  # over-confidence is cooled
    assert nll(logits, labels, temperature) < nll(logits, labels)
    for nearby in (temperature * 0.98, temperature * 1.02):  # a minimum, not just an improvement
        assert nll(logits, labels, temperature) <= nll(logits, labels, nearby)


@pytest.fixture(scope="module")
def calibrated(digits_prepared):
    """A TinyVGG trained to over-confidence, its temperature fitted on the validation split."""
    model = train("cnn", {"channels": [8]}, digits_prepared, TrainConfig(epochs=4, device="cpu", lr=3e-3)).model
    with torch.no_grad():
        unscaled = {split: model(torch.from_numpy(getattr(digits_prepared, split).images)) for split in ("val", "test")}
    return model, calibrate(model, digits_prepared.val, torch.device("cpu")), unscaled


def test_calibrate_lowers_the_val_nll_and_changes_no_prediction(digits_prepared, calibrated):
    model, calibration, unscaled = calibrated
    assert calibration.temperature != 1 and model.temperature.item() == pytest.approx(calibration.temperature)
    assert calibration.nll_after < calibration.nll_before
    assert calibration.nll_before == pytest.approx(nll(unscaled["val"], torch.from_numpy(digits_prepared.val.labels)), rel=1e-5)
    with torch.no_grad():
        for split in ("val", "test"):
            scaled = model(torch.from_numpy(getattr(digits_prepared, split).images))
            assert torch.equal(scaled.argmax(1), unscaled[split].argmax(1))
            torch.testing.assert_close(scaled, unscaled[split] / calibration.temperature)


def test_evaluate_reports_the_calibrated_models_ece_and_the_networks_before(digits_prepared, calibrated):
    model, calibration, unscaled = calibrated
    test = digits_prepared.test
    result = evaluate(model, test, torch.device("cpu"))
    with torch.no_grad():
        probabilities = model(torch.from_numpy(test.images)).softmax(1).numpy()
    after = ece_by_loop(probabilities.max(1), probabilities.argmax(1) == test.labels)
    before_probabilities = unscaled["test"].softmax(1).numpy()
    before = ece_by_loop(before_probabilities.max(1), before_probabilities.argmax(1) == test.labels)
    assert result.metrics["ece"] == pytest.approx(after, abs=1e-6)
    assert result.metrics["ece_before_scaling"] == pytest.approx(before, abs=1e-6)
    assert result.metrics["ece"] != pytest.approx(result.metrics["ece_before_scaling"], abs=1e-6)
    table = reliability_table(result)
    assert set(table["scaling"]) == {"before", "after"}
    assert all(table["images"][table["scaling"] == scaling].sum() == len(test) for scaling in ("before", "after"))


def test_a_checkpoint_keeps_the_temperature_and_predict_says_so(digits_prepared, calibrated, tmp_path, capsys):
    model, calibration, _ = calibrated
    path = tmp_path / "cnn.pt"
    save_checkpoint(path, model, model_name="cnn", model_settings={"channels": [8]}, image_shape=digits_prepared.image_shape,
                    class_names=digits_prepared.class_names, config=TrainConfig(epochs=4, device="cpu"))
    loaded, meta = load_checkpoint(path)
    assert loaded.temperature.item() == model.temperature.item() and meta["temperature"] == model.temperature.item()
    images = torch.from_numpy(digits_prepared.test.images[:50])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model.eval()(images))

    write_image_folder(tmp_path / "images", digits_prepared.test.images[:5], digits_prepared.test.labels[:5],
                       digits_prepared.class_names)
    assert main(["--model", str(path), str(tmp_path / "images")]) == 0
    stderr = capsys.readouterr().err
    assert f"confidences calibrated by temperature scaling (T={calibration.temperature:.2f}, fitted on validation)" in stderr


def test_checkpoints_and_state_saved_before_the_temperature_load_with_t_1(digits_prepared, tmp_path, capsys):
    net = LinearNet(digits_prepared.image_shape, 10)
    model = Classifier(net, (0.3,), (0.4,), temperature=2.5)
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, model_name="linear", model_settings={}, image_shape=digits_prepared.image_shape,
                    class_names=digits_prepared.class_names, config=TrainConfig())
    old = torch.load(path, weights_only=True)
    del old["temperature"]
    torch.save(old, path)
    loaded, meta = load_checkpoint(path)
    assert loaded.temperature.item() == 1.0 and meta["temperature"] == 1.0

    state = {key: value for key, value in model.state_dict().items() if key != "temperature"}  # a resume state of before
    fresh = Classifier(LinearNet(digits_prepared.image_shape, 10), (0.3,), (0.4,), temperature=3.0)
    fresh.load_state_dict(state)
    assert fresh.temperature.item() == 1.0

    write_image_folder(tmp_path / "images", digits_prepared.test.images[:2], digits_prepared.test.labels[:2],
                       digits_prepared.class_names)
    assert main(["--model", str(path), str(tmp_path / "images")]) == 0
    assert "temperature" not in capsys.readouterr().err  # T = 1: nothing to say


def test_the_fitted_centroid_keeps_its_own_scale(digits_prepared):
    model = train("centroid", {}, digits_prepared, TrainConfig(device="cpu")).model
    calibration = calibrate(model, digits_prepared.val, torch.device("cpu"))
    assert calibration.temperature == 1.0 and model.temperature.item() == 1.0
    assert calibration.nll_after == calibration.nll_before


def test_a_model_right_on_every_validation_image_keeps_t_1(digits_prepared):
    """There the NLL has no minimum: the search would run to its bound, T = 0.001, and every confidence to 1."""
    model = train("linear", {}, digits_prepared, TrainConfig(epochs=5, device="cpu")).model
    val = digits_prepared.val
    with torch.no_grad():
        right = model(torch.from_numpy(val.images)).argmax(1).numpy() == val.labels
    separated = ImageSet(val.images[right], val.labels[right], val.class_names)
    assert calibrate(model, separated, torch.device("cpu")).temperature == 1.0
    fitted = calibrate(model, val, torch.device("cpu")).temperature  # with its mistakes: fitted, well inside the bounds
    assert fitted != 1.0 and 0.1 < fitted < 10


def bins(shift: float) -> pd.DataFrame:
    return pd.DataFrame({"scaling": ["before", "before", "after", "after"], "bin": [10, 14] * 2,
                         "lower": [10 / 15, 14 / 15] * 2, "upper": [11 / 15, 1.0] * 2, "images": [3, 7, 4, 6],
                         "accuracy": [0.5, 0.8, 0.7 - shift, 0.95], "confidence": [0.7, 0.99, 0.71, 0.96]})


def test_the_report_shows_ece_and_temperature_and_the_reliability_diagram(tmp_path):
    results = {name: type(result)(train=result.train | {"temperature": 1.5}, test=result.test | {"ece": 0.02, "ece_before_scaling": 0.08},
                                  classes=result.classes, confusion=result.confusion, correct=result.correct, reliability=bins(0.1))
               for name, result in RESULTS.items()}
    header = comparison_table(results).splitlines()[0]
    assert "| test ECE before scaling | test ECE | temperature |" in header
    assert "| **0.0200** | 1.500 |" in comparison_table(results)
    assert "test ECE" not in comparison_table(RESULTS)  # metrics from before calibration: no such columns
    text = render("pets", CARD, results, RUN)
    assert "## Calibration" in text and "(figures/reliability.png)" in text
    assert "## Calibration" not in render("pets", CARD, RESULTS, RUN)
    figure = figures.reliability({name: result.reliability for name, result in results.items()},
                                 {name: (0.08, 0.02) for name in results})
    figures.save(figure, tmp_path / "reliability.png")
    assert [ax.get_title() for ax in figure.axes if ax.get_visible()] == ["linear: ECE 0.080 → 0.020", "cnn: ECE 0.080 → 0.020"]
