"""The markdown report: every element the reader expects, best values marked, figures linked."""

import pandas as pd

from imgpipe.report import VariantResult, comparison_table, render
from imgpipe.selection import best_on_validation

CARD = {
    "classes": ["cat", "dog"], "image_size": [8, 8], "channels": 1, "mean": [0.3], "std": [0.4], "flagged": [],
    "splits": {split: {"images": n, "per_class": {"cat": n // 2, "dog": n - n // 2}}
               for split, n in (("train", 80), ("val", 10), ("test", 10))},
}
RUN = {"params_hash": "1a2b3c4d", "commit": "0123456789abcdef", "dirty": True, "experiment": "wider-cnn",
       "versions": {"python": "3.11.7", "torch": "2.14.1"}}


def result(model: str, accuracy: float, parameters: int, confusion: list[list[int]], val_accuracy: float | None = None,
           val_loss: float = 0.5) -> VariantResult:
    names = ["cat", "dog"]
    return VariantResult(
        train={"model": model, "val_accuracy": accuracy if val_accuracy is None else val_accuracy, "val_loss": val_loss,
               "parameters": parameters, "train_seconds": 1.5, "epochs": 3, "device": "cpu", "mlflow_run_id": f"run-{model}"},
        test={"accuracy": accuracy, "macro_f1": accuracy - 0.01, "images_per_second": 1000.0, "model_bytes": 2048,
              "device": "cpu"},
        classes=pd.DataFrame({"class": names, "precision": [0.9, 0.8], "recall": [0.8, 0.9], "f1": [0.85, 0.84],
                              "support": [5, 5]}),
        confusion=pd.DataFrame(confusion, index=pd.Index(names, name="actual"), columns=names),
    )


RESULTS = {"linear": result("linear", 0.8, 130, [[4, 1], [1, 4]]), "cnn": result("cnn", 0.9, 900, [[5, 0], [1, 4]])}


def test_comparison_table_marks_the_best_of_each_column():
    table = comparison_table(RESULTS).splitlines()
    assert table[0].startswith("| variant | model | test accuracy | macro-F1 | val accuracy | parameters | size on disk")
    linear, cnn = table[2], table[3]
    assert "**0.9000**" in cnn and "| 0.8000 |" in linear  # higher accuracy wins
    assert "**130**" in linear and "| 900 |" in cnn  # fewer parameters win
    assert "2.0 KB" in linear and "top-" not in table[0]  # no top-k measured: no column
    assert table[0].endswith("| images/s | test device | epochs |") and "| **1,000** | cpu | 3 |" in linear


def test_report_holds_every_section_and_links_every_figure():
    text = render("pets", CARD, RESULTS, RUN)
    for heading in ("## Variants", "## Training curves", "## Confusion matrices", "## F1 per class",
                    "## Misclassified test images", "## Data", "## Run card"):
        assert heading in text
    for figure in ("curves", "samples", "confusion_linear", "confusion_cnn", "misclassified_linear", "misclassified_cnn"):
        assert f"(figures/{figure}.png)" in text
    assert "Best on validation: **cnn** (val accuracy 0.9000 on 10 images, val loss 0.5000). On the 10 test images" in text
    assert "dog taken for cat (1x)" in text  # both variants' top confusion
    assert "| **cat** | 4 | 1 |" in text  # linear's count table
    assert "| cat | 5 | 0.850 | 0.850 |" in text  # F1 per class, a column per variant
    assert "`1a2b3c4d`" in text and "`0123456789ab` with uncommitted changes" in text and "wider-cnn" in text
    assert "python 3.11.7, torch 2.14.1" in text and "cnn `run-cnn`" in text
    assert "mean 0.3000, std 0.4000" in text


def test_the_headline_chooses_on_validation_never_on_test():
    # linear is better on test, cnn on validation: the report names cnn, and says how linear did on test.
    results = {"linear": result("linear", 0.95, 130, [[4, 1], [1, 4]], val_accuracy=0.80),
               "cnn": result("cnn", 0.90, 900, [[5, 0], [1, 4]], val_accuracy=0.85)}
    text = render("pets", CARD, results, RUN)
    assert "Best on validation: **cnn** (val accuracy 0.8500" in text and "it scores 0.9000 accuracy" in text
    assert "**0.9500**" in text  # the test column still marks linear's higher test accuracy


def test_a_tie_on_val_accuracy_goes_to_the_lower_val_loss_then_the_first_listed():
    assert best_on_validation({"a": {"val_accuracy": 0.9, "val_loss": 0.4}, "b": {"val_accuracy": 0.9, "val_loss": 0.3},
                               "c": {"val_accuracy": 0.8, "val_loss": 0.1}}) == "b"
    assert best_on_validation({"a": {"val_accuracy": 0.9, "val_loss": 0.3}, "b": {"val_accuracy": 0.9, "val_loss": 0.3}}) == "a"
