"""prepare: select classes, split data/raw/ into stratified train/val/test, leave out of the training split the
images data.exclude lists, measure the training split's statistics, and write the data card."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

from imgpipe import params as P
from imgpipe import paths
from imgpipe.data.card import data_card
from imgpipe.data.imageset import load_fetched
from imgpipe.data.prepare import prepare_into, read_excluded
from imgpipe.errors import run_stage
from imgpipe.files import write_json


def main() -> None:
    params = P.load()
    raw = load_fetched(paths.RAW)
    listed = P.get(params, "data.exclude", None)  # a file of image ids; an empty file: none (null only outside DVC)
    with P.reported_as("data"):
        prepared = prepare_into(
            raw.splits,
            paths.PREPARED,
            val_fraction=P.get(params, "data.val_fraction"),
            test_fraction=P.get(params, "data.test_fraction"),
            seed=P.get(params, "data.seed"),
            classes=P.get(params, "data.classes", None),
            exclude=read_excluded(paths.ROOT / listed) if listed else set(),
        )
    card = data_card(prepared, raw.decisions)
    if prepared.excluded:
        card["decisions"].append(f"{prepared.excluded} training images listed in {listed} were left out")
    write_json(paths.DATA_CARD, card)
    print(f"train {len(prepared.train)} / val {len(prepared.val)} / test {len(prepared.test)} images; "
          f"mean {[round(m, 4) for m in prepared.mean]}, std {[round(s, 4) for s in prepared.std]}")
    for warning in card["flagged"]:
        print(f"warning: {warning}")


if __name__ == "__main__":
    run_stage(main)
