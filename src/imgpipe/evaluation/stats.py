"""How far to trust a test score, whether two variants differ for real, and where a model errs most.

A test split is a sample: on a few hundred images, variants one or two images apart cannot be told
apart. Here are Wilson's interval, which evaluate records beside accuracy (macro-F1's bootstrap interval is
imgpipe.evaluation.scores'), the paired comparison the report makes (McNemar's exact test on the same test
images, Holm's correction over all pairs), and the largest off-diagonal counts of a confusion matrix.

NumPy and the standard library only, so the report can import it without SciPy or PyTorch.
"""

import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95  # the intervals evaluate records: metrics/test/<variant>.json's *_low and *_high
RESAMPLES = 1000  # bootstrap resamples behind evaluate's macro-F1 interval
LEVEL = 0.05  # a difference between two variants is called real when its Holm-adjusted p is below this

def checked_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return confidence


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for a proportion: unlike p +- z*se it stays inside [0, 1] and keeps close
    to its nominal coverage near 0 and 1, where accurate classifiers live."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    z = NormalDist().inv_cdf((1 + checked_confidence(confidence)) / 2)
    share = successes / trials
    shrink = 1 + z**2 / trials
    centre = (share + z**2 / (2 * trials)) / shrink
    half = z / shrink * math.sqrt(share * (1 - share) / trials + z**2 / (4 * trials**2))
    # At 0 or all successes a bound is exactly 0 or 1; the formula gets there only up to rounding.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == trials else centre + half)


def mcnemar_exact(only_first_right: int, only_second_right: int) -> float:
    """Two-sided exact McNemar p-value: under "equally accurate", each image that exactly one of the two
    gets right is equally likely to be either's, so the smaller count is a tail of Bin(discordant, 1/2).
    Exact integers: with thousands of discordant images, binomial terms in floats underflow or lose digits."""
    if only_first_right < 0 or only_second_right < 0:
        raise ValueError(f"counts must be >= 0, got {only_first_right} and {only_second_right}")
    discordant = only_first_right + only_second_right
    smaller = min(only_first_right, only_second_right)
    tail, term = 0, 1  # term: C(discordant, i)
    for i in range(smaller + 1):
        tail += term
        term = term * (discordant - i) // (i + 1)
    return min(1.0, 2 * tail / 2**discordant)  # int / int: correctly rounded, however large


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: calling real every difference whose adjusted
    p is below a level keeps the chance of calling any difference real by luck alone below that level."""
    order = np.argsort(p_values, kind="stable")
    adjusted = [0.0] * len(p_values)
    running = 0.0  # the adjusted values must not decrease along the sorted order
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class PairedTest:
    """Two variants on the same test images: only the images exactly one of them gets right tell them apart."""

    first: str
    second: str
    only_first_right: int
    only_second_right: int
    p_value: float  # exact McNemar, this pair alone
    adjusted_p_value: float  # Holm's, over every pair of the comparison
    level: float  # real: adjusted_p_value below this

    @property
    def real(self) -> bool:
        return self.adjusted_p_value < self.level

    @property
    def better(self) -> str | None:
        """The variant that is better for real, or None when the two cannot be told apart."""
        if not self.real:
            return None
        return self.first if self.only_first_right > self.only_second_right else self.second

    def other(self, variant: str) -> str:
        return self.second if variant == self.first else self.first


def paired_tests(correct: dict[str, np.ndarray], level: float = LEVEL) -> list[PairedTest]:
    """McNemar's exact test for every pair of variants, in the order listed, with Holm's correction over the
    pairs. correct: variant -> (N,) bool, whether it got each test image right (the same images, same order)."""
    correct = {name: np.asarray(right, dtype=bool) for name, right in correct.items()}
    shapes = {name: right.shape for name, right in correct.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the variants must be scored on the same images, got shapes {shapes}")
    pairs = list(itertools.combinations(correct, 2))
    counts = [(int((correct[a] & ~correct[b]).sum()), int((~correct[a] & correct[b]).sum())) for a, b in pairs]
    p_values = [mcnemar_exact(*count) for count in counts]
    adjusted = holm_adjusted(p_values)
    return [PairedTest(a, b, only_a, only_b, p, q, level)
            for (a, b), (only_a, only_b), p, q in zip(pairs, counts, p_values, adjusted)]


def most_confused(confusion: np.ndarray, class_names: tuple[str, ...], count: int = 5) -> list[tuple[str, str, int]]:
    """The `count` largest off-diagonal cells as (actual, predicted, images), largest first."""
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    order = np.argsort(-errors, axis=None, kind="stable")[:count]
    cells = [np.unravel_index(i, errors.shape) for i in order]
    return [(class_names[a], class_names[p], int(errors[a, p])) for a, p in cells if errors[a, p] > 0]


def selection_optimism(correct: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """How much the best of many configurations' validation accuracy flatters it: the maximum of noisy scores is
    biased upward. correct: (configurations, images) of 0/1 on one validation split. Each bootstrap resample of
    the images picks the configuration best on it, which is then scored on the images the resample left out;
    returns the mean of (its accuracy on the resample - its accuracy left out), in accuracy (0.01 = one point)."""
    correct = np.asarray(correct, dtype=np.float64)
    count = correct.shape[1]
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(resamples):
        drawn = np.bincount(rng.integers(0, count, count), minlength=count)  # how often each image is drawn
        left_out = drawn == 0
        if not left_out.any():
            continue
        in_bag = correct @ drawn / count
        best = int(np.argmax(in_bag))
        gaps.append(in_bag[best] - correct[best, left_out].mean())
    return float(np.mean(gaps)) if gaps else 0.0
