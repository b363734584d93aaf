"""report: compare every variant side by side in reports/report.md."""

from imgpipe import params as P
from imgpipe import paths
from imgpipe.errors import run_stage
from imgpipe.files import read_json, write_text
from imgpipe.report import render


def main() -> None:
    params = P.load()
    results = {
        name: {"train": read_json(paths.train_metrics(name)), "test": read_json(paths.test_metrics(name))}
        for name in P.get(params, "train.variants")
    }
    card = read_json(paths.DATA_CARD)
    write_text(paths.report(), render(P.get(params, "data.dataset"), card, results))
    print(f"wrote {paths.report().relative_to(paths.ROOT)}")


if __name__ == "__main__":
    run_stage(main)
