"""A sweep's outcome, chosen honestly: trials ranked by their validation figure alone, the winner's checkpoint
scored on the test split once (a later summary with the same winner reuses that score, and says how many
winners the test split has been shown), and how much best-of-N validation flatters: the winner's
validation minus its test accuracy, and a bootstrap of the selection over the validation images."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from imgpipe.data.prepared import Prepared
from imgpipe.errors import ImgpipeError
from imgpipe.evaluation.stats import selection_optimism, wilson_interval
from imgpipe.models.checkpoint import load_checkpoint
from imgpipe.models.inference import logits_in_chunks
from imgpipe.search.space import SweepConfig
from imgpipe.search.trial import unpacked

TOP = 10  # trials listed in the summary


@dataclass(frozen=True)
class Outcome:
    chosen: optuna.trial.FrozenTrial
    test_accuracy: float
    test_interval: tuple[float, float]
    test_looks: int  # winners the test split has been shown in this study
    optimism: float  # bootstrap of best-of-N selection on validation, in accuracy
    counts: dict[str, int]  # trials by state
    epochs: int  # training epochs spent over every trial, pruned ones included


def test_once(study: optuna.Study, chosen: optuna.trial.FrozenTrial, folder: Path, data: Prepared) -> tuple[float, tuple[float, float], int]:
    """The chosen trial's test accuracy and interval: scored now if no earlier summary scored this trial."""
    seen = study.user_attrs.get("test", {})
    if seen.get("trial") == chosen.number:
        return seen["accuracy"], tuple(seen["interval"]), seen["looks"]
    path = folder / f"trial-{chosen.number}.pt"
    if not path.exists():
        raise ImgpipeError(f"{path}: the chosen trial's checkpoint is not on this machine (it ran on "
                           f"{chosen.user_attrs.get('worker', '?').split(':')[0]}); summarise the sweep there")
    model, _ = load_checkpoint(path)
    logits = logits_in_chunks(model, data.test.images, torch.device("cpu"))
    right = int((logits.argmax(1) == torch.from_numpy(data.test.labels)).sum())
    accuracy, interval, looks = right / len(data.test.labels), wilson_interval(right, len(data.test.labels)), seen.get("looks", 0) + 1
    study.set_user_attr("test", {"trial": chosen.number, "accuracy": accuracy, "interval": list(interval), "looks": looks})
    return accuracy, interval, looks


def ranking(sweep: SweepConfig):
    """A complete trial's sort key, best highest: its objective, then on a tie the other validation figure (the lower
    loss, or the higher accuracy), then the earlier trial, as the pipeline's own choices break ties."""
    sign = 1 if sweep.direction == "maximize" else -1
    other = (lambda t: t.user_attrs["val_accuracy"]) if sweep.objective == "val_loss" else (lambda t: -t.user_attrs["val_loss"])
    return lambda t: (sign * t.value, other(t), -t.number)


def outcome(study: optuna.Study, sweep: SweepConfig, folder: Path, data: Prepared) -> Outcome:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "val_hits" in t.user_attrs]
    if not complete:
        raise ImgpipeError(f"sweep {study.study_name}: no trial has completed yet, so none can be chosen")
    chosen = max(complete, key=ranking(sweep))  # on validation: Optuna never saw a test figure
    accuracy, interval, looks = test_once(study, chosen, folder, data)
    hits = np.stack([unpacked(t.user_attrs["val_hits"], len(data.val.labels)) for t in complete])
    counts = {state.name: sum(t.state == state for t in trials) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    return Outcome(chosen, accuracy, interval, looks, selection_optimism(hits), counts,
                   sum(t.user_attrs.get("epochs", 0) for t in trials))


def markdown(study: optuna.Study, sweep: SweepConfig, result: Outcome, storage: str) -> str:
    """reports/sweep.md: the study, its top trials on validation, the winner on test, and the optimism."""
    chosen, objective = result.chosen, sweep.objective
    ranked = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and "val_hits" in t.user_attrs),
                    key=ranking(sweep), reverse=True)[:TOP]  # the chosen first
    keys = [dimension.key for dimension in sweep.space]
    lines = [
        f"# Sweep {study.study_name}",
        "",
        f"Variant `{sweep.variant}`, objective `{objective}` ({sweep.direction}d, on the validation split), "
        f"sampler `{sweep.sampler}` (seed {sweep.seed}), pruner `{sweep.pruner}`; storage `{storage}`.",
        f"Trials: {sum(result.counts.values())} ({result.counts['COMPLETE']} complete, {result.counts['PRUNED']} pruned, "
        f"{result.counts['FAIL']} failed); {result.epochs} training epochs in all.",
        "",
        f"## Top {len(ranked)} trials by validation",
        "",
        "| trial | " + " | ".join([objective, "epochs", *keys]) + " |",
        "|---:|" + "---:|" * (2 + len(keys)),
    ]
    for t in ranked:
        lines.append(f"| {t.number} | {t.value:.4f} | {t.user_attrs.get('epochs', '-')} | "
                     + " | ".join(_shown(t.params.get(key)) for key in keys) + " |")
    low, high = result.test_interval
    val = chosen.user_attrs["val_accuracy"]
    lines += [
        "",
        "## The winner",
        "",
        f"Trial {chosen.number}, chosen on validation alone: val accuracy {val:.4f}, "
        f"test accuracy **{result.test_accuracy:.4f}** (95% interval {low:.4f}-{high:.4f}), scored once.",
        f"Validation minus test: {val - result.test_accuracy:+.4f}. The best of {result.counts['COMPLETE']} noisy validation "
        f"scores flatters the winner by {result.optimism:+.4f} on average (a bootstrap of the choice over the validation "
        f"images), so from its validation figure expect about {val - max(result.optimism, 0):.4f} on new data.",
        f"The test split has been shown {result.test_looks} winner{'s' if result.test_looks > 1 else ''} of this study"
        + (": each look spends some of its independence." if result.test_looks > 1 else "."),
        "",
        "Rerun it as a whole pipeline experiment (every variant, evaluated and published like any other):",
        "",
        "```bash",
        chosen.user_attrs["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
