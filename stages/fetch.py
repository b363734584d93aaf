"""fetch: write the raw dataset named by params.yaml `data.dataset` to data/raw/, once."""

from pathlib import Path

from imgpipe import paths
from imgpipe import params as P
from imgpipe.errors import run_stage
from imgpipe.sources import fetch, save_raw


def main() -> None:
    params = P.load()
    path = P.get(params, "data.path", None)
    with P.reported_as("data"):
        splits = fetch(P.get(params, "data.dataset"), paths.ROOT / Path(path) if path else None)
    save_raw(splits, paths.RAW)
    print(", ".join(f"{split}: {len(images)} images" for split, images in splits.items()), "->", paths.RAW)


if __name__ == "__main__":
    run_stage(main)
