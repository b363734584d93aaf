"""publish: record every variant and seed in MLflow: a run per training (params, curves, metrics, inputs and
the model), its evaluation and the report, and the model the report puts forward (best on validation) as the
`candidate` of the registered model imgpipe-<experiment>. The run ids and the candidate go to
reports/mlflow_runs.json. A run is made once per training: publishing again finds it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

import functools

from imgpipe import params as P
from imgpipe import paths, settings
from imgpipe.errors import run_stage
from imgpipe.evaluation.results import load_results
from imgpipe.files import write_json
from imgpipe.tracking.publish import publish


def main() -> None:
    params = P.load()
    experiment, optional = P.tracking(params)
    results = load_results(P.get(params, "train.variants"), P.seeds(params))
    record = publish(experiment, results, params=params, optional=optional, variant=functools.partial(settings.variant, params))
    write_json(paths.MLFLOW_RUNS, record)


if __name__ == "__main__":
    run_stage(main)
