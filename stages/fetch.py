"""fetch: read the dataset named by params.yaml `data.dataset` into data/raw/ (uint8 images per split,
and the decisions the source made about them, for the data card)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this copy's imgpipe, not the installed one

from imgpipe import params as P
from imgpipe import paths, settings
from imgpipe.data.imageset import save_fetched
from imgpipe.data.sources import fetch_dataset
from imgpipe.errors import run_stage


def main() -> None:
    config = settings.data_config(P.load())
    with P.reported_as("data"):
        fetched = fetch_dataset(config)
    save_fetched(fetched, paths.RAW)
    splits = fetched.splits
    shape = "x".join(map(str, splits["train"].image_shape))
    print(f"{config.dataset}: " + ", ".join(f"{split} {len(images)} images" for split, images in splits.items())
          + f" of {shape} (C x H x W), {len(splits['train'].class_names)} classes -> {paths.RAW.relative_to(paths.ROOT)}")
    for decision in fetched.decisions:
        print(decision)


if __name__ == "__main__":
    run_stage(main)
