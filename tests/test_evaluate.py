"""Evaluation against scikit-learn's metrics on the same predictions."""

import numpy as np
import pytest
import torch
from scipy import stats as sp
from sklearn import metrics as sk

from imgpipe.config import TrainConfig
from imgpipe.evaluation.evaluate import (
    Evaluation,
    class_table,
    confusion_table,
    evaluate,
    examples_to_explain,
    predictions_table,
    top_k_accuracy,
)
from imgpipe.evaluation.scores import bootstrap_macro_f1_interval, confusion_matrix, per_class_scores
from imgpipe.evaluation.stats import most_confused
from imgpipe.files import write_csv
from imgpipe.training.loop import train


@pytest.fixture(scope="module")
def linear_on_digits(digits_prepared):
    model = train("linear", {}, digits_prepared, TrainConfig(epochs=2, device="cpu")).model
    return model, evaluate(model, digits_prepared.test, torch.device("cpu"), top_k=3)


def test_metrics_agree_with_scikit_learn(digits_prepared, linear_on_digits):
    model, result = linear_on_digits
    actual, predicted = digits_prepared.test.labels, result.predicted
    with torch.no_grad():
        probabilities = model(torch.from_numpy(digits_prepared.test.images)).softmax(1).numpy()
    np.testing.assert_array_equal(predicted, probabilities.argmax(1))
    np.testing.assert_allclose(result.confidence, probabilities.max(1), rtol=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(sk.accuracy_score(actual, predicted))
    assert result.metrics["loss"] == pytest.approx(sk.log_loss(actual, probabilities, labels=range(10)), rel=1e-4)
    assert result.metrics["top_3_accuracy"] == pytest.approx(sk.top_k_accuracy_score(actual, probabilities, k=3, labels=range(10)))
    for average in ("precision", "recall", "f1"):
        score = getattr(sk, f"{average}_score")(actual, predicted, average="macro", labels=range(10), zero_division=0)
        assert result.metrics[f"macro_{average}"] == pytest.approx(score)
    precision, recall, f1, support = sk.precision_recall_fscore_support(actual, predicted, labels=range(10), zero_division=0)
    np.testing.assert_allclose(result.per_class["precision"], precision)
    np.testing.assert_allclose(result.per_class["recall"], recall)
    np.testing.assert_allclose(result.per_class["f1"], f1)
    np.testing.assert_array_equal(result.per_class["support"], support)
    np.testing.assert_array_equal(result.confusion, sk.confusion_matrix(actual, predicted, labels=range(10)))
    assert result.metrics["images"] == 360 and result.metrics["images_per_second"] > 0


def test_accuracy_and_macro_f1_come_with_95_percent_intervals(digits_prepared, linear_on_digits):
    _, result = linear_on_digits
    actual, predicted, metrics = digits_prepared.test.labels, result.predicted, result.metrics
    wilson = sp.binomtest(int((actual == predicted).sum()), len(actual)).proportion_ci(0.95, method="wilson")
    assert (metrics["accuracy_low"], metrics["accuracy_high"]) == (pytest.approx(wilson.low), pytest.approx(wilson.high))
    assert metrics["accuracy_low"] < metrics["accuracy"] < metrics["accuracy_high"]
    assert metrics["macro_f1_low"] < metrics["macro_f1"] < metrics["macro_f1_high"]
    # An independent percentile bootstrap: 10,000 resamples as multinomial counts of each image (not resampled
    # indices), F1 as 2 TP / (support + predicted), checked against scikit-learn on the whole split first.
    assert _macro_f1(np.ones((1, len(actual))), actual, predicted)[0] == pytest.approx(
        sk.f1_score(actual, predicted, average="macro", labels=range(10), zero_division=0))
    counts = np.random.default_rng(2024).multinomial(len(actual), np.full(len(actual), 1 / len(actual)), size=10_000)
    low, high = np.quantile(_macro_f1(counts.astype(float), actual, predicted), [0.025, 0.975])
    # Monte Carlo spread of the ends (1,000 resamples here): about 0.0015; a 90% interval would be 0.005 inside.
    assert metrics["macro_f1_low"] == pytest.approx(low, abs=0.0035)
    assert metrics["macro_f1_high"] == pytest.approx(high, abs=0.0035)


def _macro_f1(weights: np.ndarray, actual: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """Macro-F1 of each row of weights (how many times each image is drawn), zero_division=0."""
    truth, guess = np.eye(classes)[actual], np.eye(classes)[predicted]
    hits, support, chosen = weights @ (truth * guess), weights @ truth, weights @ guess
    f1 = np.divide(2 * hits, support + chosen, out=np.zeros_like(hits), where=support + chosen > 0)
    return f1.mean(1)


def test_the_macro_f1_interval_narrows_as_the_images_grow(digits_prepared, linear_on_digits):
    """The bootstrap's spread shrinks as 1 / sqrt(n): the same predictions four times over, half the width."""
    _, result = linear_on_digits
    actual, predicted = digits_prepared.test.labels, result.predicted
    low, high = bootstrap_macro_f1_interval(actual, predicted, 10)
    low4, high4 = bootstrap_macro_f1_interval(np.tile(actual, 4), np.tile(predicted, 4), 10)
    assert low < low4 < result.metrics["macro_f1"] < high4 < high
    assert 0.4 < (high4 - low4) / (high - low) < 0.6


def test_per_class_scores_where_a_class_is_never_predicted_or_absent():
    actual = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0])  # class 2 never predicted; class 3 absent altogether
    scores = per_class_scores(confusion_matrix(actual, predicted, 4))
    precision, recall, f1, support = sk.precision_recall_fscore_support(actual, predicted, labels=range(4), zero_division=0)
    for mine, theirs in zip((scores["precision"], scores["recall"], scores["f1"], scores["support"]), (precision, recall, f1, support)):
        np.testing.assert_allclose(mine, theirs)


def test_top_k_accuracy_counts_the_true_class_among_the_k_best():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    labels = torch.tensor([1, 0])  # second best, worst
    assert top_k_accuracy(logits, labels, 1) == 0.0
    assert top_k_accuracy(logits, labels, 2) == 0.5
    assert top_k_accuracy(logits, labels, 4) == 1.0


def test_top_k_is_left_out_when_there_are_not_more_than_k_classes(digits_prepared, linear_on_digits):
    model, _ = linear_on_digits
    assert "top_10_accuracy" not in evaluate(model, digits_prepared.test, torch.device("cpu"), top_k=10).metrics


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    counts = np.array([[9, 4, 0], [1, 8, 0], [0, 7, 5]])
    assert most_confused(counts, ("cat", "dog", "fox"), 2) == [("fox", "dog", 7), ("cat", "dog", 4)]
    assert most_confused(np.diag([3, 3]), ("a", "b")) == []  # nothing confused, nothing listed


def test_tables_name_the_classes(digits_prepared, linear_on_digits):
    _, result = linear_on_digits
    test = digits_prepared.test
    predictions = predictions_table(test, result)
    assert list(predictions) == ["index", "actual", "predicted", "confidence"]
    assert predictions["actual"].tolist() == [test.class_names[i] for i in test.labels]
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(result.metrics["accuracy"])
    classes = class_table(test.class_names, result)
    assert classes["class"].tolist() == list(test.class_names) and classes["support"].sum() == len(test)
    counts = dict(confusion_table(test.class_names, result.confusion))
    assert list(counts) == ["actual", *test.class_names] and counts["actual"].tolist() == list(test.class_names)
    assert sum(counts[name].sum() for name in test.class_names) == len(test)
    assert counts["3"].tolist() == result.confusion[:, 3].tolist()  # a column per predicted class


def test_a_class_named_actual_keeps_its_row_labels_and_its_column(tmp_path):
    """The confusion table's row-label column is `actual`: a class of that name is a column beside it, read back as
    the results loader reads it."""
    from imgpipe.evaluation import results

    confusion = np.array([[3, 1], [0, 4]])
    write_csv(tmp_path / "confusion.csv", confusion_table(("actual", "dog"), confusion))
    assert (tmp_path / "confusion.csv").read_text() == "actual,actual,dog\nactual,3,1\ndog,0,4\n"
    table = results._square(results.read_csv(tmp_path / "confusion.csv", ("actual",)).set_index("actual"))
    assert list(table.index) == list(table.columns) == ["actual", "dog"] and table.to_numpy().tolist() == confusion.tolist()


def test_a_table_is_written_as_csv_that_reads_back_as_it_was(tmp_path):
    path = tmp_path / "table.csv"
    write_csv(path, {"class": np.array(["0", "NA"]), "precision": np.array([0.5, 0.125], dtype=np.float32), "support": np.array([3, 0])})
    assert path.read_text() == "class,precision,support\n0,0.5,3\nNA,0.125,0\n"
    write_csv(path, {"id": [], "score": []})
    assert path.read_text() == "id,score\n"  # an empty table keeps its header


def test_the_images_explained_are_each_class_s_surest_right_answers_then_the_surest_mistakes():
    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    predicted = np.array([0, 0, 1, 2, 2, 1, 1])
    confidence = np.array([0.6, 0.9, 0.7, 0.95, 0.8, 0.5, 0.99])
    evaluation = Evaluation(metrics={}, predicted=predicted, confidence=confidence, confusion=None, per_class={}, reliability={})
    # right: 1 (0.9, class 0), 4 (0.8, class 2), 2 (0.7, class 1), then 0 (class 0's second); wrong: 6, 3, 5
    assert examples_to_explain(labels, evaluation, 4).tolist() == [1, 4, 2, 0, 6, 3, 5]
    assert examples_to_explain(labels, evaluation, 1).tolist() == [1, 6]
    assert examples_to_explain(labels, evaluation, 0).tolist() == []
