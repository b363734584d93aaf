"""The markdown report: every element the reader expects, best values marked, figures linked."""

import numpy as np
import pandas as pd
import pytest

from imgpipe.evaluation.results import best_on_validation
from imgpipe.reporting.report import VariantResult, comparison_table, render, seed_summary

CARD = {
    "classes": ["cat", "dog"], "image_size": [8, 8], "channels": 1, "mean": [0.3], "std": [0.4], "flagged": [],
    "splits": {split: {"images": n, "per_class": {"cat": n // 2, "dog": n - n // 2}}
               for split, n in (("train", 80), ("val", 10), ("test", 10))},
}
RUN = {"params_hash": "1a2b3c4d", "commit": "0123456789abcdef", "dirty": True, "experiment": "wider-cnn",
       "versions": {"python": "3.11.7", "torch": "2.14.1"}, "mlflow_experiment": "pets"}


def wrong_on(images: int, *wrong: int) -> np.ndarray:
    """Per-image correctness: right on every one of `images` test images but those listed."""
    correct = np.ones(images, bool)
    correct[list(wrong)] = False
    return correct


def result(model: str, accuracy: float, parameters: int, confusion: list[list[int]], val_accuracy: float | None = None,
           val_loss: float = 0.5, correct: np.ndarray | None = None) -> VariantResult:
    names = ["cat", "dog"]
    return VariantResult(
        train={"model": model, "val_accuracy": accuracy if val_accuracy is None else val_accuracy, "val_loss": val_loss,
               "parameters": parameters, "train_seconds": 1.5, "epochs": 3, "device": "cpu", "started": "2026-11-23T10:00:00.000+00:00"},
        test={"accuracy": accuracy, "accuracy_low": accuracy - 0.25, "accuracy_high": accuracy + 0.05,
              "macro_f1": accuracy - 0.01, "macro_f1_low": accuracy - 0.3, "macro_f1_high": accuracy + 0.04,
              "images_per_second": 1000.0, "model_bytes": 2048, "device": "cpu"},
        classes=pd.DataFrame({"class": names, "precision": [0.9, 0.8], "recall": [0.8, 0.9], "f1": [0.85, 0.84],
                              "support": [5, 5]}),
        confusion=pd.DataFrame(confusion, index=pd.Index(names, name="actual"), columns=names),
        correct=wrong_on(10, *range(round((1 - accuracy) * 10))) if correct is None else correct,
    )


# linear is wrong on images 0 and 1, cnn on image 0 alone: one image tells them apart, far too few to call.
RESULTS = {"linear": result("linear", 0.8, 130, [[4, 1], [1, 4]]), "cnn": result("cnn", 0.9, 900, [[5, 0], [1, 4]])}


def test_comparison_table_marks_the_best_of_each_column():
    table = comparison_table(RESULTS).splitlines()
    assert table[0].startswith("| variant | model | test accuracy | macro-F1 | val accuracy | parameters | size on disk")
    linear, cnn = table[2], table[3]
    assert "| **0.9000** (0.650–0.950) | **0.8900** (0.600–0.940) |" in cnn  # higher accuracy wins; intervals beside
    assert "| 0.8000 (0.550–0.850) | 0.7900 (0.500–0.840) |" in linear
    assert "**130**" in linear and "| 900 |" in cnn  # fewer parameters win
    assert "2.0 KB" in linear and "top-" not in table[0]  # no top-k measured: no column
    assert "**2.0 KB**" in linear and "**2.0 KB**" in cnn  # what reads the same is marked the same
    assert table[1].endswith("---:|---|---:|")  # images/s, the device (text: left-aligned), epochs
    assert table[0].endswith("| images/s | test device | epochs |") and "| **1,000** | cpu | 3 |" in linear


def test_a_class_without_test_images_has_no_f1_shown():
    from imgpipe.reporting.report import class_f1_table

    absent = result("cnn", 0.9, 900, [[5, 0], [1, 4]])
    absent.classes.loc[1, ["f1", "support"]] = [0.0, 0]
    assert "| dog | 0 | n/a |" in class_f1_table({"cnn": absent}) and "| cat | 5 | 0.850 |" in class_f1_table({"cnn": absent})


def test_report_holds_every_section_and_links_every_figure():
    text = render("pets", CARD, RESULTS, RUN)
    for heading in ("## Variants", "## Which differences are real", "## Training curves", "## Confusion matrices",
                    "## F1 per class", "## Misclassified test images", "## Data", "## Run card"):
        assert heading in text
    for figure in ("curves", "samples", "confusion_linear", "confusion_cnn", "misclassified_linear", "misclassified_cnn"):
        assert f"(figures/{figure}.png)" in text
    assert ("Best on validation: **cnn** (val accuracy 0.9000 on 10 images, val loss 0.5000). On the 10 test images it "
            "scores 0.9000 accuracy (95% CI 0.650–0.950), macro-F1 0.8900 (95% CI 0.600–0.940). On these images it "
            "cannot be told apart from linear (McNemar's exact test with Holm's correction, at the 5% level; see below).") in text
    assert text.index("## Variants") < text.index("## Which differences are real") < text.index("## Training curves")
    assert "dog taken for cat (1x)" in text  # both variants' top confusion
    assert "| **cat** | 4 | 1 |" in text  # linear's count table
    assert "| cat | 5 | 0.850 | 0.850 |" in text  # F1 per class, a column per variant
    assert "`1a2b3c4d`" in text and "`0123456789ab` with uncommitted changes" in text and "wider-cnn" in text
    assert "python 3.11.7, torch 2.14.1" in text and "experiment `pets`" in text and "`reports/mlflow_runs.json`" in text
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


def three_variants(cnn_wrong: int, mlp_wrong: int, linear_wrong: int) -> tuple[dict, dict[str, VariantResult]]:
    """40 test images; each variant wrong on the first few, so the better one is right wherever the worse one is."""
    card = {**CARD, "splits": {**CARD["splits"], "test": {"images": 40, "per_class": {"cat": 20, "dog": 20}}}}
    counts = [[20, 0], [0, 20]]
    results = {name: result(name, 1 - wrong / 40, 100, counts, val_accuracy=val, correct=wrong_on(40, *range(wrong)))
               for name, wrong, val in (("linear", linear_wrong, 0.7), ("mlp", mlp_wrong, 0.8), ("cnn", cnn_wrong, 0.9))}
    return card, results


def test_the_pairwise_section_tests_every_pair_and_says_which_differences_are_real():
    # linear wrong on 15 images that cnn and mlp get right: p = 2 / 2^15 per pair. cnn and mlp differ by one image.
    card, results = three_variants(cnn_wrong=0, mlp_wrong=1, linear_wrong=15)
    text = render("pets", card, results, RUN)
    section = text[text.index("## Which differences are real"):text.index("## Training curves")]
    assert "on the same 40 test images, by McNemar's exact test" in section
    assert "The 3 pairs are tested together with Holm's correction" in section
    assert "| first | second | only first right | only second right | p | Holm-adjusted p | verdict |" in section
    assert "| linear | mlp | 0 | 14 | < 0.001 | < 0.001 | real at the 5% level: mlp is better |" in section
    assert "| linear | cnn | 0 | 15 | < 0.001 | < 0.001 | real at the 5% level: cnn is better |" in section
    assert "| mlp | cnn | 0 | 1 | 1.000 | 1.000 | cannot be told apart |" in section
    assert "mlp and cnn are each better than linear. The other 1 pair cannot be told apart." in section
    assert ("On these images it is better than linear and cannot be told apart from mlp (McNemar's exact test with "
            "Holm's correction, at the 5% level; see below).") in text


def test_the_headline_says_when_the_chosen_variant_beats_every_other_one():
    card, results = three_variants(cnn_wrong=0, mlp_wrong=12, linear_wrong=15)
    text = render("pets", card, results, RUN)
    assert "On these images it is better than every other variant (McNemar's exact test" in text
    assert "cnn is better than linear and mlp. The other 1 pair cannot be told apart." in text  # mlp vs linear: 3 to 0


def test_the_headline_says_when_another_variant_is_better_on_test():
    # cnn is best on validation but worse on the test images than linear, which it cannot hide.
    card, results = three_variants(cnn_wrong=15, mlp_wrong=14, linear_wrong=0)
    text = render("pets", card, results, RUN)
    assert "On these images it cannot be told apart from mlp and is worse than linear (McNemar's exact test" in text


def test_no_difference_is_real_when_the_variants_differ_by_an_image_or_two():
    card, results = three_variants(cnn_wrong=1, mlp_wrong=2, linear_wrong=3)
    text = render("pets", card, results, RUN)
    assert "it cannot be told apart from any other variant" in text
    assert "No two variants can be told apart on these 40 images" in text and "real at the" not in text


def test_a_single_variant_has_nothing_to_compare():
    text = render("pets", CARD, {"cnn": RESULTS["cnn"]}, RUN)
    assert "A single variant: nothing to compare." in text and "McNemar's exact test with" not in text
    assert "macro-F1 0.8900 (95% CI 0.600–0.940). The variant is chosen on the validation split" in text


def test_the_headlines_verdict_is_about_the_seed_it_names():
    """Linear's seed 2 is chosen; its seed 0, the run shown in detail, is far worse: the headline's test is seed 2's."""
    right = lambda count: np.arange(200) < count  # noqa: E731  (the first `count` of 200 test images right)
    runs = {
        "linear": {seed: result("linear", acc, 130, [[4, 1], [1, 4]], val_accuracy=val, correct=right(int(acc * 200)))
                   for seed, (acc, val) in enumerate([(0.50, 0.84), (0.55, 0.86), (0.95, 0.88)])},
        "cnn": {seed: result("cnn", 0.75, 900, [[5, 0], [1, 4]], val_accuracy=val, correct=right(150)) for seed, val in enumerate([0.9, 0.7, 0.7])},
    }
    text = render("pets", CARD, {name: by_seed[0] for name, by_seed in runs.items()}, RUN, runs)
    assert "Best on validation: **linear**" in text and "seed 2, its best" in text
    assert "On these images it is better than cnn" in text  # seed 0's 0.50 would be worse than cnn's 0.75


def test_seeds_give_mean_and_standard_deviation_and_the_choice_uses_the_mean():
    # cnn's first seed is the best on validation, but over three seeds linear is.
    runs = {
        "linear": {seed: result("linear", acc, 130, [[4, 1], [1, 4]], val_accuracy=val)
                   for seed, (acc, val) in enumerate([(0.80, 0.84), (0.82, 0.86), (0.90, 0.88)])},
        "cnn": {seed: result("cnn", acc, 900, [[5, 0], [1, 4]], val_accuracy=val)
                for seed, (acc, val) in enumerate([(0.90, 0.90), (0.70, 0.70), (0.70, 0.70)])},
    }
    summary = seed_summary(runs["linear"])
    assert summary["seeds"] == 3 and summary["test_accuracy_mean"] == pytest.approx(np.mean([0.80, 0.82, 0.90]))
    assert summary["test_accuracy_std"] == pytest.approx(np.std([0.80, 0.82, 0.90], ddof=1))
    assert seed_summary({0: runs["cnn"][0]})["val_accuracy_std"] is None  # one seed has no spread
    text = render("pets", CARD, {name: by_seed[0] for name, by_seed in runs.items()}, RUN, runs)
    assert "Best on validation: **linear**" in text and "Over its 3 seeds: val accuracy 0.8600 ± 0.0200" in text
    assert "| cnn | 3 | 0.7667 ± 0.1155 | 0.7667 ± 0.1155 |" in text
    assert "| linear | 2 | 0.8800 | 0.9000 | 0.8900 |" in text  # seed 2's own figures
