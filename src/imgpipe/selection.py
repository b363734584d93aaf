"""Choosing among variants: on validation figures, never on test ones.

Test figures are shown beside the choice; using them to choose would make them an optimistic
estimate of the chosen model, and the test split a second validation split.
"""


def best_on_validation(train_metrics: dict[str, dict]) -> str:
    """The variant with the highest val accuracy; ties go to the lower val loss, then to the first listed.
    train_metrics: variant -> its metrics/train/<variant>.json."""
    return max(train_metrics, key=lambda name: (train_metrics[name]["val_accuracy"], -train_metrics[name]["val_loss"]))
