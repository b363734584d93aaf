"""Promote a registered version to `champion`, after showing its figures beside the current champion's.

    python -m imgpipe.promote [--experiment digits] [--version N] [--allow-other-data]

The publish stage registers each execution's best-on-validation variant as a version of
imgpipe-<experiment> with the alias `candidate`; this moves the alias `champion` to a version (by
default the candidate). A version trained on other data (another data fingerprint) than the current
champion is refused unless --allow-other-data: their figures are not comparable. The experiment
defaults to the one in reports/mlflow_runs.json; MLFLOW_TRACKING_URI picks the store as for the stages.
"""

import argparse
import json
import sys

from imgpipe import paths
from imgpipe.errors import ImgpipeError
from imgpipe.tracking import registry, store

SHOWN = ("imgpipe.variant", "imgpipe.seed", "val_accuracy", "test_accuracy", "imgpipe.data_fingerprint", "imgpipe.dvc_experiment")


def _version(client, name: str, alias_or_number: str):
    from mlflow.exceptions import MlflowException

    try:
        if alias_or_number.isdigit():
            return client.get_model_version(name, alias_or_number)
        return client.get_model_version_by_alias(name, alias_or_number)
    except MlflowException as error:
        if error.error_code in registry.NOT_FOUND:
            return None
        raise  # an unreachable server, no permission: not "no such version"


def describe(version) -> str:
    """One line: the version, its variant and seed, its figures and where it came from (its tags)."""
    def shown(key: str) -> str:
        value = version.tags.get(key) or "-"
        return f"{float(value):.4f}" if key.endswith("accuracy") and value != "-" else value

    return f"version {version.version}: " + ", ".join(f"{key.removeprefix('imgpipe.')} {shown(key)}" for key in SHOWN)


def promote(experiment: str, version: str | None = None, allow_other_data: bool = False) -> str:
    """Point `champion` at `version` (default: the candidate); returns the line that says what changed."""
    client = store.store_client()
    name = registry.registered_name(experiment)
    chosen = _version(client, name, version or registry.CANDIDATE)
    if chosen is None:
        raise ImgpipeError(f"{name} has no {'version ' + version if version else 'candidate'}; run the pipeline first (dvc repro)")
    champion = _version(client, name, registry.CHAMPION)
    print(f"promoting {describe(chosen)}")
    print(f"champion  {describe(champion)}" if champion else "champion  none yet")
    if champion and not registry.same_validation(chosen.tags, champion.tags) and not allow_other_data:
        key = registry.compared_on(chosen.tags, champion.tags)
        raise ImgpipeError(f"version {chosen.version} was scored on another validation split ({key.removeprefix('imgpipe.')} "
                           f"{chosen.tags.get(key)}) than champion version {champion.version} ({champion.tags.get(key)}): their "
                           "figures are not comparable; pass --allow-other-data to promote it all the same")
    client.set_registered_model_alias(name, registry.CHAMPION, chosen.version)
    was = f" (was version {champion.version})" if champion else ""
    return f"{name}@{registry.CHAMPION} is version {chosen.version}{was}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgpipe.promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="the MLflow experiment (default: the one in reports/mlflow_runs.json)")
    parser.add_argument("--version", help="a version number or alias (default: candidate)")
    parser.add_argument("--allow-other-data", action="store_true", help="promote a version trained on other data than the champion")
    args = parser.parse_args(argv)
    try:
        experiment = args.experiment or json.loads(paths.MLFLOW_RUNS.read_text())["experiment"]
    except (OSError, ValueError, KeyError):
        parser.error(f"--experiment is needed: {paths.MLFLOW_RUNS.relative_to(paths.ROOT)} does not name one (run the pipeline first)")
    from mlflow.exceptions import MlflowException

    try:
        print(promote(experiment, args.version, args.allow_other_data))
    except ImgpipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except MlflowException as error:
        print(store.redacted(f"error: the MLflow store at {store.tracking_uri()}: {' '.join(error.message.split())}"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
