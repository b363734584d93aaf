"""Choosing among variants: on validation figures, never on test ones.

Test figures are shown beside the choice; using them to choose would make them an optimistic
estimate of the chosen model, and the test split a second validation split.
"""

from dataclasses import dataclass
from statistics import fmean


def best_on_validation(train_metrics: dict[str, dict]) -> str:
    """The variant with the highest val accuracy; ties go to the lower val loss, then to the first listed.
    train_metrics: variant -> its metrics/train/<variant>.json."""
    return max(train_metrics, key=lambda name: (train_metrics[name]["val_accuracy"], -train_metrics[name]["val_loss"]))


def best_over_seeds(train_metrics: dict[str, dict[int, dict]]) -> str:
    """The variant with the highest mean val accuracy over its seeds (ties: the lower mean val loss, then
    the first listed), which one lucky seed cannot sway. train_metrics: variant -> seed -> its metrics."""
    means = {variant: {key: fmean(metrics[key] for metrics in by_seed.values()) for key in ("val_accuracy", "val_loss")}
             for variant, by_seed in train_metrics.items()}
    return best_on_validation(means)


@dataclass(frozen=True)
class Choice:
    variant: str
    seed: int


def choose(train_metrics: dict[str, dict[int, dict]]) -> Choice:
    """The model a run puts forward: the variant best over its seeds, then its seed best on validation. The
    report's headline and the registry's `candidate` are this one choice. train_metrics: variant -> seed -> metrics."""
    variant = best_over_seeds(train_metrics)
    return Choice(variant, best_on_validation(train_metrics[variant]))
